"""Pure decisions of a reconcile pass: which pods to create, replace, delete or relabel, and what
the status says. The handlers execute these plans; tests check them as data."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from ascendra.operator.builders import (
    HASH_ANNOTATION,
    INDEX_LABEL,
    ROLE_LABEL,
    roles,
    runtime_pod,
)
from ascendra.operator.spec import ServiceSpec


@dataclass
class PodPlan:
    create: list[dict[str, Any]] = field(default_factory=list)
    delete: list[str] = field(default_factory=list)  # pod names
    relabel: dict[str, str] = field(default_factory=dict)  # pod name → new role

    @property
    def empty(self) -> bool:
        return not (self.create or self.delete or self.relabel)


def _index(pod: dict[str, Any]) -> int | None:
    value = (pod.get("metadata", {}).get("labels") or {}).get(INDEX_LABEL, "")
    return int(value) if value.isdigit() else None


def _ready(pod: dict[str, Any]) -> bool:
    conds = (pod.get("status") or {}).get("conditions") or []
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conds)


def _terminating(pod: dict[str, Any]) -> bool:
    return bool(pod.get("metadata", {}).get("deletionTimestamp"))


def plan_pods(spec: ServiceSpec, hp: int, pods: list[dict[str, Any]]) -> PodPlan:
    """Converge the runtime pods on ``spec.instances`` pods with ``hp`` of them HP.

    Role changes are label flips. Pods whose template changed are replaced one at a time, and only
    while every other pod is ready, so a rollout never takes more than one instance away.
    """
    plan = PodPlan()
    want = roles(spec, hp)
    by_index: dict[int, dict[str, Any]] = {}
    for pod in pods:
        idx, name = _index(pod), pod["metadata"]["name"]
        if idx is None or idx >= spec.instances or idx in by_index:
            if not _terminating(pod):
                plan.delete.append(name)
            continue
        by_index[idx] = pod
    outdated = []
    for idx, role in enumerate(want):
        pod = by_index.get(idx)
        if pod is None:
            plan.create.append(runtime_pod(spec, idx, role))
            continue
        if _terminating(pod):
            continue
        meta = pod["metadata"]
        if (pod.get("status") or {}).get("phase") in ("Failed", "Succeeded"):
            plan.delete.append(meta["name"])  # not serving anyway: replace at once
        elif (meta.get("annotations") or {}).get(HASH_ANNOTATION) != \
                runtime_pod(spec, idx, role)["metadata"]["annotations"][HASH_ANNOTATION]:
            outdated.append(meta["name"])
        elif (meta.get("labels") or {}).get(ROLE_LABEL) != role:
            plan.relabel[meta["name"]] = role
    if outdated and not plan.create and all(
            _ready(p) and not _terminating(p) for p in by_index.values()
            if p["metadata"]["name"] != outdated[0]):
        plan.delete.append(outdated[0])
    return plan


def condition(kind: str, ok: bool, reason: str, message: str, generation: int,
               previous: list[dict[str, Any]]) -> dict[str, Any]:
    status = "True" if ok else "False"
    old = next((c for c in previous if c.get("type") == kind), None)
    changed = old is None or old.get("status") != status
    return {"type": kind, "status": status, "reason": reason, "message": message,
            "observedGeneration": generation,
            "lastTransitionTime": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
            if changed else old.get("lastTransitionTime")}


def _pending_reason(pods: list[dict[str, Any]]) -> str | None:
    for pod in pods:
        for c in (pod.get("status") or {}).get("conditions") or []:
            if c.get("type") == "PodScheduled" and c.get("status") == "False":
                return f"{pod['metadata']['name']}: {c.get('reason')}: {c.get('message', '')}"
    return None


# Container states a pod does not leave by waiting: its image is missing or unusable, or its
# process keeps dying. Each needs a person (or a spec change), so each makes the service
# Degraded, naming the pod, the container and the kubelet's reason.
STUCK = frozenset({"ErrImagePull", "ImagePullBackOff", "ErrImageNeverPull", "InvalidImageName",
                   "ImageInspectError", "CrashLoopBackOff", "CreateContainerConfigError",
                   "CreateContainerError", "RunContainerError"})


def failing_reason(pods: list[dict[str, Any]]) -> str | None:
    """The first pod stuck in one of :data:`STUCK` (or failed outright), in words that stay the
    same while the cause does (no restart counts or back-off times: the Event that says it is
    posted once per cause, not once per pass)."""
    for pod in pods:
        name = pod["metadata"]["name"]
        st = pod.get("status") or {}
        for cs in [*(st.get("initContainerStatuses") or []),
                   *(st.get("containerStatuses") or [])]:
            waiting = (cs.get("state") or {}).get("waiting") or {}
            reason = waiting.get("reason")
            if reason not in STUCK:
                continue
            last = (cs.get("lastState") or {}).get("terminated")
            if reason == "CrashLoopBackOff" and last:
                detail = f"it exited {last.get('exitCode')} ({last.get('reason', 'Error')})"
            else:
                detail = waiting.get("message") or ""
            return f"pod {name}, container {cs.get('name')}: {reason}" + \
                (f": {detail}" if detail else "")
        if st.get("phase") == "Failed":
            return f"pod {name} failed: {st.get('reason', '')} {st.get('message', '')}".strip()
    return None


def degraded_news(previous: list[dict[str, Any]], conditions: list[dict[str, Any]]
                  ) -> dict[str, Any] | None:
    """The Degraded condition of ``conditions`` when it is True with a cause the previous
    status did not give: what deserves a Warning Event."""
    new = next((c for c in conditions if c["type"] == "Degraded"), None)
    old = next((c for c in previous if c.get("type") == "Degraded"), {})
    if new is None or new["status"] != "True":
        return None
    if (old.get("status"), old.get("reason"), old.get("message")) == \
            ("True", new["reason"], new["message"]):
        return None
    return new


def status(spec: ServiceSpec, hp: int, pods: list[dict[str, Any]],
           router: dict[str, Any] | None, generation: int,
           previous: list[dict[str, Any]], error: str | None = None,
           extra: list[dict[str, Any]] | None = None,
           router_pods: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """The status block: counts, split and Ready/Progressing/Degraded conditions."""
    live = [p for p in pods if not _terminating(p)]
    ready = [p for p in live if _ready(p)]
    by_role = {r: sum((p["metadata"].get("labels") or {}).get(ROLE_LABEL) == r for p in ready)
               for r in ("lp", "hp")}
    router_ready = bool(router) and \
        ((router or {}).get("status") or {}).get("availableReplicas", 0) >= 1
    all_ready = len(ready) == spec.instances == len(live) and router_ready
    everything = live + [p for p in router_pods or [] if not _terminating(p)]
    unschedulable = _pending_reason(everything)
    failing = failing_reason(everything)
    if error:
        degraded = (True, "ReconcileError", error)
    elif failing:
        degraded = (True, "PodFailing", failing)
    elif unschedulable:
        degraded = (True, "Unschedulable", unschedulable)
    else:
        degraded = (False, "AsExpected", "")
    progress_msg = (f"{len(ready)}/{spec.instances} runtime pods ready, router "
                    f"{'ready' if router_ready else 'not ready'}")
    conditions = [
        condition("Ready", all_ready and not degraded[0],
                   "AllReady" if all_ready else "Waiting", progress_msg, generation, previous),
        condition("Progressing", not all_ready, "Converging" if not all_ready else "Stable",
                   progress_msg, generation, previous),
        condition("Degraded", degraded[0], degraded[1], degraded[2], generation, previous),
        *(extra or []),
    ]
    return {"observedGeneration": generation, "readyLP": by_role["lp"],
            "readyHP": by_role["hp"], "split": {"lp": spec.instances - hp, "hp": hp},
            "conditions": conditions}
