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
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import kopf
from kubernetes.client.exceptions import ApiException

from ascendra.core.request import Slo as CoreSlo
from ascendra.core.split import SplitPlan, SplitPolicy, decide_split
from ascendra.operator.autoscale import SignalError, check_url, fetch, fetch_mix
from ascendra.operator.builders import (
    ROLE_LABEL,
    router_objects,
    router_selector,
    runtime_selector,
)
from ascendra.operator.kube import Kube, api_message, load_config
from ascendra.operator.monitoring import monitoring_objects
from ascendra.operator.plan import condition, degraded_news, plan_pods, status
from ascendra.operator.spec import GROUP, PLURAL, VERSION, ServiceSpec, SpecError, parse
from ascendra.perf import latency_model
from ascendra.sim.planner import PlannerConfig, plan_split

RECONCILE_INTERVAL = 5.0
MONITORING_PLURALS = {"ServiceMonitor": "servicemonitors", "PodMonitor": "podmonitors",
                      "PrometheusRule": "prometheusrules"}
_locks: defaultdict[str, threading.Lock] = defaultdict(threading.Lock)
_monitoring_served: list[float | bool] = [-1e9, False]  # (checked at, served)


@dataclass(frozen=True)
class OperatorOptions:
    """What ``ascendra operator`` was started with (kopf.run(memo=...)); absent: these."""
    monitoring_objects: bool = True
    prometheus_origins: tuple[str, ...] = ()  # what autoscaling.prometheusUrl may name


@dataclass(frozen=True)
class WrittenSplit:
    """The split this operator last wrote for one service, kept in its kopf memo. The operator
    is the split's one writer, and its own status patch reaches the body a handler is given
    only once the watch brings it back: a reconcile that read the split from an older body
    wrote the older split back (a resize lost, then made again one cooldown later)."""
    hp: int
    resized_at: float | None
    checked_at: float  # when the SLO signals were last read


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


def _autoscale(body: kopf.Body, spec: ServiceSpec, options: OperatorOptions,
               split: WrittenSplit, generation: int, previous: list[dict[str, Any]]
               ) -> tuple[WrittenSplit, dict[str, Any] | None, dict[str, Any]]:
    """(the split after a resize check, when one is due; SloSignal condition; other status
    fields). Stale or unreadable signals hold the split and say so; they never move it."""
    if not spec.autoscaling.enabled:
        return split, None, {}
    now = time.time()
    kept = next((c for c in previous if c.get("type") == "SloSignal"), None)
    if now - split.checked_at < spec.autoscaling.interval:
        return split, kept, {}
    hp, resized_at = split.hp, split.resized_at
    try:
        check_url(spec, options.prometheus_origins)
        signals, attainment = fetch(spec)
    except SignalError as e:
        kopf.warn(body, reason="SloSignalStale", message=f"holding the split: {e}")
        return WrittenSplit(hp, resized_at, now), condition(
            "SloSignal", False, e.reason, f"stale; split held: {e}", generation, previous), {}
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
    decision = decide_split(signals, hp, spec.hp_min, spec.hp_max, now, resized_at,
                            SplitPolicy(cooldown=spec.autoscaling.cooldown), plan)
    if attainment is not None:
        updates["observedAttainment"] = round(attainment, 4)
    if decision.moved(hp):
        updates["lastResize"] = {"time": datetime.fromtimestamp(now, UTC).isoformat(
            timespec="seconds"), "from": hp, "to": decision.hp, "reason": decision.reason}
        _note(body, "SplitResized", f"HP {hp} -> {decision.hp}: {decision.reason}")
        hp, resized_at = decision.hp, now
    fresh = condition("SloSignal", True, "Fresh", f"last check: {decision.reason}", generation,
                      previous)
    return WrittenSplit(hp, resized_at, now), fresh, updates


def _split_from_status(spec: ServiceSpec, status: dict[str, Any]) -> WrittenSplit:
    """The split as status says it (after an operator restart: nothing of ours in flight)."""
    last = (status.get("lastResize") or {}).get("time")
    return WrittenSplit(spec.clamp_hp((status.get("split") or {}).get("hp")),
                        datetime.fromisoformat(last).timestamp() if last else None, 0.0)


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
        _reconcile(body, patch, logger, memo)


def _reconcile(body: kopf.Body, patch: kopf.Patch, logger: Any, memo: kopf.Memo) -> None:
    # kopf gives each object its own shallow copy of the CLI's memo (kopf.run(memo=...)).
    options: OperatorOptions = memo.get("options") or OperatorOptions()
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
    written: WrittenSplit | None = memo.get("split")
    split = (WrittenSplit(spec.clamp_hp(written.hp), written.resized_at, written.checked_at)
             if written else _split_from_status(spec, body.get("status") or {}))
    split, signal, updates = _autoscale(body, spec, options, split, generation, previous)
    memo["split"] = split
    hp = split.hp
    error = None
    pods: list[dict[str, Any]] = []
    router_pods: list[dict[str, Any]] = []
    try:
        for obj in router_objects(spec):
            result = kube.apply(obj)
            if result != "unchanged":
                _note(body, f"{obj['kind']}{result.capitalize()}",
                      f"{obj['kind']} {obj['metadata']['name']} {result}")
        if options.monitoring_objects and _serves_monitoring(kube):
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
        router_pods = kube.list_pods(spec.namespace, router_selector(spec))
    except Exception as e:  # reported in status and Events, never a crash loop
        error = (f"{e.status} {e.reason}: {api_message(e)}" if isinstance(e, ApiException)
                 else f"{e.__class__.__name__}: {e}")
        router = None
        kopf.warn(body, reason="ReconcileError", message=error)
        logger.warning("reconcile of %s/%s failed: %s", spec.namespace, spec.name, error)
    new_status = status(spec, hp, pods, router, generation, previous, error,
                        [signal] if signal else [], router_pods)
    news = degraded_news(previous, new_status["conditions"])
    if news is not None and news["reason"] in ("PodFailing", "Unschedulable"):
        kopf.warn(body, reason=news["reason"], message=news["message"])
    patch.status.update(new_status)
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
