"""The operator against a real API server, controller-manager and scheduler, with kwok GPU
nodes: everything checked through the API, as a user would with kubectl."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from e2e_support import ROOT, Kubectl, Operator, eventually, restricted_namespace

EXAMPLE = yaml.safe_load((ROOT / "crds" / "example-ascendraservice.yaml").read_text())


def manifest(namespace: str, **spec: Any) -> dict[str, Any]:
    m = copy.deepcopy(EXAMPLE)
    m["metadata"]["namespace"] = namespace
    for key, value in spec.items():
        m["spec"][key] = value
    return m


def service(kubectl: Kubectl, ns: str, name: str = "llama-8b") -> dict[str, Any]:
    return kubectl.json("get", "ascendraservice", name, "-n", ns)


def condition(obj: dict[str, Any], kind: str) -> dict[str, Any]:
    return next((c for c in (obj.get("status") or {}).get("conditions", [])
                 if c["type"] == kind), {})


def runtime_pods(kubectl: Kubectl, ns: str) -> list[dict[str, Any]]:
    return kubectl.json("get", "pods", "-n", ns, "-l",
                        "app.kubernetes.io/component=runtime")["items"]


def reasons(kubectl: Kubectl, ns: str) -> set[str]:
    """Reasons of the Events posted on AscendraServices in ``ns``."""
    items = kubectl.json("get", "events", "-n", ns)["items"]
    return {e["reason"] for e in items if e["involvedObject"]["kind"] == "AscendraService"}


def ready_with(kubectl: Kubectl, ns: str, lp: int, hp: int) -> dict[str, Any] | None:
    s = service(kubectl, ns)
    st = s.get("status") or {}
    ok = (condition(s, "Ready").get("status") == "True" and st.get("readyLP") == lp
          and st.get("readyHP") == hp and st.get("observedGeneration") ==
          s["metadata"]["generation"])
    return s if ok else None


def test_apply_example_creates_every_child_on_gpu_nodes(kubectl: Kubectl, operator: Operator,
                                                          namespace: str):
    kubectl.apply(manifest(namespace))
    s = eventually(lambda: ready_with(kubectl, namespace, 3, 0), timeout=120,
                   what="Ready with 3 LP and no HP (the example's split)")
    assert s["status"]["split"] == {"lp": 3, "hp": 0}
    for kind, name in (("serviceaccount", "llama-8b-router"), ("role", "llama-8b-router"),
                       ("rolebinding", "llama-8b-router"), ("configmap", "llama-8b-router"),
                       ("deployment", "llama-8b-router"), ("service", "llama-8b-router"),
                       ("service", "llama-8b-runtime")):
        obj = kubectl.json("get", kind, name, "-n", namespace)
        assert obj["metadata"]["ownerReferences"][0]["kind"] == "AscendraService"
    pods = runtime_pods(kubectl, namespace)
    assert sorted(p["metadata"]["labels"]["ascendra.io/role"] for p in pods) == ["lp"] * 3
    args = pods[0]["spec"]["containers"][0]["args"]
    assert args[:3] == ["runtime", "--system", "ascendra"]
    nodes = {n["metadata"]["name"]: n for n in kubectl.json("get", "nodes")["items"]}
    for p in pods:
        node = nodes[p["spec"]["nodeName"]]
        assert node["metadata"]["labels"]["ascendra.io/gpu-pool"] == "h100"
        assert p["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "1"
        assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in \
            p["spec"]["tolerations"]
    router = kubectl.json("get", "pods", "-n", namespace, "-l",
                          "app.kubernetes.io/component=router")["items"]
    assert router and all(nodes[p["spec"]["nodeName"]]["metadata"]["name"].startswith("cpu-")
                          for p in router)
    role = kubectl.json("get", "role", "llama-8b-router", "-n", namespace)
    assert role["rules"] == [{"apiGroups": [""], "resources": ["pods"],
                              "verbs": ["get", "list", "watch"]}]
    # The namespace enforces the restricted Pod Security Standard, and every child passed it;
    # a pod that does not meet it is refused there.
    plain = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "plain",
             "namespace": namespace}, "spec": {"containers": [{"name": "c", "image": "x"}]}}
    refused = kubectl("apply", "-f", "-", input=json.dumps(plain), check=False)
    assert refused.returncode != 0 and "violates PodSecurity" in refused.stderr, refused.stderr
    for p in (*pods, *router):
        sc = p["spec"]["containers"][0]["securityContext"]
        assert p["spec"]["securityContext"]["runAsNonRoot"] and sc["readOnlyRootFilesystem"]
    table = kubectl("get", "ascendraservices", "-n", namespace).stdout
    assert "LP" in table.splitlines()[0] and "llama-3.1-8b" in table
    assert "PodCreated" in eventually(lambda: reasons(kubectl, namespace), timeout=30,
                                      what="Events on the AscendraService")


def test_resizing_and_split_changes_converge_without_restarts(kubectl: Kubectl,
                                                              operator: Operator,
                                                              namespace: str):
    kubectl.apply(manifest(namespace))
    eventually(lambda: ready_with(kubectl, namespace, 3, 0), timeout=120, what="initial Ready")
    uids = {p["metadata"]["name"]: p["metadata"]["uid"] for p in runtime_pods(kubectl, namespace)}
    # A split change is a label flip on a running pod.
    kubectl("patch", "ascendraservice", "llama-8b", "-n", namespace, "--type=merge", "-p",
            json.dumps({"spec": {"pool": {"hp": {"min": 2, "max": 2, "initial": 2}}}}))
    eventually(lambda: ready_with(kubectl, namespace, 1, 2), timeout=60, what="1 LP + 2 HP")
    after = {p["metadata"]["name"]: p["metadata"]["uid"] for p in runtime_pods(kubectl, namespace)}
    assert after == uids, "a role change replaced a pod"
    assert "RoleChanged" in eventually(lambda: "RoleChanged" in reasons(kubectl, namespace)
                                       and reasons(kubectl, namespace), timeout=30,
                                       what="a RoleChanged Event")
    # Growing the pool adds pods; shrinking removes the highest indexes.
    kubectl("patch", "ascendraservice", "llama-8b", "-n", namespace, "--type=merge", "-p",
            json.dumps({"spec": {"pool": {"instances": 5}}}))
    eventually(lambda: ready_with(kubectl, namespace, 3, 2), timeout=90, what="3 LP + 2 HP")
    kubectl("patch", "ascendraservice", "llama-8b", "-n", namespace, "--type=merge", "-p",
            json.dumps({"spec": {"pool": {"instances": 3}}}))
    eventually(lambda: ready_with(kubectl, namespace, 1, 2)
               and len(runtime_pods(kubectl, namespace)) == 3, timeout=90, what="back to 3")


def test_children_deleted_or_edited_by_hand_come_back(kubectl: Kubectl, operator: Operator,
                                                       namespace: str):
    kubectl.apply(manifest(namespace))
    eventually(lambda: ready_with(kubectl, namespace, 3, 0), timeout=120, what="initial Ready")
    kubectl("delete", "pod", "llama-8b-runtime-0", "-n", namespace, "--wait=false")
    kubectl("delete", "service", "llama-8b-router", "-n", namespace)
    kubectl("delete", "configmap", "llama-8b-router", "-n", namespace)
    kubectl("scale", "deployment", "llama-8b-router", "-n", namespace, "--replicas=4")
    eventually(lambda: kubectl("get", "service", "llama-8b-router", "-n", namespace,
                               check=False).returncode == 0
               and kubectl("get", "configmap", "llama-8b-router", "-n", namespace,
                           check=False).returncode == 0
               and kubectl.json("get", "deployment", "llama-8b-router", "-n",
                                namespace)["spec"]["replicas"] == 1,
               timeout=60, what="Service, ConfigMap and replicas restored")
    eventually(lambda: ready_with(kubectl, namespace, 3, 0), timeout=90,
               what="the deleted pod restored")


def test_operator_killed_mid_reconcile_converges_after_restart(kubectl: Kubectl,
                                                               operator: Operator,
                                                               namespace: str):
    operator.kill()
    try:
        kubectl.apply(manifest(namespace, pool={"instances": 6, "hp": {"min": 2, "max": 3}}))
        operator.start()
        # Kill it again as soon as it has begun: some children exist, others not yet.
        eventually(lambda: runtime_pods(kubectl, namespace), timeout=60, interval=0.1,
                   what="the first pods")
        operator.kill()
    finally:
        operator.start()
    eventually(lambda: ready_with(kubectl, namespace, 4, 2), timeout=120,
               what="Ready with 4 LP + 2 HP after the restart")
    names = sorted(p["metadata"]["name"] for p in runtime_pods(kubectl, namespace))
    assert names == [f"llama-8b-runtime-{i}" for i in range(6)]


def test_deleting_the_service_removes_every_child(kubectl: Kubectl, operator: Operator,
                                                  namespace: str):
    kubectl.apply(manifest(namespace))
    eventually(lambda: ready_with(kubectl, namespace, 3, 0), timeout=120, what="initial Ready")
    kubectl("delete", "ascendraservice", "llama-8b", "-n", namespace, "--wait=false")

    def deleted() -> bool:
        """The operator has let the service go (its timer's finalizer removed); until then the
        failure message shows what still holds it."""
        left = kubectl("get", "ascendraservice", "llama-8b", "-n", namespace, "-o",
                       "jsonpath={.metadata.finalizers} {.metadata.deletionTimestamp}",
                       check=False)
        assert left.returncode != 0 and "NotFound" in left.stderr, f"still there: {left.stdout}"
        return True

    # Once took over 60 s in CI, with other tests' namespaces terminating on the 2-core machine.
    eventually(deleted, timeout=120, what="the service deleted")

    def gone() -> bool:
        left = kubectl("get", "pods,deployments,services,configmaps,serviceaccounts,roles,"
                       "rolebindings", "-n", namespace, "-l",
                       "app.kubernetes.io/managed-by=ascendra-operator", "-o", "name").stdout
        return left.strip() == ""

    eventually(gone, timeout=120, what="every child garbage-collected")


def test_unschedulable_and_unrealisable_specs_are_degraded(kubectl: Kubectl, operator: Operator,
                                                           namespace: str):
    # 16 GPUs per instance on 8-GPU nodes: valid, but nothing can place it.
    big = manifest(namespace, runtime={**EXAMPLE["spec"]["runtime"], "gpusPerInstance": 16})
    kubectl.apply(big)
    s = eventually(lambda: (x := service(kubectl, namespace)) and
                   condition(x, "Degraded").get("status") == "True" and x,
                   timeout=90, what="Degraded")
    assert condition(s, "Degraded")["reason"] == "Unschedulable"
    assert "nvidia.com/gpu" in condition(s, "Degraded")["message"]
    assert condition(s, "Ready")["status"] == "False"
    kubectl("delete", "ascendraservice", "llama-8b", "-n", namespace)
    bad = manifest(namespace, runtime={**EXAMPLE["spec"]["runtime"],
                                       "resources": {"requests": {"cpu": "lots"}}})
    kubectl.apply(bad)
    s = eventually(lambda: (x := service(kubectl, namespace)) and
                   condition(x, "Degraded").get("reason") == "InvalidSpec" and x,
                   timeout=60, what="InvalidSpec")
    assert "not a quantity" in condition(s, "Degraded")["message"]
    described = kubectl("describe", "ascendraservice", "llama-8b", "-n", namespace).stdout
    assert "InvalidSpec" in described


INVALID = [
    ({"pool": {"instances": 3, "hp": {"min": 2, "max": 1}}}, "pool.hp.min must not exceed"),
    ({"pool": {"instances": 3, "hp": {"min": 1, "max": 3}}}, "at least one instance stays LP"),
    ({"pool": {"instances": 3, "hp": {"min": 1, "max": 2, "initial": 0}}}, "pool.hp.initial"),
    ({"pool": {"instances": 0}}, "spec.pool.instances"),
    ({"runtime": {"image": "x", "gpusPerInstance": 1, "tensorParallel": 2}},
     "tensorParallel cannot exceed"),
    ({"runtime": {"image": "x", "resources": {"limits": {"nvidia.com/gpu": 2}}}},
     "runtime.gpusPerInstance"),
    ({"runtime": {"image": ""}}, "spec.runtime.image"),
    ({"autoscaling": {"enabled": True}}, "prometheusUrl is required"),
    ({"autoscaling": {"prometheusUrl": "ftp://x"}}, "spec.autoscaling.prometheusUrl"),
    ({"autoscaling": {"intervalSeconds": 60, "cooldownSeconds": 30}}, "cooldownSeconds"),
    ({"slo": {"ttftSeconds": 0}}, "spec.slo.ttftSeconds"),
    ({"slo": {"attainmentTarget": 1.5}}, "spec.slo.attainmentTarget"),
    ({"policy": {"dispatch": "random"}}, "spec.policy.dispatch"),
    ({"policy": {"queueLimit": 0}}, "spec.policy.queueLimit"),
    ({"policy": {"relegationMarginSeconds": -1}}, "spec.policy.relegationMarginSeconds"),
    ({"policy": {"noSuchKnob": 1}}, "noSuchKnob"),
    ({"system": "vllm-v0"}, "spec.system"),
    ({"model": {"name": "m"}}, "spec.model.path"),
    ({"router": {"port": 70000}}, "spec.router.port"),
    # Image references and the model's volume sources are checked at admission.
    ({"runtime": {"image": "vllm/vllm-openai:v0.26.0; rm -rf /"}}, "spec.runtime.image"),
    ({"runtime": {"image": "img:"}}, "spec.runtime.image"),
    ({"router": {"image": "http://registry/router"}}, "spec.router.image"),
    ({"model": {"name": "m", "path": "/models/m", "volume": {"hostPath": {"path": "/"}}}},
     "spec.model.volume.hostPath"),
    ({"model": {"name": "m", "path": "/models/m", "volume": {}}}, "spec.model.volume"),
]


@pytest.mark.parametrize(("spec", "message"), INVALID,
                         ids=[m for _, m in INVALID])
def test_invalid_services_are_rejected_at_admission(kubectl: Kubectl, spec: dict[str, Any],
                                                    message: str):
    m = manifest("default", **spec)
    m["metadata"]["name"] = "invalid"
    r = kubectl.apply(m, check=False)
    assert r.returncode != 0 and message in r.stderr, r.stderr
    assert kubectl("get", "ascendraservice", "invalid", "-n", "default",
                   check=False).returncode != 0


def test_helm_chart_lints_templates_and_installs(kubectl: Kubectl, kubeconfig: Path,
                                                 tmp_path: Path):
    import subprocess

    from cluster import ensure_binaries

    helm = str(ensure_binaries() / "helm")
    chart = str(ROOT / "charts" / "ascendra")
    env = {"KUBECONFIG": str(kubeconfig), "HELM_CACHE_HOME": str(tmp_path / "c"),
           "HELM_CONFIG_HOME": str(tmp_path / "cfg"), "HELM_DATA_HOME": str(tmp_path / "d"),
           "HOME": str(tmp_path), "PATH": "/usr/bin:/bin"}
    lint = subprocess.run([helm, "lint", "--strict", chart], capture_output=True, text=True,
                          env=env)
    assert lint.returncode == 0, lint.stdout + lint.stderr
    rendered = subprocess.run([helm, "template", "ascendra", chart, "-n", "ascendra-system",
                               "--set", "operator.watchNamespaces={a,b}"],
                              capture_output=True, text=True, env=env, check=True).stdout
    docs = [d for d in yaml.safe_load_all(rendered) if d]
    kinds = sorted(d["kind"] for d in docs)
    assert kinds == ["ClusterRole", "ClusterRoleBinding", "Deployment", "Role", "Role",
                     "RoleBinding", "RoleBinding", "ServiceAccount"]
    # Watching a and b, it holds pod rights in a and b only; cluster-wide, discovery.
    cluster_role = next(d for d in docs if d["kind"] == "ClusterRole")
    assert {r for rule in cluster_role["rules"] for r in rule["resources"]} == {
        "customresourcedefinitions", "namespaces"}
    assert {d["metadata"]["namespace"] for d in docs if d["kind"] == "Role"} == {"a", "b"}
    args = next(d for d in docs if d["kind"] == "Deployment")["spec"]["template"]["spec"][
        "containers"][0]["args"]
    assert "--namespace=a" in args and "--namespace=b" in args
    assert "--no-monitoring-objects" not in args
    with_monitoring = [d for d in yaml.safe_load_all(subprocess.run(
        [helm, "template", "ascendra", chart, "--set", "monitoring.enabled=true"],
        capture_output=True, text=True, env=env, check=True).stdout) if d]
    assert {"PrometheusRule", "ServiceMonitor", "PodMonitor"} <= {d["kind"] for d in
                                                                  with_monitoring}
    # The chart's rules replace the operator's per-service ones: never both.
    assert "--no-monitoring-objects" in next(
        d for d in with_monitoring if d["kind"] == "Deployment")["spec"]["template"]["spec"][
        "containers"][0]["args"]
    restricted_namespace(kubectl, "ascendra-system")  # the operator's pod meets it too
    install = subprocess.run([helm, "install", "ascendra", chart, "-n", "ascendra-system",
                              "--wait", "--timeout", "120s"],
                             capture_output=True, text=True, env=env)
    assert install.returncode == 0, install.stdout + install.stderr
    dep = kubectl.json("get", "deployment", "ascendra-operator", "-n", "ascendra-system")
    assert dep["status"].get("availableReplicas") == 1
    subprocess.run([helm, "uninstall", "ascendra", "-n", "ascendra-system"], env=env,
                   check=True, capture_output=True)
    # Installed watching one namespace, the API server's RBAC lets the operator create pods
    # there and nowhere else.
    kubectl("create", "namespace", "watched", check=False)
    install = subprocess.run([helm, "install", "ascendra", chart, "-n", "ascendra-system",
                              "--set", "operator.watchNamespaces={watched}"],
                             capture_output=True, text=True, env=env)
    assert install.returncode == 0, install.stdout + install.stderr
    try:
        account = "system:serviceaccount:ascendra-system:ascendra-operator"
        for ns, allowed in (("watched", "yes"), ("default", "no"), ("kube-system", "no")):
            for verb in ("create", "delete"):
                r = kubectl("auth", "can-i", verb, "pods", "-n", ns, "--as", account,
                            check=False)
                assert r.stdout.strip() == allowed, (verb, ns, r.stdout, r.stderr)
        r = kubectl("auth", "can-i", "list", "ascendraservices.ascendra.io", "-n", "watched",
                    "--as", account, check=False)
        assert r.stdout.strip() == "yes", r.stdout + r.stderr
    finally:
        subprocess.run([helm, "uninstall", "ascendra", "-n", "ascendra-system"], env=env,
                       check=True, capture_output=True)


def test_chart_ships_the_same_crd():
    assert (ROOT / "charts" / "ascendra" / "crds" / "ascendraservices.yaml").read_text() == \
        (ROOT / "crds" / "ascendraservices.yaml").read_text()


def _monitoring_crd(kind: str, plural: str) -> dict[str, Any]:
    """A minimal stand-in for a prometheus-operator CRD: the API group and kind are what make
    the operator create its monitoring objects; their schemas do not matter here."""
    return {"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
            "metadata": {"name": f"{plural}.monitoring.coreos.com"},
            "spec": {"group": "monitoring.coreos.com", "scope": "Namespaced",
                     "names": {"kind": kind, "plural": plural, "singular": kind.lower()},
                     "versions": [{"name": "v1", "served": True, "storage": True, "schema": {
                         "openAPIV3Schema": {"type": "object",
                                             "x-kubernetes-preserve-unknown-fields": True}}}]}}


def test_monitoring_objects_appear_when_prometheus_operator_crds_exist(
        kubectl: Kubectl, operator: Operator, namespace: str):
    kinds = {"ServiceMonitor": "servicemonitors", "PodMonitor": "podmonitors",
             "PrometheusRule": "prometheusrules"}
    for kind, plural in kinds.items():
        kubectl.apply(_monitoring_crd(kind, plural))
    try:
        kubectl.apply(manifest(namespace))
        for plural, name in (("servicemonitors", "llama-8b-router"),
                             ("podmonitors", "llama-8b-runtime"),
                             ("prometheusrules", "llama-8b-slo")):
            obj = eventually(lambda p=plural, n=name: kubectl(
                "get", p, n, "-n", namespace, "-o", "json", check=False).returncode == 0
                and kubectl.json("get", p, n, "-n", namespace), timeout=120,
                what=f"{plural}/{name}")
            assert obj["metadata"]["ownerReferences"][0]["kind"] == "AscendraService"
        rule = kubectl.json("get", "prometheusrules", "llama-8b-slo", "-n", namespace)
        exprs = [r["expr"] for g in rule["spec"]["groups"] for r in g["rules"]]
        assert all(f'namespace="{namespace}",ascendra_io_service="llama-8b"' in e for e in exprs)
    finally:
        for plural in kinds.values():
            kubectl("delete", "crd", f"{plural}.monitoring.coreos.com", check=False)
