"""The router's settings file (written by the operator into a ConfigMap)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ascendra.core.request import Slo
from ascendra.errors import AscendraError
from ascendra.router.app import RouterSettings
from ascendra.router.control import ControlConfig
from ascendra.router.discovery import KubernetesDiscovery


def settings_from_dict(cfg: dict[str, Any]) -> RouterSettings:
    try:
        policy, slo, disc = cfg.get("policy", {}), cfg.get("slo", {}), cfg.get("discovery")
        control = ControlConfig(
            dispatch=policy.get("dispatch", "round-robin"),
            margin=float(policy.get("margin", 0.7)),
            migrate=bool(policy.get("migration", True)),
            offload_guard=bool(policy.get("offload_guard", True)),
            ticket_step_fraction=float(policy.get("ticket_step_fraction", 0.5)) or None)
        discovery = KubernetesDiscovery(
            disc["namespace"], disc["selector"], int(disc["engine_port"]),
            int(disc["agent_port"]), float(disc.get("interval", 5.0)),
            disc.get("kubeconfig")) if disc else None
        learn = cfg.get("predictor", {})
        return RouterSettings(
            model_name=str(cfg["model_name"]), tokenizer=str(cfg["tokenizer"]),
            max_model_len=int(cfg["max_model_len"]), instances=[],
            slo=Slo(float(slo.get("ttft", 1.0)), float(slo.get("tbt", 0.15))),
            control=control, discovery=discovery,
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
