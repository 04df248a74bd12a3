"""The AscendraService spec as typed objects, with the checks the CRD schema cannot make.

The API server already applied the schema's defaults and CEL rules; what reaches the operator is
checked again here only for what CEL cannot express (resource quantities, label values). A
violation is a :class:`SpecError`, which the operator reports as a Degraded condition and an
Event rather than acting on it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from ascendra.core.policy import Policy, PolicyError, parse_policy
from ascendra.core.request import TbtKind
from ascendra.core.systems import SYSTEMS, system
from ascendra.perf.hardware import GPUS, ModelShape

GROUP, VERSION, PLURAL, KIND = "ascendra.io", "v1alpha1", "ascendraservices", "AscendraService"
_QUANTITY = re.compile(r"^[+]?([0-9]+(\.[0-9]*)?|\.[0-9]+)([eE][-+]?[0-9]+|[numkMGTPE]i?|Ki)?$")
# Its children include a Service, whose name must be an RFC 1035 label: checked before any child
# exists (a dotted name used to pass, and fail at the Service after five children were made).
_DNS_LABEL = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
# What a model is served from; the CRD admits these only (a hostPath would hand a namespace
# user the node's filesystem), each one the restricted Pod Security Standard allows (an NFS
# share is mounted through a PersistentVolume and its claim). Checked here too, for an older
# CRD still installed.
MODEL_VOLUME_SOURCES = ("persistentVolumeClaim", "csi", "image", "ephemeral")
_EXTENDED_RESOURCE = re.compile(
    r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)+/[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$")
_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")


class SpecError(ValueError):
    """An AscendraService that passed the schema but cannot be realised."""


@dataclass(frozen=True)
class Slo:
    ttft: float = 1.0
    tbt: float = 0.15
    attainment: float = 0.9
    tbt_kind: TbtKind = TbtKind.MEAN


@dataclass(frozen=True)
class Planner:
    """The latency model the split planner simulates with: a shipped model shape on a GPU."""
    model: str
    gpu: str
    kv_tokens: int  # per instance


@dataclass(frozen=True)
class Autoscaling:
    enabled: bool = False
    prometheus_url: str | None = None
    interval: int = 30
    cooldown: int = 300
    planner: Planner | None = None


@dataclass(frozen=True)
class ServiceSpec:
    name: str
    namespace: str
    uid: str
    model_name: str
    model_path: str
    max_model_len: int
    image: str
    image_pull_policy: str = "IfNotPresent"
    args: tuple[str, ...] = ()
    env: tuple[tuple[str, str], ...] = ()
    resources: dict[str, dict[str, Any]] = field(default_factory=dict)
    gpus: int = 1
    gpu_resource: str = "nvidia.com/gpu"  # the device plugin's extended resource
    shm_size: str | None = None  # the limit of the engine's memory-backed /dev/shm
    tensor_parallel: int = 1
    model_volume: dict[str, Any] | None = None
    node_selector: dict[str, str] = field(default_factory=dict)
    tolerations: tuple[dict[str, Any], ...] = ()
    affinity: dict[str, Any] | None = None
    slo: Slo = field(default_factory=Slo)
    instances: int = 3
    hp_min: int = 0
    hp_max: int = 0
    hp_initial: int = 0
    system: str = "ascendra"  # the registry's name: engine arguments and the policy's base
    policy: Policy = field(default_factory=Policy)
    predictor_refit_every: int = 0
    autoscaling: Autoscaling = field(default_factory=Autoscaling)
    router_image: str = "ghcr.io/ascendra/operator:0.1.0"
    router_replicas: int = 1
    router_port: int = 8000
    router_service_type: str = "ClusterIP"
    router_resources: dict[str, Any] = field(default_factory=dict)
    # (Secret name, key) of the client API keys (comma-separated) and of the admin token
    router_api_keys: tuple[str, str] | None = None
    router_admin_token: tuple[str, str] | None = None

    def clamp_hp(self, hp: int | None) -> int:
        """An HP count within the bounds (the initial one when there is none yet)."""
        value = self.hp_initial if hp is None else hp
        return max(self.hp_min, min(self.hp_max, value))


def _get(d: dict[str, Any], *path: str, default: Any = None) -> Any:
    for key in path:
        if not isinstance(d, dict) or key not in d:
            return default
        d = d[key]
    return d


def _planner(raw: dict[str, Any] | None) -> Planner | None:
    if not raw:
        return None
    model, gpu_name = str(raw.get("model", "")), str(raw.get("gpu", "h100")).lower()
    try:
        ModelShape.builtin(model)
    except ValueError:
        raise SpecError(f"autoscaling.planner.model: {model!r} is not a model shape Ascendra "
                        "ships (known: llama-3.1-8b)") from None
    if gpu_name not in GPUS:
        raise SpecError(f"autoscaling.planner.gpu: {gpu_name!r} is not one of "
                        f"{', '.join(GPUS)}")
    return Planner(model, gpu_name, int(raw.get("kvTokensPerInstance", 451_840)))


def model_mount_dir(model_path: str) -> str:
    """Where ``model.volume`` is mounted: the folder that holds the model's."""
    return model_path.rstrip("/").rsplit("/", 1)[0]


def parse(body: dict[str, Any]) -> ServiceSpec:
    meta, spec = body.get("metadata", {}), body.get("spec") or {}
    hp = _get(spec, "pool", "hp", default={}) or {}
    hp_min, hp_max = int(hp.get("min", 0)), int(hp.get("max", 0))
    resources = _get(spec, "runtime", "resources", default={}) or {}
    router_resources = _get(spec, "router", "resources", default={}) or {}
    for section, given in (("runtime", resources), ("router", router_resources)):
        for kind in ("requests", "limits"):
            for res, qty in (given.get(kind) or {}).items():
                if not _QUANTITY.match(str(qty)):
                    raise SpecError(f"{section}.resources.{kind}.{res}: {qty!r} is not a "
                                    "quantity")
    name = meta.get("name", "")
    if len(name) > 40:
        raise SpecError(f"name {name!r} is longer than 40 characters; child names would not fit")
    if not _DNS_LABEL.match(name):
        raise SpecError(f"name {name!r} must be lowercase letters, digits and '-', start with a "
                        f"letter and end with a letter or digit (its Service's name)")
    shm_size = _get(spec, "runtime", "shmSize")
    if shm_size is not None and not _QUANTITY.match(str(shm_size)):
        raise SpecError(f"runtime.shmSize: {shm_size!r} is not a quantity")
    gpu_resource = str(_get(spec, "runtime", "gpuResource", default="nvidia.com/gpu"))
    if not _EXTENDED_RESOURCE.match(gpu_resource):
        raise SpecError(f"runtime.gpuResource: {gpu_resource!r} is not an extended resource "
                        "name (domain/name, as a device plugin advertises it)")
    if any(gpu_resource in (resources.get(kind) or {}) for kind in ("requests", "limits")):
        raise SpecError(f"runtime.resources: set {gpu_resource} with runtime.gpusPerInstance")
    gpus = int(_get(spec, "runtime", "gpusPerInstance", default=1))
    tensor_parallel = int(_get(spec, "runtime", "tensorParallel", default=1))
    if gpus == 0 and tensor_parallel != 1:
        raise SpecError("runtime.tensorParallel: a CPU runtime (gpusPerInstance 0) runs one "
                        "engine process; tensorParallel must be 1")
    model_path, model_volume = _get(spec, "model", "path"), _get(spec, "model", "volume")
    if model_volume is not None and (not isinstance(model_volume, dict) or len(model_volume) != 1
                                     or next(iter(model_volume)) not in MODEL_VOLUME_SOURCES):
        given = ", ".join(model_volume) if isinstance(model_volume, dict) else repr(model_volume)
        raise SpecError(f"model.volume must be exactly one of {', '.join(MODEL_VOLUME_SOURCES)}"
                        f", got {given}")
    if model_volume and (not str(model_path).startswith("/")
                         or model_mount_dir(str(model_path)) == ""):
        raise SpecError(f"model.path: {model_path!r} must be an absolute path below a folder "
                        f"(model.volume is mounted at its parent, which must not be /)")
    node_selector = dict(_get(spec, "placement", "nodeSelector", default={}) or {})
    for key, value in node_selector.items():
        if not _LABEL_VALUE.match(str(value)):
            raise SpecError(f"placement.nodeSelector.{key}: {value!r} is not a label value")
    auto = spec.get("autoscaling") or {}
    planner = _planner(auto.get("planner"))
    system_name = str(spec.get("system", "ascendra"))
    if system_name not in SYSTEMS or not SYSTEMS[system_name].deployable:
        raise SpecError(f"system: {system_name!r} is not a system that runs on vLLM")
    try:
        policy = parse_policy(spec.get("policy") or {}, base=system(system_name).policy)
        tbt_kind = TbtKind(_get(spec, "slo", "tbtKind", default="mean"))
    except PolicyError as e:
        raise SpecError(str(e)) from None
    except ValueError:
        raise SpecError(f"slo.tbtKind: {_get(spec, 'slo', 'tbtKind')!r} is not one of "
                        f"{', '.join(k.value for k in TbtKind)}") from None
    return ServiceSpec(
        name=name, namespace=meta.get("namespace", "default"), uid=meta.get("uid", ""),
        model_name=_get(spec, "model", "name"), model_path=model_path,
        max_model_len=int(_get(spec, "model", "maxModelLen", default=8192)),
        model_volume=model_volume,
        image=_get(spec, "runtime", "image"),
        image_pull_policy=_get(spec, "runtime", "imagePullPolicy", default="IfNotPresent"),
        args=tuple(_get(spec, "runtime", "args", default=[]) or ()),
        env=tuple((e["name"], str(e.get("value", "")))
                  for e in (_get(spec, "runtime", "env", default=[]) or ())),
        resources={k: dict(v) for k, v in resources.items() if v},
        gpus=gpus,
        gpu_resource=gpu_resource, shm_size=None if shm_size is None else str(shm_size),
        tensor_parallel=tensor_parallel,
        node_selector=node_selector,
        tolerations=tuple(_get(spec, "placement", "tolerations", default=[]) or ()),
        affinity=_get(spec, "placement", "affinity"),
        slo=Slo(float(_get(spec, "slo", "ttftSeconds", default=1.0)),
                float(_get(spec, "slo", "tbtSeconds", default=0.15)),
                float(_get(spec, "slo", "attainmentTarget", default=0.9)), tbt_kind),
        instances=int(_get(spec, "pool", "instances", default=3)),
        hp_min=hp_min, hp_max=hp_max, hp_initial=int(hp.get("initial", hp_min)),
        system=system_name, policy=policy,
        predictor_refit_every=int(_get(spec, "router", "predictorRefitEvery", default=0)),
        autoscaling=Autoscaling(bool(auto.get("enabled", False)), auto.get("prometheusUrl"),
                                int(auto.get("intervalSeconds", 30)),
                                int(auto.get("cooldownSeconds", 300)), planner),
        router_image=_get(spec, "router", "image", default="ghcr.io/ascendra/operator:0.1.0"),
        router_replicas=int(_get(spec, "router", "replicas", default=1)),
        router_port=int(_get(spec, "router", "port", default=8000)),
        router_service_type=_get(spec, "router", "serviceType", default="ClusterIP"),
        router_resources=dict(router_resources),
        router_api_keys=_secret_ref(spec, "apiKeysSecret", "api-keys"),
        router_admin_token=_secret_ref(spec, "adminTokenSecret", "admin-token"),
    )


def _secret_ref(spec: dict[str, Any], field_name: str, default_key: str) -> tuple[str, str] | None:
    ref = _get(spec, "router", field_name)
    if ref is None:
        return None
    return str(ref["name"]), str(ref.get("key", default_key))
