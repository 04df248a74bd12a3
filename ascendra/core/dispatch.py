"""Which instance a request goes to, among those the controller allows: predicted delay, the
load-aware scorers and round-robin.

Every scorer reads an :class:`~ascendra.core.view.InstanceView` (the engine's own state plus
what was sent to it), so the simulator and the router score alike.
"""

from __future__ import annotations

from collections.abc import Sequence

from ascendra.core.latency import BatchShape, LatencyModel
from ascendra.core.policy import Dispatch
from ascendra.core.request import Request
from ascendra.core.view import InstanceView


def predicted_delay(model: LatencyModel, inst: InstanceView, tokens: int) -> float:
    """Predicted time from now to the first token of ``tokens`` more sent to ``inst``: the rest
    of the step it is running (half of one, on average), then its unstarted prefills and this
    one in steps of its token budget, each beside its decoding streams."""
    total = inst.unstarted_tokens + tokens
    per_step = max(1, inst.token_budget - inst.running)
    full, rest = divmod(total, per_step)
    seqs = inst.unstarted + 1
    in_progress = (inst.step_time or 0.0) / 2 if inst.running or inst.unstarted else 0.0
    delay = in_progress
    if full:
        delay += full * _step(model, inst, per_step, max(1, seqs * per_step // total))
    if rest:
        delay += _step(model, inst, rest, max(1, seqs * rest // total))
    return delay


def _step(model: LatencyModel, inst: InstanceView, tokens: int, seqs: int) -> float:
    mean = tokens / seqs
    return model.batch_time(BatchShape(
        num_prefill_tokens=tokens, num_prefill_seqs=seqs,
        prefill_attn_pairs=seqs * mean * (mean + 1) / 2,
        num_decodes=inst.running, decode_context=inst.decode_context))


def can_meet_ttft(model: LatencyModel, inst: InstanceView, req: Request, tokens: int,
                  now: float) -> bool:
    """Whether ``req`` sent to ``inst`` now would still get its first token by its deadline."""
    return now + predicted_delay(model, inst, tokens) <= req.deadline


class Dispatcher:
    """Picks among candidate instances; holds only the round-robin cursor."""

    def __init__(self, kind: Dispatch, model: LatencyModel) -> None:
        self.kind = kind
        self.model = model
        self._next = 0

    def pick(self, candidates: Sequence[InstanceView], tokens: int) -> InstanceView:
        if self.kind is Dispatch.ROUND_ROBIN:
            inst = candidates[self._next % len(candidates)]
            self._next += 1
            return inst
        if self.kind is Dispatch.LEAST_TOKENS:
            return min(candidates, key=lambda i: (i.outstanding_tokens, i.index))
        return min(candidates, key=lambda i: (predicted_delay(self.model, i, tokens), i.index))
