"""The saturation bound: the request rate at which the instances are fully busy running the
workload's requests in their most efficient steady-state batches.

In steady state every step carries B decodes and the prefill tokens of the B/O requests that join
per step (O: mean output length), so the prefill:decode token ratio is P:O. A step of that shape
takes T(B) seconds and retires B/O requests, giving B/(O·T(B)) requests/s per instance. The bound
is its maximum over B up to what the KV cache holds (B requests of mean resident length P + O/2).
The engines' seat limit (max_num_seqs) is a setting, not physics, so it does not cap the bound: no
policy can sustain more on those instances, and goodput/bound says how close one gets.
"""

from __future__ import annotations

from ascendra.core.latency import BatchShape, LatencyModel


def saturation_bound(model: LatencyModel, prompt_mean: float, output_mean: float, *,
                     instances: int, kv_tokens: int, step: int = 4) -> float:
    if prompt_mean <= 0 or output_mean <= 0 or instances <= 0:
        return 0.0
    resident = prompt_mean + output_mean / 2
    best = 0.0
    for b in range(1, int(kv_tokens / resident) + 1, step):
        prefill_tokens = round(b * prompt_mean / output_mean)
        seqs = max(1, round(b / output_mean)) if prefill_tokens else 0
        shape = BatchShape(
            num_prefill_tokens=prefill_tokens,
            num_prefill_seqs=seqs,
            prefill_attn_pairs=prefill_tokens * (prompt_mean + 1) / 2,
            num_decodes=b,
            decode_context=round(b * resident),
        )
        best = max(best, b / (output_mean * model.batch_time(shape)))
    return best * instances
