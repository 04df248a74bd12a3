"""Pure builders: an AscendraService spec in, the Kubernetes objects it owns out (plain dicts).

Nothing here talks to the API server, so every object is unit-tested as data. Runtime pods are
managed one by one (not by a StatefulSet) because each carries its own LP/HP role label, which
the operator flips in place; the role is excluded from the pod's template hash, so a flip never
replaces a pod.
"""

from __future__ import annotations

import copy
import hashlib
import json
from typing import Any

from kubernetes.utils.quantity import parse_quantity

from ascendra.operator.spec import GROUP, KIND, VERSION, ServiceSpec, model_mount_dir

ENGINE_PORT, AGENT_PORT = 8000, 8001
ROLE_LABEL = "ascendra.io/role"
INDEX_LABEL = "ascendra.io/index"
SERVICE_LABEL = "ascendra.io/service"
HASH_ANNOTATION = "ascendra.io/template-hash"
MANAGED_BY = {"app.kubernetes.io/managed-by": "ascendra-operator"}

# Every pod the operator creates meets the restricted Pod Security Standard: a non-root user
# (the images' own, uid 10001), no privilege escalation, no capabilities, the runtime's default
# seccomp profile, and a read-only root filesystem with emptyDirs where the processes write.
RUN_AS = 10001
POD_SECURITY: dict[str, Any] = {"runAsNonRoot": True, "runAsUser": RUN_AS, "runAsGroup": RUN_AS,
                                "fsGroup": RUN_AS, "seccompProfile": {"type": "RuntimeDefault"}}
CONTAINER_SECURITY: dict[str, Any] = {"allowPrivilegeEscalation": False,
                                      "readOnlyRootFilesystem": True,
                                      "capabilities": {"drop": ["ALL"]}}
# The runtime's HOME: vLLM, torch and Triton keep their compile caches and config below it.
RUNTIME_HOME = "/home/ascendra"


def labels(spec: ServiceSpec, component: str) -> dict[str, str]:
    return {"app.kubernetes.io/name": "ascendra", "app.kubernetes.io/instance": spec.name,
            "app.kubernetes.io/component": component, SERVICE_LABEL: spec.name, **MANAGED_BY}


def runtime_selector(spec: ServiceSpec) -> str:
    return f"{SERVICE_LABEL}={spec.name},app.kubernetes.io/component=runtime"


def router_selector(spec: ServiceSpec) -> str:
    return f"{SERVICE_LABEL}={spec.name},app.kubernetes.io/component=router"


def owner(spec: ServiceSpec) -> dict[str, Any]:
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": KIND, "name": spec.name,
            "uid": spec.uid, "controller": True, "blockOwnerDeletion": True}


def _meta(spec: ServiceSpec, name: str, component: str, **extra: Any) -> dict[str, Any]:
    return {"name": name, "namespace": spec.namespace, "labels": labels(spec, component),
            "ownerReferences": [owner(spec)], **extra}


def roles(spec: ServiceSpec, hp: int) -> list[str]:
    """Role of each instance index: the last ``hp`` indexes are HP, so growing or shrinking the
    HP share flips the fewest pods."""
    return ["hp" if i >= spec.instances - hp else "lp" for i in range(spec.instances)]


def runtime_pod_name(spec: ServiceSpec, index: int) -> str:
    return f"{spec.name}-runtime-{index}"


def _model_volume(spec: ServiceSpec) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    if not spec.model_volume:
        return [], []
    parent = model_mount_dir(spec.model_path)  # never / (spec.parse refuses it)
    return ([{"name": "model", **spec.model_volume}],
            [{"name": "model", "mountPath": parent, "readOnly": True}])


def _runtime_pod_spec(spec: ServiceSpec) -> dict[str, Any]:
    # Quantities as strings: that is how the API returns them, and what clients validate.
    resources: dict[str, dict[str, Any]] = {
        k: {r: str(q) for r, q in v.items()} for k, v in spec.resources.items()}
    if spec.gpus:
        for kind in ("requests", "limits"):
            resources.setdefault(kind, {})[spec.gpu_resource] = str(spec.gpus)
    volumes, mounts = _model_volume(spec)
    args = ["runtime", "--system", spec.system, "--model", spec.model_path,
            "--served-model-name", spec.model_name,
            "--host", "0.0.0.0", "--port", str(ENGINE_PORT), "--agent-host", "0.0.0.0",
            "--agent-port", str(AGENT_PORT), "--role-file", "/etc/podinfo/labels",
            "--max-model-len", str(spec.max_model_len),
            *(["--", "--tensor-parallel-size", str(spec.tensor_parallel)] if spec.gpus
              else ["--cpu", "--"]), *spec.args]
    env = [{"name": k, "value": v} for k, v in spec.env]
    if not any(k == "HOME" for k, _ in spec.env):
        env.append({"name": "HOME", "value": RUNTIME_HOME})
    shm: dict[str, Any] = {"medium": "Memory"}
    if spec.shm_size is not None:
        shm["sizeLimit"] = spec.shm_size
    pod: dict[str, Any] = {
        "restartPolicy": "Always",
        "terminationGracePeriodSeconds": 60,
        "securityContext": copy.deepcopy(POD_SECURITY),
        "containers": [{
            "name": "runtime",
            "image": spec.image,
            "imagePullPolicy": spec.image_pull_policy,
            "args": args,
            "ports": [{"name": "http", "containerPort": ENGINE_PORT, "protocol": "TCP"},
                      {"name": "agent", "containerPort": AGENT_PORT, "protocol": "TCP"}],
            "env": env,
            "resources": resources,
            "securityContext": copy.deepcopy(CONTAINER_SECURITY),
            "readinessProbe": {"httpGet": {"path": "/health", "port": "agent"},
                               "periodSeconds": 5, "failureThreshold": 3},
            "volumeMounts": [{"name": "podinfo", "mountPath": "/etc/podinfo"},
                             {"name": "dshm", "mountPath": "/dev/shm"},
                             {"name": "tmp", "mountPath": "/tmp"},
                             {"name": "home", "mountPath": RUNTIME_HOME}, *mounts],
        }],
        "volumes": [
            # The agent reads its role from here; the kubelet refreshes it after a label flip.
            {"name": "podinfo", "downwardAPI": {"items": [
                {"path": "labels", "fieldRef": {"fieldPath": "metadata.labels"}}]}},
            {"name": "dshm", "emptyDir": shm},
            {"name": "tmp", "emptyDir": {}},
            {"name": "home", "emptyDir": {}},
            *volumes,
        ],
    }
    if spec.node_selector:
        pod["nodeSelector"] = dict(spec.node_selector)
    if spec.tolerations:
        pod["tolerations"] = [dict(t) for t in spec.tolerations]
    if spec.affinity:
        pod["affinity"] = spec.affinity
    return pod


def template_hash(pod_spec: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(pod_spec, sort_keys=True).encode()).hexdigest()[:16]


def runtime_pod(spec: ServiceSpec, index: int, role: str) -> dict[str, Any]:
    pod_spec = _runtime_pod_spec(spec)
    meta = _meta(spec, runtime_pod_name(spec, index), "runtime",
                 annotations={HASH_ANNOTATION: template_hash(pod_spec)})
    meta["labels"] |= {INDEX_LABEL: str(index), ROLE_LABEL: role}
    return {"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": pod_spec}


def router_config(spec: ServiceSpec) -> dict[str, Any]:
    """What the router reads from its ConfigMap (``ascendra router --config``)."""
    return {
        "model_name": spec.model_name,
        "tokenizer": spec.model_path,
        "max_model_len": spec.max_model_len,
        "slo": {"ttft": spec.slo.ttft, "tbt": spec.slo.tbt,
                "tbtKind": spec.slo.tbt_kind.value},
        "system": spec.system,
        "policy": spec.policy.as_mapping(),
        "predictor": {"refit_every": spec.predictor_refit_every},
        "discovery": {"namespace": spec.namespace, "selector": runtime_selector(spec),
                      "engine_port": ENGINE_PORT, "agent_port": AGENT_PORT},
    }


# Prometheus as the prometheus-operator labels its pods, in any namespace: it scrapes the
# engines' and agents' /metrics (monitoring_objects).
PROMETHEUS_PEER = {"namespaceSelector": {},
                   "podSelector": {"matchLabels": {"app.kubernetes.io/name": "prometheus"}}}
OPERATOR_PEER = {"namespaceSelector": {},
                 "podSelector": {"matchLabels": {"app.kubernetes.io/name": "ascendra-operator"}}}


def runtime_policy(spec: ServiceSpec) -> dict[str, Any]:
    """Engines and agents take connections from this service's routers, the operator and
    Prometheus only: an engine serves anyone who reaches it, with no key and no queue."""
    return {
        "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
        "metadata": _meta(spec, f"{spec.name}-runtime", "runtime"),
        "spec": {
            "podSelector": {"matchLabels": {SERVICE_LABEL: spec.name,
                                            "app.kubernetes.io/component": "runtime"}},
            "policyTypes": ["Ingress"],
            "ingress": [{"from": [
                {"podSelector": {"matchLabels": {SERVICE_LABEL: spec.name,
                                                 "app.kubernetes.io/component": "router"}}},
                OPERATOR_PEER, PROMETHEUS_PEER]}],
        },
    }


def _credential_env(spec: ServiceSpec) -> list[dict[str, Any]]:
    """The router's client keys and admin token, from the Secrets the service names (the
    kubelet reads them; the router's own Role grants no access to Secrets)."""
    env = []
    for name, ref in (("ASCENDRA_API_KEYS", spec.router_api_keys),
                      ("ASCENDRA_ADMIN_TOKEN", spec.router_admin_token)):
        if ref is not None:
            env.append({"name": name, "valueFrom": {"secretKeyRef": {"name": ref[0],
                                                                      "key": ref[1]}}})
    return env


def router_objects(spec: ServiceSpec) -> list[dict[str, Any]]:
    """The router's ServiceAccount, least-privilege Role and binding, ConfigMap, Deployment and
    Service, plus the runtime pods' NetworkPolicy and headless Service."""
    name = f"{spec.name}-router"
    router_labels = labels(spec, "router")
    volumes, mounts = _model_volume(spec)
    deployment = {
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": _meta(spec, name, "router"),
        "spec": {
            "replicas": spec.router_replicas,
            "selector": {"matchLabels": {SERVICE_LABEL: spec.name,
                                         "app.kubernetes.io/component": "router"}},
            "template": {
                "metadata": {"labels": router_labels,
                             "annotations": {"ascendra.io/config-hash":
                                             template_hash(router_config(spec))}},
                "spec": {
                    "serviceAccountName": name,
                    "securityContext": copy.deepcopy(POD_SECURITY),
                    "containers": [{
                        "name": "router", "image": spec.router_image,
                        "args": ["router", "--config", "/etc/ascendra/router.json",
                                 "--host", "0.0.0.0", "--port", str(spec.router_port)],
                        "ports": [{"name": "http", "containerPort": spec.router_port,
                                   "protocol": "TCP"}],
                        "readinessProbe": {"httpGet": {"path": "/health", "port": "http"},
                                           "periodSeconds": 5},
                        "env": _credential_env(spec),
                        "resources": spec.router_resources,
                        "securityContext": copy.deepcopy(CONTAINER_SECURITY),
                        "volumeMounts": [{"name": "config", "mountPath": "/etc/ascendra"},
                                         {"name": "tmp", "mountPath": "/tmp"}, *mounts],
                    }],
                    "volumes": [{"name": "config", "configMap": {"name": name}},
                                {"name": "tmp", "emptyDir": {}}, *volumes],
                },
            },
        },
    }
    return [
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": _meta(spec, name, "router")},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
         "metadata": _meta(spec, name, "router"),
         # The router only discovers its runtime pods; it never writes to the API.
         "rules": [{"apiGroups": [""], "resources": ["pods"],
                    "verbs": ["get", "list", "watch"]}]},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
         "metadata": _meta(spec, name, "router"),
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
         "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": spec.namespace}]},
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": _meta(spec, name, "router"),
         "data": {"router.json": json.dumps(router_config(spec), indent=1, sort_keys=True)}},
        deployment,
        {"apiVersion": "v1", "kind": "Service", "metadata": _meta(spec, name, "router"),
         "spec": {"type": spec.router_service_type,
                  "selector": {SERVICE_LABEL: spec.name, "app.kubernetes.io/component": "router"},
                  "ports": [{"name": "http", "port": spec.router_port,
                             "targetPort": "http", "protocol": "TCP"}]}},
        runtime_policy(spec),
        {"apiVersion": "v1", "kind": "Service",
         "metadata": _meta(spec, f"{spec.name}-runtime", "runtime"),
         "spec": {"clusterIP": "None",
                  "selector": {SERVICE_LABEL: spec.name,
                               "app.kubernetes.io/component": "runtime"},
                  "ports": [{"name": "http", "port": ENGINE_PORT, "targetPort": "http",
                             "protocol": "TCP"},
                            {"name": "agent", "port": AGENT_PORT, "targetPort": "agent",
                             "protocol": "TCP"}]}},
    ]


def drifted(desired: Any, actual: Any, quantities: bool = False) -> bool:
    """True when ``actual`` lacks something ``desired`` sets (server defaults may add more).
    Under a ``resources`` key, strings compare as quantities: the API server stores
    ``cpu: "0.5"`` as ``500m`` and ``1024Mi`` as ``1Gi``, and comparing text patched the
    Deployment (and posted an Event) on every pass."""
    if desired in ({}, [], "", None) and actual in ({}, [], "", None):
        return False  # the API server drops empty fields
    if isinstance(desired, dict):
        return not isinstance(actual, dict) or any(
            drifted(v, actual.get(k), quantities or k == "resources")
            for k, v in desired.items())
    if isinstance(desired, list):
        return not isinstance(actual, list) or len(desired) != len(actual) or any(
            drifted(d, a, quantities) for d, a in zip(desired, actual, strict=True))
    if quantities and isinstance(desired, str | int | float) and isinstance(actual, str):
        try:
            return parse_quantity(desired) != parse_quantity(actual)
        except ValueError:
            pass  # not quantities (a Role's resources: [pods]): compared as text
    return str(desired) != str(actual) if isinstance(desired, int | float) else desired != actual
