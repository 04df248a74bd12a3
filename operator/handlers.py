"""Kopf wiring: every trigger runs the same level-based reconcile.

Creation, spec changes, operator (re)start and a short timer all call :func:`reconcile`, which
reads what exists, asks the pure planners what should change, does it, and writes status. So a
child deleted or edited by hand comes back within one timer period, and an operator killed
mid-pass simply converges on the next one. Deletion needs no handler: every child carries an
owner reference, and Kubernetes' garbage collector removes them with the AscendraService.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import defaultdict
from datetime import UTC, datetime
from typing import Any

import kopf
from kubernetes.client.exceptions import ApiException

from ascendra.core.request import Slo as CoreSlo
from ascendra.core.split import SplitPlan, SplitPolicy, decide_split
from ascendra.operator.autoscale import SignalError, fetch, fetch_mix
from ascendra.operator.builders import ROLE_LABEL, router_objects, runtime_selector
from ascendra.operator.kube import Kube, api_message, load_config
from ascendra.operator.monitoring import monitoring_objects
from ascendra.operator.plan import condition, plan_pods, status
from ascendra.operator.spec import GROUP, PLURAL, VERSION, ServiceSpec, SpecError, parse
from ascendra.perf import latency_model
from ascendra.sim.planner import PlannerConfig, plan_split

RECONCILE_INTERVAL = 5.0
MONITORING_PLURALS = {"ServiceMonitor": "servicemonitors", "PodMonitor": "podmonitors",
                      "PrometheusRule": "prometheusrules"}
_locks: defaultdict[str, threading.Lock] = defaultdict(threading.Lock)
_last_check: dict[str, float] = {}  # uid → when its split was last checked
_monitoring_served: list[float | bool] = [-1e9, False]  # (checked at, served)


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
    load_config()
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix="ascendra.io")
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix="ascendra.io", key="last-handled-configuration")
    # Our own Events are explicit (kopf.event/warn); log records become Events only if warnings.
    settings.posting.level = logging.WARNING
    logging.getLogger("kopf.objects").setLevel(logging.WARNING)
    settings.watching.server_timeout = 60


def _autoscale(body: kopf.Body, spec: ServiceSpec, hp: int, current: dict[str, Any],
               generation: int, previous: list[dict[str, Any]]
               ) -> tuple[int, dict[str, Any] | None, dict[str, Any]]:
    """(HP count, SloSignal condition, other status fields) after a resize check, when one is
    due. Stale or unreadable signals hold the split and say so; they never move it."""
    if not spec.autoscaling.enabled:
        return hp, None, {}
    now = time.time()
    kept = next((c for c in previous if c.get("type") == "SloSignal"), None)
    if now - _last_check.get(spec.uid, 0.0) < spec.autoscaling.interval:
        return hp, kept, {}
    _last_check[spec.uid] = now
    try:
        signals, attainment = fetch(spec)
    except SignalError as e:
        kopf.warn(body, reason="SloSignalStale", message=f"holding the split: {e}")
        return hp, condition("SloSignal", False, e.reason, f"stale; split held: {e}",
                             generation, previous), {}
    last = (current.get("lastResize") or {}).get("time")
    last_at = datetime.fromisoformat(last).timestamp() if last else None
    updates: dict[str, Any] = {}
    plan = None
    if spec.autoscaling.planner is not None:
        try:
            plan = _plan(spec)
        except SignalError as e:
            kopf.warn(body, reason="SloSignalStale", message=f"no plan this time: {e}")
        if plan is not None:
            updates["plan"] = {"predictedAttainment": {str(k): v for k, v in
                                                       plan.predicted.items()}}
    decision = decide_split(signals, hp, spec.hp_min, spec.hp_max, now, last_at,
                            SplitPolicy(cooldown=spec.autoscaling.cooldown), plan)
    if attainment is not None:
        updates["observedAttainment"] = round(attainment, 4)
    if decision.moved(hp):
        updates["lastResize"] = {"time": datetime.now(UTC).isoformat(timespec="seconds"),
                                 "from": hp, "to": decision.hp, "reason": decision.reason}
        _note(body, "SplitResized", f"HP {hp} -> {decision.hp}: {decision.reason}")
        hp = decision.hp
    fresh = condition("SloSignal", True, "Fresh", f"last check: {decision.reason}", generation,
                      previous)
    return hp, fresh, updates


def _plan(spec: ServiceSpec) -> SplitPlan | None:
    """Simulate the last window's mix on every split in bounds (a few seconds of CPU, in this
    handler's thread). None when too little traffic finished to describe the mix."""
    planner = spec.autoscaling.planner
    assert planner is not None
    mix = fetch_mix(spec)
    if mix is None:
        return None
    model = latency_model(planner.model, planner.gpu)
    return plan_split(mix, model, CoreSlo(spec.slo.ttft, spec.slo.tbt, spec.slo.tbt_kind),
                      PlannerConfig(spec.instances, spec.hp_min, spec.hp_max,
                                    planner.kv_tokens, system=spec.system, policy=spec.policy,
                                    requests=1000))


def _serves_monitoring(kube: Kube, ttl: float = 60.0) -> bool:
    """Whether the prometheus-operator CRDs exist (asked at most once a minute)."""
    checked_at, served = _monitoring_served
    if time.monotonic() - checked_at > ttl:
        served = kube.has_group("monitoring.coreos.com")
        _monitoring_served[:] = [time.monotonic(), served]
    return bool(served)


def _note(body: kopf.Body, reason: str, message: str) -> None:
    kopf.event(body, type="Normal", reason=reason, message=message)


def reconcile(body: kopf.Body, patch: kopf.Patch, logger: logging.Logger | Any,
              memo: kopf.Memo) -> None:
    with _locks[body["metadata"]["uid"]]:
        # ``memo`` carries the CLI's options (kopf.run(memo=...)); absent means the defaults.
        _reconcile(body, patch, logger, memo.get("monitoring_objects", True))


def _reconcile(body: kopf.Body, patch: kopf.Patch, logger: Any,
               monitoring: bool) -> None:
    generation = body["metadata"].get("generation", 0)
    previous = list((body.get("status") or {}).get("conditions") or [])
    try:
        spec = parse(dict(body))
    except SpecError as e:
        kopf.warn(body, reason="InvalidSpec", message=str(e))
        patch.status["observedGeneration"] = generation
        patch.status["conditions"] = [{
            "type": "Degraded", "status": "True", "reason": "InvalidSpec", "message": str(e),
            "observedGeneration": generation}]
        return
    kube = Kube()
    status_now = body.get("status") or {}
    hp = spec.clamp_hp((status_now.get("split") or {}).get("hp"))
    hp, signal, updates = _autoscale(body, spec, hp, status_now, generation, previous)
    error = None
    pods: list[dict[str, Any]] = []
    try:
        for obj in router_objects(spec):
            result = kube.apply(obj)
            if result != "unchanged":
                _note(body, f"{obj['kind']}{result.capitalize()}",
                      f"{obj['kind']} {obj['metadata']['name']} {result}")
        if monitoring and _serves_monitoring(kube):
            for obj in monitoring_objects(spec):
                result = kube.apply_custom(obj, MONITORING_PLURALS[obj["kind"]])
                if result != "unchanged":
                    _note(body, f"{obj['kind']}{result.capitalize()}",
                          f"{obj['kind']} {obj['metadata']['name']} {result}")
        pods = kube.list_pods(spec.namespace, runtime_selector(spec))
        plan = plan_pods(spec, hp, pods)
        for pod in plan.create:
            if kube.create_pod(pod):
                meta = pod["metadata"]
                _note(body, "PodCreated",
                      f"runtime pod {meta['name']} ({meta['labels'][ROLE_LABEL]})")
        for name, role in plan.relabel.items():
            kube.set_role(name, spec.namespace, role)
            _note(body, "RoleChanged", f"{name} is now {role.upper()} (label flip, no restart)")
        for name in plan.delete:
            kube.delete_pod(name, spec.namespace)
            _note(body, "PodDeleted", f"runtime pod {name} replaced or removed")
        if not plan.empty:
            pods = kube.list_pods(spec.namespace, runtime_selector(spec))
        router = kube.get_deployment(f"{spec.name}-router", spec.namespace)
    except Exception as e:  # reported in status and Events, never a crash loop
        error = (f"{e.status} {e.reason}: {api_message(e)}" if isinstance(e, ApiException)
                 else f"{e.__class__.__name__}: {e}")
        router = None
        kopf.warn(body, reason="ReconcileError", message=error)
        logger.warning("reconcile of %s/%s failed: %s", spec.namespace, spec.name, error)
    patch.status.update(status(spec, hp, pods, router, generation, previous, error,
                               [signal] if signal else []))
    patch.status.update(updates)


@kopf.on.create(GROUP, VERSION, PLURAL)
@kopf.on.update(GROUP, VERSION, PLURAL)
@kopf.on.resume(GROUP, VERSION, PLURAL)
def on_change(body: kopf.Body, patch: kopf.Patch, logger: Any, memo: kopf.Memo,
              **_: Any) -> None:
    reconcile(body, patch, logger, memo)


@kopf.timer(GROUP, VERSION, PLURAL, interval=RECONCILE_INTERVAL, initial_delay=1.0)
def on_timer(body: kopf.Body, patch: kopf.Patch, logger: Any, memo: kopf.Memo,
             **_: Any) -> None:
    reconcile(body, patch, logger, memo)
