"""A real Kubernetes node beside the kwok pools: kubelet and kube-proxy built from the same
Kubernetes module as the control plane, containerd with runc, and a CNI bridge.

Pods on it run for real: containerd unpacks images that were imported from OCI archives
(nothing is pulled; the sandbox image is the project's own ``pause``), runc starts them in
cgroups and namespaces of this VM, the CNI bridge plugin gives each a veth on the bridge
``ascendra0`` (10.88.0.0/24), and kube-proxy programs iptables so that Service ClusterIPs
(10.96.0.0/16) reach them, from the host and from pods, and kube-router's firewall (its
``--run-firewall`` alone: no routing, no service proxy) enforces NetworkPolicy on their
ingress with iptables and ipsets, as a policy-capable CNI does. The API server listens on the
bridge's address, 10.88.0.1, so that pods reach it through the ``kubernetes`` Service: that
address and the pods' are on this machine only (the bridge has no uplink, the host does not
forward, and the service range is routed onto the bridge so that nothing for it leaves by the
default route).

Only one real node runs on a machine at a time (kube-proxy owns the host's iptables chains): a
lock file serialises them. Needs root, Linux cgroups (v1 or v2) and Debian's ``containerd``,
``runc``, ``containernetworking-plugins``, ``iptables`` and ``ipset`` (``make system-deps``).
"""

from __future__ import annotations

import fcntl
import json
import os
import shlex
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING

from ascendra.runtime.procs import die_with_parent

if TYPE_CHECKING:
    from cluster import LocalCluster

# The NetworkPolicy firewall, among the cluster's binaries (e2e/cluster.py builds it).
KUBE_ROUTER_VERSION = "v2.1.0"
KUBE_ROUTER = f"kube-router-{KUBE_ROUTER_VERSION}"

BRIDGE, SUBNET, GATEWAY = "ascendra0", "10.88.0.0/24", "10.88.0.1"
SERVICE_RANGE = "10.96.0.0/16"
NAME = "node-0"
CNI_BIN = Path("/usr/lib/cni")
LOCK = Path("/run/ascendra-e2e-node.lock")
# The pod sandbox image every pod of the node starts from (images/pause).
PAUSE_IMAGE = "ascendra.local/pause"
TOOLS = {"containerd": "containerd", "containerd-shim-runc-v2": "containerd", "runc": "runc",
         "iptables": "iptables", "ctr": "containerd", "ipset": "ipset"}


def missing() -> str | None:
    """Why a real node cannot run on this machine, or None when it can."""
    if os.geteuid() != 0:
        return "a real node needs root (containerd, kubelet and iptables)"
    absent = sorted({pkg for tool, pkg in TOOLS.items() if shutil.which(tool) is None})
    if not (CNI_BIN / "bridge").exists():
        absent.append("containernetworking-plugins")
    if absent:
        return f"a real node needs Debian's {', '.join(absent)} (make system-deps)"
    return None


def _sh(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(list(args), capture_output=True, text=True, timeout=300)
    if check and done.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} exited {done.returncode}: {done.stderr.strip()}")
    return done


@dataclass
class RealNode:
    cluster: LocalCluster
    dir: Path = field(init=False)
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    _lock: IO[str] | None = None

    def __post_init__(self) -> None:
        self.dir = self.cluster.workdir / "node"

    @property
    def socket(self) -> Path:
        return self.dir / "containerd" / "containerd.sock"

    # -- starting --------------------------------------------------------------------------------
    def network_up(self) -> None:
        """This machine's one real node reserved (waiting for another suite's to stop), then
        the bridge with the gateway address (the API server binds to it before any pod
        exists), the service range routed onto it, and bridged traffic through iptables
        (kube-proxy's rules must see a pod reaching a Service whose endpoint is on the same
        bridge)."""
        self._lock = LOCK.open("w")
        fcntl.flock(self._lock, fcntl.LOCK_EX)
        if _sh("ip", "link", "show", BRIDGE, check=False).returncode != 0:
            _sh("ip", "link", "add", BRIDGE, "type", "bridge")
        _sh("ip", "addr", "replace", f"{GATEWAY}/24", "dev", BRIDGE)
        _sh("ip", "link", "set", BRIDGE, "up")
        _sh("ip", "route", "replace", SERVICE_RANGE, "dev", BRIDGE, "src", GATEWAY)
        Path("/proc/sys/net/bridge/bridge-nf-call-iptables").write_text("1")

    def start(self, images: dict[str, Path]) -> None:
        """containerd with ``images`` ({name: OCI archive}) imported, then kubelet and
        kube-proxy; returns once the node is Ready and schedulable (after network_up)."""
        self.dir.mkdir(parents=True, exist_ok=True)
        self._containerd()
        for name, archive in images.items():
            self.load_image(name, archive)
        self._kubelet()
        self._kube_proxy()
        self._wait_ready()
        self._kube_router()

    def _spawn(self, name: str, argv: list[str]) -> None:
        log = (self.dir / f"{name}.log").open("ab")
        self.procs[name] = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT,
                                            start_new_session=True, preexec_fn=die_with_parent)

    def _containerd(self) -> None:
        d = self.dir / "containerd"
        (self.dir / "cni").mkdir(parents=True, exist_ok=True)
        (self.dir / "cni" / "10-ascendra.conflist").write_text(json.dumps({
            "cniVersion": "0.4.0", "name": "ascendra-e2e", "plugins": [
                {"type": "bridge", "bridge": BRIDGE, "isGateway": True, "ipMasq": False,
                 "hairpinMode": True, "ipam": {
                     "type": "host-local", "dataDir": str(self.dir / "ipam"),
                     "ranges": [[{"subnet": SUBNET, "gateway": GATEWAY}]],
                     # Services only: the host does not forward, so pods reach the API server
                     # (DNAT to the gateway address) and nothing beyond this machine.
                     "routes": [{"dst": SERVICE_RANGE}]}},
                {"type": "portmap", "capabilities": {"portMappings": True}}]}))
        d.mkdir(parents=True, exist_ok=True)
        cri = '[plugins."io.containerd.grpc.v1.cri"'
        (d / "config.toml").write_text(f"""version = 2
root = "{d}/root"
state = "{d}/state"
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs",
                    "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper"]
[grpc]
  address = "{self.socket}"
[ttrpc]
  address = "{self.socket}.ttrpc"
[plugins."io.containerd.internal.v1.opt"]
  path = "{d}/opt"
{cri}]
  sandbox_image = "{PAUSE_IMAGE}:{self._version()}"
  enable_cdi = false
  # This VM refuses an oom_score_adj below the creator's own (the sandbox's -998 failed in
  # runc's nsexec with EACCES); clamped to containerd's, as in rootless setups.
  restrict_oom_score_adj = true
{cri}.containerd]
  snapshotter = "overlayfs"
  default_runtime_name = "runc"
{cri}.containerd.runtimes.runc]
  runtime_type = "io.containerd.runc.v2"
{cri}.containerd.runtimes.runc.options]
  SystemdCgroup = false
{cri}.cni]
  bin_dir = "{CNI_BIN}"
  conf_dir = "{self.dir / 'cni'}"
""")
        self._spawn("containerd", ["containerd", "--config", str(d / "config.toml")])
        self._until(lambda: self.socket.exists() and self._ctr("version", check=False)
                    .returncode == 0, 60, "containerd answering")

    @staticmethod
    def _version() -> str:
        from ascendra import __version__
        return __version__

    def _ctr(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return _sh("ctr", "--address", str(self.socket), "--namespace", "k8s.io", *args,
                   check=check)

    def load_image(self, name: str, archive: Path) -> None:
        """Import an OCI archive whose one reference is the version as ``name:version``."""
        self._ctr("images", "import", "--base-name", name, str(archive))

    def _kubelet(self) -> None:
        c, d = self.cluster, self.dir
        kubeconfig = d / "kubelet.kubeconfig"
        c.write_kubeconfig(kubeconfig, "node")  # system:node:NAME, in system:nodes
        port, healthz = c.base_port + 6, c.base_port + 7
        (d / "kubelet.yaml").write_text(json.dumps({
            "apiVersion": "kubelet.config.k8s.io/v1beta1", "kind": "KubeletConfiguration",
            "address": GATEWAY, "port": port, "readOnlyPort": 0,
            "healthzBindAddress": "127.0.0.1", "healthzPort": healthz,
            "authentication": {"anonymous": {"enabled": False}, "webhook": {"enabled": False},
                               "x509": {"clientCAFile": str(d.parent / "ca.crt")}},
            "authorization": {"mode": "AlwaysAllow"},
            "cgroupDriver": "cgroupfs", "failCgroupV1": False, "failSwapOn": False,
            "containerRuntimeEndpoint": f"unix://{self.socket}",
            "podLogsDir": str(d / "pod-logs"), "staticPodPath": "",
            "resolvConf": "", "serializeImagePulls": False, "maxPods": 40,
            # This VM's disk is shared with everything else: evict only near exhaustion, and
            # never garbage-collect the imported images (they cannot be pulled back).
            "evictionHard": {"memory.available": "200Mi", "nodefs.available": "2%",
                             "imagefs.available": "2%", "nodefs.inodesFree": "2%"},
            "imageGCHighThresholdPercent": 100, "imageGCLowThresholdPercent": 99,
            "nodeStatusUpdateFrequency": "2s", "syncFrequency": "5s",
            "fileCheckFrequency": "5s", "shutdownGracePeriod": "0s",
        }))
        self._spawn("kubelet", [
            str(c.binaries / "kubelet"), "--config", str(d / "kubelet.yaml"),
            "--kubeconfig", str(kubeconfig), "--root-dir", str(d / "kubelet"),
            "--cert-dir", str(d / "kubelet-pki"), "--hostname-override", NAME,
            "--node-ip", GATEWAY, "--node-labels", "type=real,node.kubernetes.io/"
            "instance-type=cpu-node", "--v=1"])

    def _kube_proxy(self) -> None:
        c = self.cluster
        self._spawn("kube-proxy", [
            str(c.binaries / "kube-proxy"), "--kubeconfig", str(c.kubeconfig),
            "--hostname-override", NAME, "--proxy-mode", "iptables",
            "--cluster-cidr", SUBNET, "--metrics-bind-address", f"127.0.0.1:{c.base_port + 8}",
            "--healthz-bind-address", f"127.0.0.1:{c.base_port + 9}",
            "--conntrack-max-per-core", "0", "--conntrack-tcp-timeout-established", "0",
            "--conntrack-tcp-timeout-close-wait", "0", "--v=1"])

    def _kube_router(self) -> None:
        """The NetworkPolicy firewall, once the node exists (it reads the node's address from
        its object); returns when its chains are in place."""
        c = self.cluster
        self._spawn("kube-router", [
            str(c.binaries / KUBE_ROUTER), "--kubeconfig", str(c.kubeconfig),
            "--hostname-override", NAME, "--run-firewall=true", "--run-router=false",
            "--run-service-proxy=false", "--enable-cni=false", "--enable-pod-egress=false",
            "--service-cluster-ip-range", SERVICE_RANGE, "--health-port", "0",
            "--metrics-port", "0", "--v=1"])
        self._until(lambda: _sh("iptables", "-S", "KUBE-ROUTER-FORWARD",
                                check=False).returncode == 0, 60, "kube-router's chains")

    def _wait_ready(self, timeout: float = 120) -> None:
        def ready() -> bool:
            r = self.cluster.kubectl("get", "node", NAME, "-o", "json", check=False)
            if r.returncode != 0:
                return False
            conds = json.loads(r.stdout).get("status", {}).get("conditions", [])
            return any(x["type"] == "Ready" and x["status"] == "True" for x in conds)

        self._until(ready, timeout, f"node {NAME} Ready")
        # The node-lifecycle controller, which would lift this taint, stays off (kwok nodes send
        # no heartbeats), so it is lifted here once the kubelet says Ready.
        self.cluster.kubectl("taint", "node", NAME, "node.kubernetes.io/not-ready:NoSchedule-",
                             check=False)

    def _until(self, fn: object, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for name, p in self.procs.items():
                if p.poll() is not None:
                    log = (self.dir / f"{name}.log").read_text()[-3000:]
                    raise RuntimeError(f"{name} exited ({p.returncode}):\n{log}")
            if fn():  # type: ignore[operator]
                return
            time.sleep(1)
        raise RuntimeError(f"{what}: not reached in {timeout} s")

    # -- stopping --------------------------------------------------------------------------------
    def stop(self) -> None:
        """Every pod of the node stopped through the kubelet (so the CNI plugin frees its
        address and veth), then kube-router, kube-proxy and the kubelet, then whatever
        containers a failed run left, then containerd; last, leftover mounts, the iptables
        rules and ipsets, and the bridge."""
        try:
            if self._running("kubelet"):
                self._drain()
            self._terminate("kube-router", "kube-proxy", "kubelet")
            if self._running("containerd"):
                self._kill_containers()
            self._terminate("containerd")
        finally:
            self._leftovers()
            self.procs.clear()
            if self._lock is not None:
                _sh("ip", "link", "del", BRIDGE, check=False)  # its address and route with it
                self._lock.close()
                self._lock = None

    def _running(self, name: str) -> bool:
        return name in self.procs and self.procs[name].poll() is None

    def _terminate(self, *names: str) -> None:
        for name in names:
            if self._running(name):
                os.killpg(self.procs[name].pid, signal.SIGTERM)
        for name in names:
            p = self.procs.get(name)
            if p is None:
                continue
            try:
                p.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()

    def _drain(self, timeout: float = 90) -> None:
        k = self.cluster.kubectl
        k("cordon", NAME, check=False)
        k("delete", "pods", "--all-namespaces", "--field-selector", f"spec.nodeName={NAME}",
          "--wait=false", check=False)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            r = k("get", "pods", "--all-namespaces", "--field-selector",
                  f"spec.nodeName={NAME}", "-o", "name", check=False)
            if r.returncode == 0 and not r.stdout.strip():
                return
            time.sleep(1)

    def _kill_containers(self) -> None:
        for task in self._ctr("tasks", "ls", "-q", check=False).stdout.split():
            self._ctr("tasks", "kill", "--signal", "SIGKILL", task, check=False)
        time.sleep(1)
        for task in self._ctr("tasks", "ls", "-q", check=False).stdout.split():
            self._ctr("tasks", "delete", "--force", task, check=False)

    def _leftovers(self) -> None:
        mounts = [line.split()[1] for line in Path("/proc/mounts").read_text().splitlines()]
        for m in sorted((m for m in mounts if m.startswith(str(self.dir))), reverse=True):
            subprocess.run(["umount", "-l", m], capture_output=True)
        subprocess.run([str(self.cluster.binaries / "kube-proxy"), "--cleanup",
                        "--proxy-mode", "iptables"], capture_output=True, timeout=60)
        for rule in KUBELET_IPTABLES:  # the kubelet's own chains, which --cleanup leaves
            subprocess.run(["iptables", *rule], capture_output=True)
        _remove_kube_router_rules()


def _remove_kube_router_rules() -> None:
    """kube-router's firewall chains, the jumps to them and its ipsets. (Its own
    ``--cleanup-config`` does not: in v2.1.0 it finds nothing to clean for network policy, then
    panics in the service proxy's cleanup.)"""
    rules = _sh("iptables", "-S", check=False).stdout.splitlines()
    chains = [r.split()[1] for r in rules if r.startswith("-N ")
              and r.split()[1].startswith(("KUBE-ROUTER-", "KUBE-NWPLCY-", "KUBE-POD-FW-"))]
    for rule in rules:
        words = shlex.split(rule)
        if words[0] == "-A" and words[1] not in chains and words[-1] in chains:
            _sh("iptables", "-D", *words[1:], check=False)
    for op in ("-F", "-X"):
        for chain in chains:
            _sh("iptables", op, chain, check=False)
    for name in _sh("ipset", "list", "-n", check=False).stdout.split():
        if name.startswith(("KUBE-SRC-", "KUBE-DST-")):
            _sh("ipset", "destroy", name, check=False)


# What the kubelet adds to the host's iptables (its canary chains, and a rule that drops
# connections to 127.0.0.0/8 from other addresses), undone in this order.
KUBELET_IPTABLES = (
    ("-D", "INPUT", "-j", "KUBE-FIREWALL"), ("-D", "OUTPUT", "-j", "KUBE-FIREWALL"),
    ("-F", "KUBE-FIREWALL"), ("-X", "KUBE-FIREWALL"),
    *((*table, op, "KUBE-KUBELET-CANARY") for table in ((), ("-t", "nat"), ("-t", "mangle"))
      for op in ("-F", "-X")),
)
