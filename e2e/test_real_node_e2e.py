"""Real pods on a real node: the images built by images/build_images.py, imported into the
node's containerd (nothing pulled), the chart's operator running as a pod from its image, and
what it creates for an AscendraService running there too, in namespaces that enforce the
restricted Pod Security Standard. The kwok GPU pools stay in the same cluster (tainted, so no
CPU pod lands there).

Needs root and Debian's containerd, runc, containernetworking-plugins and iptables (``make
system-deps``), as CI has; elsewhere the module is skipped with the reason.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import urllib.request
from collections.abc import Iterator
from typing import Any

import node
import openai
import pytest
from cluster import LocalCluster, free_ports
from e2e_support import (
    ROOT,
    Kubectl,
    build_images,
    eventually,
    pressure_prometheus,
    restricted_namespace,
)

from ascendra import __version__
from ascendra.runtime.tiny_model import build_tiny_model

pytestmark = [
    pytest.mark.skipif(node.missing() is not None, reason=node.missing() or ""),
    # Against a cluster of your own (ASCENDRA_E2E_KUBECONFIG) there is no node of ours to load
    # images into: this suite starts its own local cluster with a real node.
    pytest.mark.skipif(bool(os.environ.get("ASCENDRA_E2E_KUBECONFIG")),
                       reason="the real-node suite runs on its own local cluster"),
]

OPERATOR_IMAGE = "ghcr.io/ascendra/operator"
RUNTIME_IMAGE = "ghcr.io/ascendra/runtime-cpu"
NS = "serve"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    archives = build_images(["operator", "runtime-cpu", "pause"],
                            tmp_path_factory.mktemp("images"))
    with LocalCluster(real_node={node.PAUSE_IMAGE: archives["pause"],
                                 OPERATOR_IMAGE: archives["operator"],
                                 RUNTIME_IMAGE: archives["runtime-cpu"]}) as c:
        yield c


@pytest.fixture(scope="module")
def kubectl(cluster: LocalCluster) -> Kubectl:
    k = Kubectl(cluster.kubeconfig)
    restricted_namespace(k, "ascendra-system")
    restricted_namespace(k, NS)
    return k


@pytest.fixture(scope="module")
def prometheus(cluster: LocalCluster, tmp_path_factory: pytest.TempPathFactory
               ) -> Iterator[str]:
    """Real Prometheus on the node's bridge address (where the operator's pod reaches it),
    scraping a STAND-IN that publishes the router's metric names with sustained HP pressure
    for the service ``tiny`` (e2e_support.PressureMetrics): two CPU engines cannot make real
    pressure, and what is under test is the resizer acting on a real node."""
    with pressure_prometheus(tmp_path_factory.mktemp("prometheus"), node.GATEWAY,
                             free_ports(1), NS, "tiny") as url:
        yield url


@pytest.fixture(scope="module")
def operator_pod(cluster: LocalCluster, kubectl: Kubectl, prometheus: str,
                 tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """The chart installed as a user would: its operator runs as a pod, from the image, and
    may read the Prometheus above (an origin the installer allows)."""
    home = tmp_path_factory.mktemp("helm")
    env = {"KUBECONFIG": str(cluster.kubeconfig), "HOME": str(home), "PATH": "/usr/bin:/bin"}
    install = subprocess.run(
        [str(cluster.binaries / "helm"), "install", "ascendra", str(ROOT / "charts" / "ascendra"),
         "-n", "ascendra-system", "--set", f"operator.image.repository={OPERATOR_IMAGE}",
         "--set", f"operator.image.tag={__version__}", "--set", "operator.image.pullPolicy=Never",
         "--set", f"operator.prometheusUrls={{{prometheus}}}",
         "--wait", "--timeout", "180s"], capture_output=True, text=True, env=env)
    assert install.returncode == 0, install.stdout + install.stderr + _node_logs(cluster)
    (pod,) = kubectl.json("get", "pods", "-n", "ascendra-system", "-l",
                          "app.kubernetes.io/name=ascendra-operator")["items"]
    yield pod
    print(kubectl("logs", "-n", "ascendra-system", pod["metadata"]["name"], "--tail", "60",
                  check=False).stdout)


def _node_logs(cluster: LocalCluster) -> str:
    d = cluster.workdir / "node"
    return "".join(f"\n--- {name}\n{(d / f'{name}.log').read_text()[-2000:]}"
                   for name in ("kubelet", "containerd") if (d / f"{name}.log").exists())


def _model_claim(cluster: LocalCluster, kubectl: Kubectl) -> None:
    """The tiny model on a PersistentVolume (a hostPath one, which only the cluster's admin
    can create; the service's pods mount it through a claim, as restricted allows)."""
    model = cluster.workdir / "volumes" / "tiny-llama"
    if not model.exists():
        shutil.copytree(build_tiny_model(), model)
        for d in (cluster.workdir, model.parent):
            d.chmod(0o755)  # the pods run as uid 10001
        for f in model.iterdir():
            f.chmod(0o644)  # safetensors writes its file 0600
    kubectl.apply({"apiVersion": "v1", "kind": "PersistentVolume",
                   "metadata": {"name": "tiny-llama"},
                   "spec": {"capacity": {"storage": "1Gi"}, "accessModes": ["ReadOnlyMany"],
                            "storageClassName": "models", "hostPath": {
                                "path": str(model.parent), "type": "Directory"}}})
    kubectl.apply({"apiVersion": "v1", "kind": "PersistentVolumeClaim",
                   "metadata": {"name": "models", "namespace": NS},
                   "spec": {"accessModes": ["ReadOnlyMany"], "storageClassName": "models",
                            "volumeName": "tiny-llama",
                            "resources": {"requests": {"storage": "1Gi"}}}})
    eventually(lambda: kubectl.json("get", "pvc", "models", "-n", NS)["status"].get("phase")
               == "Bound", timeout=60, what="the model claim bound")


def cpu_service(runtime_image: str, **runtime: Any) -> dict[str, Any]:
    return {
        "apiVersion": "ascendra.io/v1alpha1", "kind": "AscendraService",
        "metadata": {"name": "tiny", "namespace": NS},
        "spec": {
            "model": {"name": "tiny-llama", "path": "/models/tiny-llama", "maxModelLen": 512,
                      "volume": {"persistentVolumeClaim": {"claimName": "models",
                                                           "readOnly": True}}},
            "runtime": {"image": runtime_image, "imagePullPolicy": "Never",
                        "gpusPerInstance": 0, "shmSize": "256Mi",
                        "env": [{"name": "VLLM_CPU_KVCACHE_SPACE", "value": "1"}],
                        "resources": {"requests": {"cpu": "100m", "memory": "256Mi"}},
                        **runtime},
            "pool": {"instances": 1, "hp": {"min": 0, "max": 0}},
            # router.image is left to its default: the operator's image, which holds it.
            "router": {"resources": {"requests": {"cpu": "100m", "memory": "128Mi"}}},
        },
    }


def _service(kubectl: Kubectl) -> dict[str, Any]:
    return kubectl.json("get", "ascendraservice", "tiny", "-n", NS)


def _degraded(kubectl: Kubectl) -> dict[str, Any] | None:
    conds = (_service(kubectl).get("status") or {}).get("conditions", [])
    c = next((c for c in conds if c["type"] == "Degraded"), None)
    return c if c and c["status"] == "True" else None


def _ready_lp_hp(kubectl: Kubectl) -> tuple[int, int] | None:
    s = _service(kubectl)
    st = s.get("status") or {}
    conds = {c["type"]: c["status"] for c in st.get("conditions", [])}
    if conds.get("Ready") != "True":
        return None
    return st.get("readyLP", 0), st.get("readyHP", 0)


def _container_running(pod: dict[str, Any]) -> bool:
    statuses = (pod.get("status") or {}).get("containerStatuses") or []
    return bool(statuses) and all("running" in (s.get("state") or {}) for s in statuses)


def test_the_operator_runs_from_its_image_and_names_a_runtime_pod_that_cannot_start(
        cluster: LocalCluster, kubectl: Kubectl, operator_pod: dict[str, Any]):
    # The operator is a real process in a real container, as the restricted standard wants it.
    assert _container_running(operator_pod), operator_pod["status"]
    assert operator_pod["spec"]["nodeName"] == node.NAME
    assert operator_pod["spec"]["securityContext"]["runAsNonRoot"] is True
    _model_claim(cluster, kubectl)
    missing = "ascendra.local/no-such-runtime:0"
    kubectl.apply(cpu_service(missing))

    # The runtime pod's image is not on the node (and is never pulled): the service says so,
    # naming the pod and the kubelet's reason, and an Event says it once.
    cond = eventually(lambda: (c := _degraded(kubectl)) and c["reason"] == "PodFailing" and c,
                      timeout=120, what="Degraded for the runtime pod's missing image")
    assert cond["reason"] == "PodFailing", cond
    assert "tiny-runtime-0" in cond["message"] and "ErrImageNeverPull" in cond["message"], cond
    assert missing in cond["message"]
    events = kubectl.json("get", "events", "-n", NS)["items"]
    failing = [e for e in events if e["reason"] == "PodFailing"
               and e["involvedObject"]["kind"] == "AscendraService"]
    assert len(failing) == 1 and "tiny-runtime-0" in failing[0]["message"], failing

    # An image that starts and then exits (the operator's image has no vLLM: its runtime
    # fails at once) is a crash loop: a new cause, a new Event.
    kubectl("patch", "ascendraservice", "tiny", "-n", NS, "--type=merge", "-p", json.dumps(
        {"spec": {"runtime": {"image": f"{OPERATOR_IMAGE}:{__version__}"}}}))
    cond = eventually(lambda: (c := _degraded(kubectl)) and "CrashLoopBackOff" in c["message"]
                      and c, timeout=180, what="Degraded for the crash-looping runtime")
    assert cond["reason"] == "PodFailing" and "tiny-runtime-0" in cond["message"], cond
    assert "it exited 1" in cond["message"], cond
    eventually(lambda: len([e for e in kubectl.json("get", "events", "-n", NS)["items"]
                            if e["reason"] == "PodFailing"]) == 2, timeout=30,
               what="a second PodFailing Event")

    # The router runs for real from the operator's image and answers an OpenAI error while no
    # engine is ready (never a hang). It is not Ready itself (its /health says no instance
    # is), so its Service has no endpoint yet: it is asked at its pod's address.
    def router_running() -> dict[str, Any] | None:
        pods = kubectl.json("get", "pods", "-n", NS, "-l",
                            "app.kubernetes.io/component=router")["items"]
        return pods[0] if pods and _container_running(pods[0]) else None

    router = eventually(router_running, timeout=120, what="the router's container running")
    client = openai.OpenAI(base_url=f"http://{router['status']['podIP']}:8000/v1",
                           api_key="none", max_retries=0, timeout=30)

    def answered() -> bool:
        try:
            client.completions.create(model="tiny-llama", prompt="hello", max_tokens=4)
        except openai.APIStatusError as e:
            return e.status_code == 503
        except openai.APIConnectionError:
            return False  # the router is still starting
        return False

    eventually(answered, timeout=60, what="the router's 503 through its Service")

    # Deleting the service removes every child, and the kubelet really stops the pods.
    kubectl("delete", "ascendraservice", "tiny", "-n", NS, "--wait=true")
    eventually(lambda: not kubectl.json("get", "pods", "-n", NS)["items"], timeout=120,
               what="every pod of the service gone")
    for kind in ("deployment", "service", "configmap", "serviceaccount"):
        left = [o["metadata"]["name"] for o in kubectl.json("get", kind, "-n", NS)["items"]
                if o["metadata"]["name"].startswith("tiny")]
        assert not left, (kind, left)
    assert _containers_of(cluster, NS) == [], "containers left on the node"


# Connects to each of argv[1]'s host:port until it succeeds or argv[2] seconds have passed:
# a denied packet is dropped, so a denied address times out.
_PROBE = """
import json, socket, sys, time
reached = {}
for target in json.loads(sys.argv[1]):
    host, port = target.rsplit(":", 1)
    deadline, reached[target] = time.monotonic() + float(sys.argv[2]), False
    while not reached[target] and time.monotonic() < deadline:
        try:
            socket.create_connection((host, int(port)), timeout=1).close()
            reached[target] = True
        except OSError:
            time.sleep(0.5)
print(json.dumps(reached))
"""


def _reaches(kubectl: Kubectl, name: str, labels: dict[str, str], targets: list[str],
             patience: float) -> dict[str, bool]:
    """Which of ``targets`` a pod of namespace NS with ``labels`` can open a connection to,
    trying each for ``patience`` seconds (the firewall learns a new pod's address from its
    Pod event: an allowed peer may wait a few seconds)."""
    kubectl.apply({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": f"probe-{name}", "namespace": NS, "labels": labels},
        "spec": {"restartPolicy": "Never", "containers": [{
            "name": "probe", "image": f"{OPERATOR_IMAGE}:{__version__}",
            "imagePullPolicy": "Never",
            "command": ["python", "-c", _PROBE, json.dumps(targets), str(patience)],
            "securityContext": {"allowPrivilegeEscalation": False, "runAsNonRoot": True,
                                "capabilities": {"drop": ["ALL"]},
                                "seccompProfile": {"type": "RuntimeDefault"}}}]}})
    pod = eventually(lambda: (p := kubectl.json("get", "pod", f"probe-{name}", "-n", NS))
                     ["status"].get("phase") in ("Succeeded", "Failed") and p,
                     timeout=60 + patience * len(targets), interval=1,
                     what=f"probe-{name} done")
    log = kubectl("logs", f"probe-{name}", "-n", NS).stdout
    assert pod["status"]["phase"] == "Succeeded", log
    kubectl("delete", "pod", f"probe-{name}", "-n", NS, "--wait=true")
    return json.loads(log.strip().splitlines()[-1])


def _containers_of(cluster: LocalCluster, namespace: str) -> list[str]:
    """Containers the node's containerd still runs for pods of ``namespace``."""
    assert cluster.node is not None
    ctr = ["ctr", "--address", str(cluster.node.socket), "-n", "k8s.io"]
    tasks = subprocess.run([*ctr, "tasks", "ls"], capture_output=True, text=True, check=True)
    out = []
    for line in tasks.stdout.splitlines()[1:]:
        cid, _pid, state = line.split()[:3]
        info = subprocess.run([*ctr, "containers", "info", cid], capture_output=True, text=True)
        if state == "RUNNING" and info.returncode == 0:
            labels = json.loads(info.stdout).get("Labels") or {}
            if labels.get("io.kubernetes.pod.namespace") == namespace:
                out.append(cid)
    return out



def test_a_cpu_service_streams_through_its_routers_service_and_follows_the_resizer(
        cluster: LocalCluster, kubectl: Kubectl, operator_pod: dict[str, Any], prometheus: str):
    """kubectl apply → real vLLM CPU engines in runtime pods and a router pod, all Ready →
    the official client streams through the router's Service → the engines refuse a pod that
    is neither router, operator nor Prometheus → the resizer's role flip
    reaches the running router → kubectl delete stops everything."""
    _model_claim(cluster, kubectl)
    service = cpu_service(f"{RUNTIME_IMAGE}:{__version__}")
    service["spec"]["pool"] = {"instances": 2, "hp": {"min": 0, "max": 1, "initial": 0}}
    kubectl.apply(service)
    eventually(lambda: _ready_lp_hp(kubectl) == (2, 0), timeout=900, interval=5,
               what="Ready with 2 LP engines serving")

    svc = kubectl.json("get", "service", "tiny-router", "-n", NS)
    client = openai.OpenAI(base_url=f"http://{svc['spec']['clusterIP']}:8000/v1",
                           api_key="none", max_retries=0, timeout=120)
    stream = client.completions.create(model="tiny-llama", prompt="The cluster", max_tokens=16,
                                       stream=True, extra_body={"ignore_eos": True})
    chunks = list(stream)
    text = "".join(c.choices[0].text for c in chunks if c.choices)
    finish = [c.choices[0].finish_reason for c in chunks if c.choices and
              c.choices[0].finish_reason]
    assert finish == ["length"] and text, chunks[-3:]

    # The engines and agents take connections from this service's router (it just served),
    # the operator and Prometheus only: the operator's NetworkPolicy, enforced by the node's
    # firewall. Two probe pods run the same connect loop at every runtime port; only the one
    # labelled as the operator gets through.
    runtime = kubectl.json("get", "pods", "-n", NS, "-l",
                           "app.kubernetes.io/component=runtime")["items"]
    ports = [f"{p['status']['podIP']}:{port}" for p in runtime for port in (8000, 8001)]
    assert _reaches(kubectl, "operator-like", {"app.kubernetes.io/name": "ascendra-operator"},
                    ports, patience=60) == dict.fromkeys(ports, True)
    assert _reaches(kubectl, "stranger", {}, ports, patience=5) == dict.fromkeys(ports, False)

    # Autoscaling on: the operator's pod reads HP pressure from Prometheus and the resizer
    # moves the split to one HP; the operator flips a pod's label, the kubelet rewrites its
    # downward-API file, its agent reports the role, and the running router sees it.
    kubectl("patch", "ascendraservice", "tiny", "-n", NS, "--type=merge", "-p", json.dumps(
        {"spec": {"autoscaling": {"enabled": True, "prometheusUrl": prometheus,
                                  "intervalSeconds": 5, "cooldownSeconds": 5}}}))
    eventually(lambda: _ready_lp_hp(kubectl) == (1, 1), timeout=120, interval=2,
               what="Ready with 1 LP and 1 HP after the resizer's move")
    resized = [e["message"] for e in kubectl.json("get", "events", "-n", NS)["items"]
               if e["reason"] == "SplitResized"]
    assert resized and resized[0].startswith("HP 0 -> 1: HP under pressure"), resized

    def router_roles() -> list[str]:
        r = urllib.request.urlopen(f"http://{svc['spec']['clusterIP']}:8000/ascendra/instances",
                                   timeout=10)
        return sorted(i["role"] for i in json.loads(r.read()) if i["healthy"])

    eventually(lambda: router_roles() == ["hp", "lp"], timeout=120, interval=2,
               what="the running router seeing one HP and one LP instance")
    done = client.completions.create(model="tiny-llama", prompt="After the flip",
                                     max_tokens=8, extra_body={"ignore_eos": True})
    assert done.usage.completion_tokens == 8

    kubectl("delete", "ascendraservice", "tiny", "-n", NS, "--wait=true")
    eventually(lambda: not kubectl.json("get", "pods", "-n", NS)["items"], timeout=180,
               what="every pod of the service gone")
    assert _containers_of(cluster, NS) == [], "containers left on the node"
