"""The router's settings file (written by the operator into a ConfigMap).

``system`` names a registry entry (its engines and its policy); ``policy`` overrides that
policy field by field, with the same camelCase keys as the CRD's ``policy`` block, parsed by the
same table (:data:`ascendra.core.policy.FIELDS`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ascendra.core.policy import parse_policy
from ascendra.core.request import Slo, TbtKind
from ascendra.core.systems import system
from ascendra.errors import AscendraError
from ascendra.router.app import RouterSettings
from ascendra.router.discovery import KubernetesDiscovery


def slo_from_dict(raw: dict[str, Any], where: str = "slo") -> Slo:
    try:
        kind = TbtKind(raw.get("tbtKind", "mean"))
    except ValueError:
        raise AscendraError(f"{where}.tbtKind: {raw.get('tbtKind')!r} is not one of "
                            f"{', '.join(k.value for k in TbtKind)}") from None
    return Slo(float(raw.get("ttft", 1.0)), float(raw.get("tbt", 0.15)), kind)


def settings_from_dict(cfg: dict[str, Any]) -> RouterSettings:
    name = str(cfg.get("system", "ascendra"))
    spec = system(name)
    if not spec.deployable:
        raise AscendraError(f"router config: system {name!r} runs in the simulator only")
    policy = parse_policy(cfg.get("policy") or {}, base=spec.policy, where="policy")
    try:
        disc = cfg.get("discovery")
        discovery = KubernetesDiscovery(
            disc["namespace"], disc["selector"], int(disc["engine_port"]),
            int(disc["agent_port"]), float(disc.get("interval", 5.0)),
            disc.get("kubeconfig")) if disc else None
        learn = cfg.get("predictor", {})
        return RouterSettings(
            model_name=str(cfg["model_name"]), tokenizer=str(cfg["tokenizer"]),
            max_model_len=int(cfg["max_model_len"]), instances=[],
            slo=slo_from_dict(cfg.get("slo", {})), system=name, policy=policy,
            discovery=discovery,
            predictor=Path(learn["path"]) if learn.get("path") else None,
            refit_every=int(learn.get("refit_every", 0)))
    except (KeyError, TypeError, ValueError) as e:
        raise AscendraError(f"router config: missing or invalid field: {e}") from None


def load_settings(path: str | Path) -> RouterSettings:
    try:
        cfg = json.loads(Path(path).read_text())
    except (OSError, ValueError) as e:
        raise AscendraError(f"router config {path}: {e}") from None
    if not isinstance(cfg, dict):
        raise AscendraError(f"router config {path}: not a JSON object")
    return settings_from_dict(cfg)
