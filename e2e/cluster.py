"""A real Kubernetes control plane on 127.0.0.1 with GPU node pools simulated by kwok.

Binaries (built once from their Go modules and cached under ``~/.cache/ascendra/k8s/<versions>``):
etcd 3.6 and kube-apiserver, kube-controller-manager, kube-scheduler 1.34 from ``e2e/k8s`` (a
module that requires k8s.io/kubernetes and maps its staging modules to published versions), kwok
(``sigs.k8s.io/kwok``), helm (``helm.sh/helm/v3``) and kube-router 2.1 (the real node's
NetworkPolicy firewall). Tests use :class:`LocalCluster` through fixtures; ``python
e2e/cluster.py build`` builds the binaries and ``python e2e/cluster.py up`` starts a cluster by
hand (printing its kubeconfig path).

Nodes: two GPU pools (``h100``, ``h200``) of 4 nodes × 8 ``nvidia.com/gpu`` each, labelled and
tainted like real GPU nodes, and a CPU pool of 2 nodes; kwok plays their kubelets, so pods are
scheduled, become Running and Ready, and nothing executes. ``LocalCluster(real_node=...)``
puts a real node (``e2e/node.py``: kubelet, kube-proxy, containerd, a CNI bridge, kube-router
enforcing NetworkPolicy) in place of the kwok CPU pool, where pods run for real from images
imported into it; the API server then listens on that node's bridge address instead of
127.0.0.1, so that its pods can reach it.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from node import GATEWAY, KUBE_ROUTER, KUBE_ROUTER_VERSION, SERVICE_RANGE, RealNode
from node import NAME as NODE_NAME

from ascendra.runtime.procs import die_with_parent

K8S_VERSION, ETCD_VERSION, KWOK_VERSION, HELM_VERSION = "v1.34.4", "v3.6.4", "v0.8.0", "v3.22.0"
HERE = Path(__file__).resolve().parent
CACHE = Path(os.environ.get("ASCENDRA_CACHE") or Path.home() / ".cache" / "ascendra")
BIN = CACHE / "k8s" / (f"k8s-{K8S_VERSION}_etcd-{ETCD_VERSION}_kwok-{KWOK_VERSION}"
                       f"_helm-{HELM_VERSION}")
GPU_TAINT = {"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"}


def _run(cmd: list[str], **kw: object) -> None:
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True, **kw)  # type: ignore[call-overload]


def ensure_binaries() -> Path:
    """Build what is missing into the versioned cache directory; return it."""
    BIN.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "GOFLAGS": "-mod=mod", "CGO_ENABLED": "0"}
    for group in (["kube-apiserver", "kube-controller-manager", "kube-scheduler"],
                  ["kubelet", "kube-proxy"]):
        if not all((BIN / b).exists() for b in group):
            _run(["go", "build", "-trimpath", "-o", str(BIN) + "/",
                  *(f"k8s.io/kubernetes/cmd/{b}" for b in group)], cwd=HERE / "k8s", env=env)
    if not (BIN / "etcd").exists():
        _run(["go", "build", "-trimpath", "-o", str(BIN / "etcd"), "./etcd"], cwd=HERE / "k8s",
             env=env)
    for tool, module in (("kwok", f"sigs.k8s.io/kwok/cmd/kwok@{KWOK_VERSION}"),
                         ("helm", f"helm.sh/helm/v3/cmd/helm@{HELM_VERSION}")):
        if not (BIN / tool).exists():
            _run(["go", "install", "-trimpath", module], env={**env, "GOBIN": str(BIN),
                                                               "GOFLAGS": ""})
    # The real node's NetworkPolicy firewall, named by its version (this directory's name
    # predates it).
    if not (BIN / KUBE_ROUTER).exists():
        with tempfile.TemporaryDirectory() as gobin:
            _run(["go", "install", "-trimpath", "github.com/cloudnativelabs/kube-router/v2/cmd/"
                  f"kube-router@{KUBE_ROUTER_VERSION}"], env={**env, "GOBIN": gobin,
                                                              "GOFLAGS": ""})
            shutil.move(Path(gobin) / "kube-router", BIN / KUBE_ROUTER)
    return BIN


def _certs(d: Path, node: str) -> None:
    """A CA, the API server's serving cert, an admin client cert (system:masters), the real
    node's client cert (``node``, in system:nodes) and the service-account signing key pair."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.x509.oid import NameOID

    def key() -> rsa.RSAPrivateKey:
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)

    def write_key(k: rsa.RSAPrivateKey, path: Path) -> None:
        path.write_bytes(k.private_bytes(serialization.Encoding.PEM,
                                         serialization.PrivateFormat.TraditionalOpenSSL,
                                         serialization.NoEncryption()))

    now = dt.datetime.now(dt.UTC)
    ca_key = key()
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "ascendra-e2e-ca")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now - dt.timedelta(hours=1)).not_valid_after(now + dt.timedelta(days=7))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .sign(ca_key, hashes.SHA256()))
    (d / "ca.crt").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    write_key(ca_key, d / "ca.key")

    def leaf(name: str, cn: str, org: str | None, sans: list[x509.GeneralName] | None) -> None:
        k = key()
        attrs = [x509.NameAttribute(NameOID.COMMON_NAME, cn)]
        if org:
            attrs.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, org))
        b = (x509.CertificateBuilder().subject_name(x509.Name(attrs)).issuer_name(ca_name)
             .public_key(k.public_key()).serial_number(x509.random_serial_number())
             .not_valid_before(now - dt.timedelta(hours=1))
             .not_valid_after(now + dt.timedelta(days=7)))
        if sans:
            b = b.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        cert = b.sign(ca_key, hashes.SHA256())
        (d / f"{name}.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        write_key(k, d / f"{name}.key")

    leaf("apiserver", "kube-apiserver", None, [
        x509.DNSName("localhost"), x509.DNSName("kubernetes"),
        x509.DNSName("kubernetes.default.svc"),
        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
        x509.IPAddress(ipaddress.ip_address(GATEWAY)),
        x509.IPAddress(ipaddress.ip_address("10.96.0.1"))])
    leaf("admin", "ascendra-e2e-admin", "system:masters", None)
    leaf("node", f"system:node:{node}", "system:nodes", None)
    sa = key()
    write_key(sa, d / "sa.key")
    (d / "sa.pub").write_bytes(sa.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))


def _node(name: str, pool: str | None, gpus: int, product: str | None) -> dict[str, object]:
    labels = {"kubernetes.io/hostname": name, "kubernetes.io/os": "linux",
              "kubernetes.io/arch": "amd64", "type": "kwok",
              "node.kubernetes.io/instance-type": f"{pool or 'cpu'}-node"}
    capacity = {"cpu": "96", "memory": "1Ti", "pods": "110"}
    spec: dict[str, object] = {}
    if gpus:
        labels |= {"ascendra.io/gpu-pool": str(pool), "nvidia.com/gpu.count": str(gpus),
                   "nvidia.com/gpu.product": str(product), "nvidia.com/gpu.present": "true"}
        capacity["nvidia.com/gpu"] = str(gpus)
        spec["taints"] = [GPU_TAINT]
    return {"apiVersion": "v1", "kind": "Node",
            "metadata": {"name": name, "labels": labels,
                         "annotations": {"kwok.x-k8s.io/node": "fake",
                                         "node.alpha.kubernetes.io/ttl": "0"}},
            "spec": spec,
            "status": {"capacity": capacity, "allocatable": capacity}}


NODE_POOLS = [("h100", "NVIDIA-H100-80GB-HBM3"), ("h200", "NVIDIA-H200")]


def nodes(cpu_pool: bool = True) -> list[dict[str, object]]:
    """The kwok nodes: the GPU pools, and the CPU pool unless a real node takes its place."""
    out = [_node(f"gpu-{pool}-{i}", pool, 8, product) for pool, product in NODE_POOLS
           for i in range(4)]
    return out + ([_node(f"cpu-{i}", None, 0, None) for i in range(2)] if cpu_pool else [])


def free_ports(count: int = 6) -> int:
    """A base port with ``count`` consecutive free ports after it (so clusters and leftovers of
    earlier runs never collide)."""
    rng = random.Random()
    for _ in range(100):
        base = rng.randrange(20000, 40000)
        socks = []
        try:
            for p in range(base, base + count):
                s = socket.socket()
                socks.append(s)
                s.bind(("127.0.0.1", p))
            return base
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise RuntimeError("no free port range for the cluster")


@dataclass
class LocalCluster:
    base_port: int = field(default_factory=lambda: free_ports(10))
    workdir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="ascendra-k8s-")))
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    # Images for a real node ({name: OCI archive}); None: kwok nodes only.
    real_node: dict[str, Path] | None = None
    node: RealNode | None = None

    @property
    def kubeconfig(self) -> Path:
        return self.workdir / "kubeconfig"

    @property
    def binaries(self) -> Path:
        return BIN

    @property
    def address(self) -> str:
        return GATEWAY if self.real_node is not None else "127.0.0.1"

    @property
    def server(self) -> str:
        return f"https://{self.address}:{self.base_port}"

    def _spawn(self, name: str, argv: list[str]) -> None:
        log = (self.workdir / f"{name}.log").open("ab")
        self.procs[name] = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT,
                                            start_new_session=True,
                                            preexec_fn=die_with_parent)

    def write_kubeconfig(self, path: Path, user: str) -> None:
        """A kubeconfig for ``user`` (the name of a client cert made by ``_certs``)."""
        d = self.workdir
        path.write_text(json.dumps({
            "apiVersion": "v1", "kind": "Config", "current-context": "ascendra-e2e",
            "clusters": [{"name": "ascendra-e2e", "cluster": {
                "server": self.server, "certificate-authority": str(d / "ca.crt")}}],
            "users": [{"name": "admin", "user": {
                "client-certificate": str(d / f"{user}.crt"),
                "client-key": str(d / f"{user}.key")}}],
            "contexts": [{"name": "ascendra-e2e", "context": {"cluster": "ascendra-e2e",
                                                              "user": "admin"}}],
        }, indent=1))

    def kubectl(self, *args: str, input: str | None = None, check: bool = True
                ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["kubectl", "--kubeconfig", str(self.kubeconfig), *args],
                              input=input, capture_output=True, text=True, check=check,
                              timeout=120)

    def _wait_ready(self, timeout: float = 180) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for name, p in self.procs.items():
                if p.poll() is not None:
                    log = (self.workdir / f"{name}.log").read_text()[-3000:]
                    raise RuntimeError(f"{name} exited ({p.returncode}):\n{log}")
            r = self.kubectl("get", "--raw", "/readyz", check=False)
            if r.returncode == 0 and r.stdout.strip() == "ok":
                return
            time.sleep(1)
        raise RuntimeError(f"the API server was not ready after {timeout} s")

    def start(self) -> LocalCluster:
        b, d, p = ensure_binaries(), self.workdir, self.base_port
        _certs(d, NODE_NAME)
        self.write_kubeconfig(self.kubeconfig, "admin")
        if self.real_node is not None:
            self.node = RealNode(self)
            self.node.network_up()
        self._spawn("etcd", [str(b / "etcd"), "--data-dir", str(d / "etcd"),
                             "--listen-client-urls", f"http://127.0.0.1:{p + 1}",
                             "--advertise-client-urls", f"http://127.0.0.1:{p + 1}",
                             "--listen-peer-urls", f"http://127.0.0.1:{p + 2}",
                             "--initial-advertise-peer-urls", f"http://127.0.0.1:{p + 2}",
                             "--initial-cluster", f"default=http://127.0.0.1:{p + 2}",
                             "--unsafe-no-fsync", "--log-level", "warn"])
        self._spawn("kube-apiserver", [
            str(b / "kube-apiserver"), "--etcd-servers", f"http://127.0.0.1:{p + 1}",
            "--bind-address", self.address, "--advertise-address", self.address,
            "--secure-port", str(p), "--tls-cert-file", str(d / "apiserver.crt"),
            "--kubelet-client-certificate", str(d / "admin.crt"),
            "--kubelet-client-key", str(d / "admin.key"),
            "--kubelet-preferred-address-types", "InternalIP",
            "--tls-private-key-file", str(d / "apiserver.key"),
            "--client-ca-file", str(d / "ca.crt"),
            "--service-account-issuer", "https://kubernetes.default.svc",
            "--service-account-key-file", str(d / "sa.pub"),
            "--service-account-signing-key-file", str(d / "sa.key"),
            "--service-cluster-ip-range", SERVICE_RANGE, "--authorization-mode", "Node,RBAC",
            "--allow-privileged=true", "--profiling=false", "--v=1"])
        self._wait_ready()
        cm_port, sched_port = p + 3, p + 4
        self._spawn("kube-controller-manager", [
            str(b / "kube-controller-manager"), "--kubeconfig", str(self.kubeconfig),
            "--bind-address", "127.0.0.1", "--secure-port", str(cm_port),
            "--leader-elect=false", "--service-account-private-key-file", str(d / "sa.key"),
            "--root-ca-file", str(d / "ca.crt"), "--use-service-account-credentials=false",
            "--controllers", "*,-nodeipam,-nodelifecycle,-cloud-node-lifecycle",
            "--concurrent-gc-syncs", "10", "--profiling=false"])
        self._spawn("kube-scheduler", [
            str(b / "kube-scheduler"), "--kubeconfig", str(self.kubeconfig),
            "--bind-address", "127.0.0.1", "--secure-port", str(sched_port),
            "--leader-elect=false", "--profiling=false"])
        self._spawn("kwok", [
            str(b / "kwok"), "--kubeconfig", str(self.kubeconfig),
            "--manage-all-nodes=false",
            "--manage-nodes-with-annotation-selector=kwok.x-k8s.io/node=fake",
            "--config", str(HERE / "kwok-stages.yaml"),
            "--node-ip=127.0.0.1", "--cidr=10.244.0.0/16",
            "--server-address", f"127.0.0.1:{p + 5}"])
        kwok_nodes = nodes(cpu_pool=self.real_node is None)
        self.kubectl("apply", "-f", "-", input=json.dumps(
            {"apiVersion": "v1", "kind": "List", "items": kwok_nodes}))
        self._wait_nodes_ready(len(kwok_nodes))
        # The API server taints new nodes not-ready; lifting it is the node-lifecycle
        # controller's job, which stays off here because kwok nodes send no heartbeats.
        self.kubectl("taint", "nodes", "--all", "node.kubernetes.io/not-ready:NoSchedule-")
        if self.node is not None and self.real_node is not None:
            self.node.start(self.real_node)
        return self

    def _wait_nodes_ready(self, count: int, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            out = json.loads(self.kubectl("get", "nodes", "-o", "json").stdout)
            ready = [n for n in out["items"] if any(
                c["type"] == "Ready" and c["status"] == "True"
                for c in n.get("status", {}).get("conditions", []))]
            if len(ready) == count:
                return
            time.sleep(1)
        raise RuntimeError("kwok did not make the nodes Ready")

    def stop(self) -> None:
        if self.node is not None:
            self.node.stop()  # while the API server and the controllers still run
            self.node = None
        for p in reversed(list(self.procs.values())):
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGTERM)
        for p in self.procs.values():
            try:
                p.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
        self.procs.clear()
        shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> LocalCluster:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc: object) -> None:
        self.stop()


if __name__ == "__main__":
    if sys.argv[1:2] == ["build"]:
        print(ensure_binaries())
    elif sys.argv[1:2] == ["up"]:
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
        c = LocalCluster().start()
        print(f"KUBECONFIG={c.kubeconfig}  (Ctrl-C stops the cluster)", flush=True)
        try:
            signal.pause()
        except (KeyboardInterrupt, SystemExit):
            pass
        finally:
            c.stop()
    else:
        print("usage: python e2e/cluster.py build|up", file=sys.stderr)
        sys.exit(2)
