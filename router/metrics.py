"""The router's Prometheus metrics (``ascendra_`` names), on a registry of its own."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from ascendra.metrics import RequestOutcome

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.15, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 2.5,
                    3.0, 5.0, 7.5, 10.0, 20.0, 60.0)

_LOOP_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)

_LENGTH_BUCKETS = (16, 32, 64, 128, 192, 256, 384, 512, 768, 1024, 1536, 2048, 3072, 4096, 6144,
                   8192, 16384, 32768)


def _buckets(slo_values: tuple[float, ...]) -> tuple[float, ...]:
    """Default edges plus the SLO targets themselves, so "within SLO" is exact."""
    return tuple(sorted(set(_LATENCY_BUCKETS) | {round(v, 6) for v in slo_values}))


class RouterMetrics:
    def __init__(self, ttft_slo: float, tbt_slo: float) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("ascendra_requests", "Requests answered, by endpoint and status",
                                ["endpoint", "status"], registry=r)
        self.ttft = Histogram("ascendra_ttft_seconds", "Time to first token (arrival at the "
                              "router to first token sent)", buckets=_buckets((ttft_slo,)),
                              registry=r)
        self.tbt = Histogram("ascendra_tbt_mean_seconds", "Per-request time between tokens, "
                             "as its TBT target measures it (the mean gap by default; p99 or "
                             "max gap for gap targets)", buckets=_buckets((tbt_slo,)),
                             registry=r)
        self.slo = Counter("ascendra_slo_requests", "Finished requests by SLO outcome: met, or "
                           "missed by reason (ttft, tbt, dropped, error, rejected)", ["outcome"],
                           registry=r)
        # One SLI per target, for burn-rate alerts: each request counts against its own target
        # (headers may override the service's), and a failed request misses both.
        self.slo_ttft = Counter("ascendra_slo_ttft_requests", "Requests by whether their TTFT "
                                "met its target", ["result"], registry=r)
        self.slo_tbt = Counter("ascendra_slo_tbt_requests", "Requests by whether their mean TBT "
                               "met its target", ["result"], registry=r)
        # The workload mix, for the operator's split planner (lengths of finished requests).
        self.prompt_tokens = Histogram("ascendra_prompt_tokens", "Prompt length of finished "
                                       "requests", buckets=_LENGTH_BUCKETS, registry=r)
        self.output_tokens = Histogram("ascendra_output_tokens", "Output tokens of finished "
                                       "requests", buckets=_LENGTH_BUCKETS, registry=r)
        self.predictor_error = Histogram(
            "ascendra_predictor_ttft_error_seconds", "Observed minus predicted TTFT at placement",
            buckets=(-5, -2, -1, -0.5, -0.25, -0.1, -0.05, 0, 0.05, 0.1, 0.25, 0.5, 1, 2, 5),
            registry=r)
        self.step = Gauge("ascendra_instance_step_seconds", "Each engine's measured step time",
                          ["instance", "role"], registry=r)
        self.lp_slack = Gauge("ascendra_lp_queue_min_slack_seconds", "Least slack among this "
                              "router's requests waiting on LP instances (TTFT target left "
                              "after the predicted prefill); +Inf when none wait", registry=r)
        self.predictor_version = Gauge("ascendra_predictor_version", "Version of the learned "
                                       "deadline predictor serving (0: the analytic one)",
                                       registry=self.registry)
        self.offloads = Counter("ascendra_offloads", "Queued LP requests moved to an HP instance",
                                registry=r)
        self.relegated = Counter("ascendra_relegated_requests", "Requests predicted to miss "
                                 "their TTFT on every instance, served after the rest",
                                 registry=r)
        self.rejected = Counter("ascendra_rejected_requests", "Requests the router shed, by "
                                "reason: hopeless and queue_full (429), evicted and timeout "
                                "(503)", ["reason"], registry=r)
        self.router_queue = Gauge("ascendra_router_queue_requests", "Requests held in the "
                                  "router's queue, waiting or relegated", ["state"], registry=r)
        self.queue_wait = Histogram("ascendra_queue_wait_seconds", "Arrival at the router to "
                                    "release to an engine", buckets=_LATENCY_BUCKETS,
                                    registry=r)
        self.engine_ttft = Histogram("ascendra_engine_ttft_seconds", "Release to an engine to "
                                     "the first token back from it, for requests never moved "
                                     "(with ascendra_queue_wait_seconds and "
                                     "ascendra_ttft_seconds: where a request's TTFT went)",
                                     buckets=_LATENCY_BUCKETS, registry=r)
        # The router's own health: a pass of the controller that takes long, or a loop that
        # wakes late (relaying thousands of tokens a second is CPU work on one thread), delays
        # every release and every token of every stream.
        self.control_pass = Histogram("ascendra_control_pass_seconds", "Time one periodic pass "
                                      "of the controller took (its decisions and their "
                                      "execution)", buckets=_LOOP_BUCKETS, registry=r)
        self.loop_lag = Histogram("ascendra_event_loop_lag_seconds", "How late the router's "
                                  "event loop woke for its periodic pass (0 while it keeps up)",
                                  buckets=_LOOP_BUCKETS, registry=r)
        self.migrations = Counter("ascendra_migrations", "Requests moved by token replay, by "
                                  "reason (tbt, recovery, drain)", ["reason"], registry=r)
        self.inflight = Gauge("ascendra_inflight_requests", "Streams in flight on each "
                              "instance, by role", ["instance", "role"], registry=r)
        self.queue = Gauge("ascendra_instance_waiting_requests", "Requests waiting in each "
                           "engine's queue (engine-reported)", ["instance", "role"], registry=r)

    def observe(self, outcome: RequestOutcome, predicted_ttft: float | None = None) -> None:
        if outcome.ttft is not None:
            self.ttft.observe(outcome.ttft)
            if predicted_ttft is not None:
                self.predictor_error.observe(outcome.ttft - predicted_ttft)
        if outcome.tbt is not None:
            self.tbt.observe(outcome.tbt)
        self.slo.labels(outcome.miss_reason or "met").inc()
        ok = outcome.finished and outcome.error is None
        if ok:
            self.prompt_tokens.observe(outcome.prompt_len)
            self.output_tokens.observe(outcome.tokens)
        self.slo_ttft.labels("met" if ok and outcome.met_ttft else "missed").inc()
        self.slo_tbt.labels("met" if ok and outcome.met_tbt else "missed").inc()
