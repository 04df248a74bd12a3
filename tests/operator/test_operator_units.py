"""The operator's pure parts: spec parsing, builders, pod plans and status, as data."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import yaml

from ascendra.operator.builders import (
    HASH_ANNOTATION,
    ROLE_LABEL,
    drifted,
    roles,
    router_config,
    router_objects,
    runtime_pod,
)
from ascendra.operator.plan import degraded_news, failing_reason, plan_pods, status
from ascendra.operator.spec import SpecError, parse

EXAMPLE = Path(__file__).resolve().parents[2] / "crds" / "example-ascendraservice.yaml"


def body(**spec_overrides) -> dict:
    b = yaml.safe_load(EXAMPLE.read_text())
    b["metadata"] |= {"uid": "uid-1", "generation": 3}
    for path, value in spec_overrides.items():
        node = b["spec"]
        *parents, leaf = path.split("__")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return b


def ready(pod: dict) -> dict:
    pod = copy.deepcopy(pod)
    pod["status"] = {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]}
    return pod


def test_parse_example():
    s = parse(body())
    assert (s.name, s.namespace, s.model_name, s.instances) == ("llama-8b", "default",
                                                                  "llama-3.1-8b", 3)
    assert (s.hp_min, s.hp_max, s.hp_initial, s.gpus) == (0, 1, 0, 1)
    assert s.clamp_hp(None) == 0 and s.clamp_hp(5) == 1 and s.clamp_hp(0) == 0
    assert s.system == "ascendra" and s.policy.queue_limit == 4096


@pytest.mark.parametrize(("override", "message"), [
    ({"runtime__resources": {"requests": {"cpu": "lots"}}}, "not a quantity"),
    ({"router__resources": {"limits": {"memory": "1 GB"}}}, "router.resources.limits.memory"),
    ({"model__volume": {"hostPath": {"path": "/"}}}, "model.volume must be exactly one of"),
    ({"model__volume": {"persistentVolumeClaim": {"claimName": "m"}, "emptyDir": {}}},
     "got persistentVolumeClaim, emptyDir"),
    ({"placement__nodeSelector": {"pool": "bad value!"}}, "not a label value"),
    ({"policy": {"queueLimit": 0}}, "policy.queueLimit: 0 is out of range"),
    ({"policy": {"order": "lifo"}}, "policy.order: 'lifo' is not one of"),
    ({"system": "ascendra-paper"}, "system: 'ascendra-paper' is not a system that runs"),
    ({"slo__tbtKind": "median"}, "slo.tbtKind: 'median' is not one of mean, p99, max"),
    # A source the restricted Pod Security Standard refuses (NFS goes through a claim).
    ({"model__volume": {"nfs": {"server": "s", "path": "/m"}}},
     "model.volume must be exactly one of"),
    ({"runtime__shmSize": "lots"}, "runtime.shmSize: 'lots' is not a quantity"),
    ({"runtime__gpuResource": "gpu"}, "runtime.gpuResource: 'gpu' is not an extended"),
    ({"runtime__gpuResource": "amd.com/gpu",
      "runtime__resources": {"limits": {"amd.com/gpu": "1"}}},
     "set amd.com/gpu with runtime.gpusPerInstance"),
])
def test_spec_errors(override, message):
    with pytest.raises(SpecError, match=message):
        parse(body(**override))


def test_long_names_are_refused():
    b = body()
    b["metadata"]["name"] = "x" * 41
    with pytest.raises(SpecError, match="longer than 40"):
        parse(b)


@pytest.mark.parametrize("name", ["llama.8b", "8b-llama", "Llama", "llama-", "llama_8b", ""])
def test_names_a_service_could_not_take_are_refused_before_any_child(name):
    b = body()
    b["metadata"]["name"] = name
    with pytest.raises(SpecError, match="must be lowercase letters"):
        parse(b)


@pytest.mark.parametrize("path", ["/llama", "llama/8b", "/"])
def test_a_model_volume_is_never_mounted_over_the_root(path):
    b = body(model__path=path, model__volume={"persistentVolumeClaim": {"claimName": "m"}})
    with pytest.raises(SpecError, match=r"model\.path: .* must be an absolute path"):
        parse(b)
    assert parse(body(model__path="/models/llama",
                      model__volume={"persistentVolumeClaim": {"claimName": "m"}})).model_path \
        == "/models/llama"


def test_runtime_pod_places_on_gpus_and_reads_its_role_live():
    s = parse(body(runtime__gpusPerInstance=2, runtime__tensorParallel=2))
    pod = runtime_pod(s, 2, "hp")
    meta, spec = pod["metadata"], pod["spec"]
    assert meta["name"] == "llama-8b-runtime-2" and meta["labels"][ROLE_LABEL] == "hp"
    assert meta["ownerReferences"][0] | {} == {
        "apiVersion": "ascendra.io/v1alpha1", "kind": "AscendraService", "name": "llama-8b",
        "uid": "uid-1", "controller": True, "blockOwnerDeletion": True}
    c = spec["containers"][0]
    assert c["resources"]["limits"]["nvidia.com/gpu"] == "2"
    assert c["resources"]["requests"]["nvidia.com/gpu"] == "2"
    assert spec["nodeSelector"] == {"ascendra.io/gpu-pool": "h100"}
    assert spec["tolerations"][0]["key"] == "nvidia.com/gpu"
    assert "--role-file" in c["args"] and "--tensor-parallel-size" in c["args"]
    assert c["args"][c["args"].index("--tensor-parallel-size") + 1] == "2"
    assert spec["volumes"][0]["downwardAPI"]["items"][0]["fieldRef"]["fieldPath"] == \
        "metadata.labels"


# The restricted Pod Security Standard as the API server's admission checks it
# (k8s.io/pod-security-admission/policy), for the fields these pods can set.
_RESTRICTED_VOLUMES = {"configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "image",
                       "persistentVolumeClaim", "projected", "secret"}


def _restricted_violations(pod: dict) -> list[str]:
    out = []
    psc = pod.get("securityContext") or {}
    for c in pod["containers"]:
        sc = c.get("securityContext") or {}
        if not (sc.get("runAsNonRoot", psc.get("runAsNonRoot"))):
            out.append(f"{c['name']}: runAsNonRoot")
        if sc.get("runAsUser", psc.get("runAsUser")) == 0:
            out.append(f"{c['name']}: runAsUser 0")
        if sc.get("allowPrivilegeEscalation") is not False:
            out.append(f"{c['name']}: allowPrivilegeEscalation")
        if (sc.get("capabilities") or {}).get("drop") != ["ALL"] or \
                (sc.get("capabilities") or {}).get("add"):
            out.append(f"{c['name']}: capabilities")
        seccomp = (sc.get("seccompProfile") or psc.get("seccompProfile") or {}).get("type")
        if seccomp not in ("RuntimeDefault", "Localhost"):
            out.append(f"{c['name']}: seccompProfile")
        if not sc.get("readOnlyRootFilesystem"):
            out.append(f"{c['name']}: readOnlyRootFilesystem")  # beyond the standard: ours
    for v in pod.get("volumes", []):
        if set(v) - {"name"} - _RESTRICTED_VOLUMES:
            out.append(f"volume {v['name']}: {sorted(set(v) - {'name'})}")
    if pod.get("hostNetwork") or pod.get("hostPID") or pod.get("hostIPC"):
        out.append("host namespaces")
    return out


@pytest.mark.parametrize("volume", [None, {"persistentVolumeClaim": {"claimName": "m"}},
                                    {"image": {"reference": "models/llama:1"}}])
def test_every_pod_meets_the_restricted_pod_security_standard(volume):
    s = parse(body(model__path="/models/llama", **({"model__volume": volume} if volume else {})))
    runtime = runtime_pod(s, 0, "lp")["spec"]
    router = next(o for o in router_objects(s) if o["kind"] == "Deployment")[
        "spec"]["template"]["spec"]
    assert _restricted_violations(runtime) == [] and _restricted_violations(router) == []
    # What the processes write goes to emptyDirs (the root filesystem is read-only).
    mounts = {m["mountPath"]: m["name"] for m in runtime["containers"][0]["volumeMounts"]}
    kinds = {v["name"]: next(k for k in v if k != "name") for v in runtime["volumes"]}
    assert kinds[mounts["/tmp"]] == kinds[mounts["/home/ascendra"]] == "emptyDir"
    assert {"name": "HOME", "value": "/home/ascendra"} in runtime["containers"][0]["env"]
    assert any(m["mountPath"] == "/tmp" for m in router["containers"][0]["volumeMounts"])
    assert _restricted_violations({**runtime, "securityContext": {}}) != []  # the check bites


def test_what_a_gpu_runtime_needs_is_set_without_weakening_the_defaults():
    s = parse(body(runtime__gpuResource="amd.com/gpu", runtime__shmSize="16Gi",
                   runtime__env=[{"name": "HOME", "value": "/data"}]))
    pod = runtime_pod(s, 0, "lp")["spec"]
    c = pod["containers"][0]
    assert c["resources"]["limits"]["amd.com/gpu"] == "1"
    assert "nvidia.com/gpu" not in c["resources"]["limits"]
    assert next(v for v in pod["volumes"] if v["name"] == "dshm")["emptyDir"] == {
        "medium": "Memory", "sizeLimit": "16Gi"}
    assert [e for e in c["env"] if e["name"] == "HOME"] == [{"name": "HOME", "value": "/data"}]
    assert _restricted_violations(pod) == []
    default = runtime_pod(parse(body()), 0, "lp")["spec"]
    assert next(v for v in default["volumes"] if v["name"] == "dshm")["emptyDir"] == {
        "medium": "Memory"}


def test_role_is_not_part_of_the_template_hash():
    s = parse(body())
    lp, hp = runtime_pod(s, 0, "lp"), runtime_pod(s, 0, "hp")
    assert lp["metadata"]["annotations"][HASH_ANNOTATION] == \
        hp["metadata"]["annotations"][HASH_ANNOTATION]
    other = runtime_pod(parse(body(runtime__image="other:1")), 0, "lp")
    assert other["metadata"]["annotations"][HASH_ANNOTATION] != \
        lp["metadata"]["annotations"][HASH_ANNOTATION]


def test_router_objects_and_least_privilege_rbac():
    s = parse(body())
    objs = {(o["kind"], o["metadata"]["name"]): o for o in router_objects(s)}
    assert set(objs) == {("ServiceAccount", "llama-8b-router"), ("Role", "llama-8b-router"),
                         ("RoleBinding", "llama-8b-router"), ("ConfigMap", "llama-8b-router"),
                         ("Deployment", "llama-8b-router"), ("Service", "llama-8b-router"),
                         ("Service", "llama-8b-runtime"),
                         ("NetworkPolicy", "llama-8b-runtime")}
    assert objs[("Role", "llama-8b-router")]["rules"] == [
        {"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch"]}]
    cfg = json.loads(objs[("ConfigMap", "llama-8b-router")]["data"]["router.json"])
    assert cfg == router_config(s) and cfg["slo"] == {"ttft": 1.0, "tbt": 0.15, "tbtKind": "mean"}
    assert cfg["system"] == "ascendra" and cfg["policy"] == s.policy.as_mapping()
    assert objs[("Service", "llama-8b-runtime")]["spec"]["clusterIP"] == "None"
    policy = objs[("NetworkPolicy", "llama-8b-runtime")]["spec"]
    assert policy["podSelector"]["matchLabels"]["app.kubernetes.io/component"] == "runtime"
    assert policy["ingress"][0]["from"][0] == {"podSelector": {"matchLabels": {
        "ascendra.io/service": "llama-8b", "app.kubernetes.io/component": "router"}}}
    assert all(o["metadata"]["ownerReferences"][0]["uid"] == "uid-1" for o in objs.values())


def test_router_credentials_come_from_the_secrets_the_service_names():
    def router_env(s) -> list:
        dep = next(o for o in router_objects(s) if o["kind"] == "Deployment")
        return dep["spec"]["template"]["spec"]["containers"][0]["env"]

    assert router_env(parse(body())) == []  # none named: the router is open
    s = parse(body(router__apiKeysSecret={"name": "llama-keys"},
                   router__adminTokenSecret={"name": "ops", "key": "token"}))
    assert router_env(s) == [
        {"name": "ASCENDRA_API_KEYS",
         "valueFrom": {"secretKeyRef": {"name": "llama-keys", "key": "api-keys"}}},
        {"name": "ASCENDRA_ADMIN_TOKEN",
         "valueFrom": {"secretKeyRef": {"name": "ops", "key": "token"}}}]


def test_roles_put_hp_last():
    s = parse(body())
    assert roles(s, 1) == ["lp", "lp", "hp"] and roles(s, 2) == ["lp", "hp", "hp"]


def test_plan_from_nothing_creates_every_pod():
    s = parse(body())
    plan = plan_pods(s, 1, [])
    assert [p["metadata"]["labels"][ROLE_LABEL] for p in plan.create] == ["lp", "lp", "hp"]
    assert not plan.delete and not plan.relabel


def test_split_change_is_a_label_flip():
    s = parse(body())
    pods = [ready(runtime_pod(s, i, r)) for i, r in enumerate(roles(s, 1))]
    plan = plan_pods(s, 2, pods)
    assert plan.relabel == {"llama-8b-runtime-1": "hp"} and not plan.create and not plan.delete


def test_scaling_down_deletes_the_extra_index_and_restores_missing_ones():
    s = parse(body(pool__instances=2))
    full = parse(body())
    pods = [ready(runtime_pod(full, i, r)) for i, r in enumerate(roles(full, 1))]
    plan = plan_pods(s, 1, pods)
    assert plan.delete == ["llama-8b-runtime-2"] and plan.relabel == {"llama-8b-runtime-1": "hp"}
    plan = plan_pods(full, 1, pods[1:])  # someone deleted pod 0
    assert [p["metadata"]["name"] for p in plan.create] == ["llama-8b-runtime-0"]


def test_template_change_replaces_one_pod_at_a_time():
    old = parse(body())
    new = parse(body(runtime__image="runtime:2"))
    pods = [ready(runtime_pod(old, i, r)) for i, r in enumerate(roles(old, 1))]
    plan = plan_pods(new, 1, pods)
    assert plan.delete == ["llama-8b-runtime-0"]
    pods[1]["status"]["conditions"][0]["status"] = "False"  # another pod is not ready
    assert plan_pods(new, 1, pods).delete == []


def test_status_conditions():
    s = parse(body())
    pods = [ready(runtime_pod(s, i, r)) for i, r in enumerate(roles(s, 1))]
    router = {"status": {"availableReplicas": 1}}
    st = status(s, 1, pods, router, 3, [])
    cond = {c["type"]: c for c in st["conditions"]}
    assert (st["readyLP"], st["readyHP"], st["split"]) == (2, 1, {"lp": 2, "hp": 1})
    assert cond["Ready"]["status"] == "True" and cond["Degraded"]["status"] == "False"
    assert cond["Progressing"]["status"] == "False" and st["observedGeneration"] == 3
    pending = [*copy.deepcopy(pods[:2]), runtime_pod(s, 2, "hp")]
    pending[2]["status"] = {"phase": "Pending", "conditions": [{
        "type": "PodScheduled", "status": "False", "reason": "Unschedulable",
        "message": "0/9 nodes are available: 9 Insufficient nvidia.com/gpu."}]}
    cond = {c["type"]: c for c in status(s, 1, pending, router, 3, st["conditions"])["conditions"]}
    assert cond["Ready"]["status"] == "False" and cond["Degraded"]["reason"] == "Unschedulable"
    assert "Insufficient nvidia.com/gpu" in cond["Degraded"]["message"]


def _waiting(pod: dict, reason: str, message: str = "", last: dict | None = None) -> dict:
    pod = copy.deepcopy(pod)
    pod["status"] = {"phase": "Pending", "containerStatuses": [{
        "name": "runtime", "restartCount": 3, "state": {"waiting": {
            "reason": reason, "message": message}},
        "lastState": {"terminated": last} if last else {}}]}
    return pod


def test_a_pod_that_cannot_start_degrades_the_service_once_per_cause():
    s = parse(body())
    pods = [ready(runtime_pod(s, i, r)) for i, r in enumerate(roles(s, 0))]
    router = {"status": {"availableReplicas": 1}}
    name = pods[1]["metadata"]["name"]
    missing = _waiting(pods[1], "ErrImageNeverPull",
                       'Container image "x/runtime:9" is not present with pull policy of Never')
    crashing = _waiting(pods[1], "CrashLoopBackOff", "back-off 40s restarting failed container",
                        {"exitCode": 1, "reason": "Error"})
    assert failing_reason(pods) is None
    assert failing_reason([pods[0], missing]) == (
        f'pod {name}, container runtime: ErrImageNeverPull: Container image "x/runtime:9" is '
        "not present with pull policy of Never")
    # The back-off time and restart count change every pass; the cause does not.
    assert failing_reason([crashing]) == \
        f"pod {name}, container runtime: CrashLoopBackOff: it exited 1 (Error)"
    assert failing_reason([_waiting(pods[1], "ContainerCreating")]) is None

    healthy = status(s, 0, pods, router, 1, [])["conditions"]
    first = status(s, 0, [pods[0], crashing, pods[2]], router, 1, healthy)["conditions"]
    cond = {c["type"]: c for c in first}
    assert cond["Degraded"]["status"] == "True" and cond["Degraded"]["reason"] == "PodFailing"
    assert cond["Ready"]["status"] == "False"
    assert degraded_news(healthy, first) == cond["Degraded"]
    again = _waiting(pods[1], "CrashLoopBackOff", "back-off 80s restarting failed container",
                     {"exitCode": 1, "reason": "Error"})
    second = status(s, 0, [pods[0], again, pods[2]], router, 1, first)["conditions"]
    assert degraded_news(first, second) is None  # the same cause: no second Event
    # A router pod that cannot start is named as well.
    router_pod = _waiting({"metadata": {"name": "llama-8b-router-abc"}}, "ImagePullBackOff",
                          'Back-off pulling image "bad/router:1"')
    cond = {c["type"]: c for c in status(s, 0, pods, router, 1, healthy,
                                         router_pods=[router_pod])["conditions"]}
    assert cond["Degraded"]["message"].startswith("pod llama-8b-router-abc, container runtime")


def test_drift_ignores_server_defaults_but_not_edits():
    s = parse(body())
    dep = next(o for o in router_objects(s) if o["kind"] == "Deployment")
    served = copy.deepcopy(dep)
    served["spec"]["progressDeadlineSeconds"] = 600
    served["spec"]["template"]["spec"]["containers"][0]["terminationMessagePath"] = "/dev/x"
    assert not drifted(dep, served)
    served["spec"]["replicas"] = 5
    assert drifted(dep, served)


def test_resources_drift_as_quantities_not_as_text():
    """The API server stores quantities in canonical form; the same amount written another
    way is no drift (it patched the router Deployment every pass), a different one is."""
    s = parse(body(router__resources={"requests": {"cpu": "0.5", "memory": "1024Mi"},
                                      "limits": {"memory": 2147483648}}))
    dep = next(o for o in router_objects(s) if o["kind"] == "Deployment")
    served = copy.deepcopy(dep)
    container = served["spec"]["template"]["spec"]["containers"][0]
    container["resources"] = {"requests": {"cpu": "500m", "memory": "1Gi"},
                              "limits": {"memory": "2Gi"}}
    assert not drifted(dep, served)
    container["resources"]["requests"]["cpu"] = "1"
    assert drifted(dep, served)
    role = next(o for o in router_objects(s) if o["kind"] == "Role")
    assert not drifted(role, copy.deepcopy(role))  # rules' resources: [pods] stay text
    changed = copy.deepcopy(role)
    changed["rules"][0]["resources"] = ["secrets"]
    assert drifted(role, changed)


def test_router_reads_the_operators_config():
    from ascendra.core.policy import Dispatch, Overload
    from ascendra.router.config import settings_from_dict

    s = parse(body(policy={"dispatch": "round-robin", "overload": "reject",
                           "offloadMarginSeconds": 0.4}, router__predictorRefitEvery=2000,
                   slo__tbtKind="max", system="vllm-shed"))
    settings = settings_from_dict(router_config(s))
    assert settings.model_name == "llama-3.1-8b" and settings.max_model_len == 8192
    assert settings.system == "vllm-shed" and settings.policy == s.policy
    p = settings.policy
    assert (p.dispatch, p.overload, p.offload_margin) == (Dispatch.ROUND_ROBIN,
                                                          Overload.REJECT, 0.4)
    assert p.order.value == "fcfs"  # vllm-shed's own, not overridden
    assert settings.slo.tbt_kind.value == "max"
    assert settings.refit_every == 2000
    d = settings.discovery
    assert d is not None and d.namespace == "default"
    assert d.selector == "ascendra.io/service=llama-8b,app.kubernetes.io/component=runtime"


def test_discovery_turns_running_pods_into_instances_and_the_pool_follows():
    from ascendra.router.discovery import instances_from_pods
    from ascendra.router.instances import InstancePool

    s = parse(body())
    pods = [ready(runtime_pod(s, i, r)) for i, r in enumerate(roles(s, 1))]
    for i, p in enumerate(pods):
        p["status"] |= {"podIP": f"10.0.0.{i + 1}"}
    pods[2]["metadata"]["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    specs = instances_from_pods(pods, 8000, 8001)
    assert [x.engine_url for x in specs] == ["http://10.0.0.1:8000", "http://10.0.0.2:8000"]
    pool = InstancePool(specs)
    pool.instances[0].healthy = pool.instances[1].healthy = True
    pool.sync(specs[1:] + instances_from_pods([{**pods[2], "metadata": {
        **pods[2]["metadata"], "deletionTimestamp": None}}], 8000, 8001))
    assert [i.url for i in pool.routable()] == ["http://10.0.0.2:8000"]
    assert [i.url for i in pool.instances if not i.removed] == [
        "http://10.0.0.2:8000", "http://10.0.0.3:8000"]


def test_the_router_finds_the_api_server_as_the_kubelet_tells_its_pod():
    """A cluster without DNS (the e2e real node has none) still reaches the API server: the
    kubelet's KUBERNETES_SERVICE_* variables win over the Service's DNS name."""
    from ascendra.router.discovery import in_cluster_url

    env = {"KUBERNETES_SERVICE_HOST": "10.96.0.1", "KUBERNETES_SERVICE_PORT": "443"}
    assert in_cluster_url(env) == "https://10.96.0.1:443"
    assert in_cluster_url({"KUBERNETES_SERVICE_HOST": "fd00::1",
                           "KUBERNETES_SERVICE_PORT": "443"}) == "https://[fd00::1]:443"
    assert in_cluster_url({}) == "https://kubernetes.default.svc"


def test_a_cpu_runtime_requests_no_gpu_and_runs_vllms_cpu_build():
    s = parse(body(runtime={"image": "ghcr.io/ascendra/runtime-cpu:0.1.0",
                            "gpusPerInstance": 0,
                            "resources": {"requests": {"cpu": "1", "memory": "2Gi"}}}))
    c = runtime_pod(s, 0, "lp")["spec"]["containers"][0]
    assert "nvidia.com/gpu" not in c["resources"]["requests"]
    assert "nvidia.com/gpu" not in c["resources"].get("limits", {})
    assert c["args"][c["args"].index("--") - 1] == "--cpu"
    assert "--tensor-parallel-size" not in c["args"]
    with pytest.raises(SpecError, match="tensorParallel must be 1"):
        parse(body(runtime={"image": "x:1", "gpusPerInstance": 0, "tensorParallel": 2}))
