"""The policy: every knob of the cluster controller, in one frozen dataclass.

The CLI's flags, the router's config file and the CRD's ``policy`` block all parse into a
:class:`Policy` through :data:`FIELDS`, the one table that names each knob (camelCase in files
and the CRD, ``--kebab-case`` on the command line), its type and its valid range. A value out of
range is a :class:`PolicyError` that names the field as the user wrote it.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from typing import Any

from ascendra.errors import AscendraError


class PolicyError(AscendraError):
    """A policy value that is missing its type or out of its range; the message names it."""


class Order(enum.Enum):
    """How the router's queue is ordered within a priority band.

    The order decides who waits when the engines are full, and so, past saturation, who is
    relegated. ``shortest`` serves the most requests in time (a short prompt's prefill costs
    little and its TTFT is the binding target), so long requests pay; ``deadline`` and ``fcfs``
    spread the misses over lengths.
    """

    DEADLINE = "deadline"  # least slack first: deadline minus predicted prefill
    FCFS = "fcfs"
    SHORTEST = "shortest"  # fewest tokens to compute (prompt + max_tokens) first


class Overload(enum.Enum):
    """What happens to a request predicted to miss its TTFT on every instance."""

    RELEGATE = "relegate"  # served after every request that can still meet its SLO
    REJECT = "reject"  # answered 429 at once (the service treats every request as sheddable)


class Dispatch(enum.Enum):
    """Which instance, among those with room, takes a released request."""

    LEAST_DELAY = "least-delay"  # the earliest predicted first token
    LEAST_TOKENS = "least-tokens"  # the fewest tokens still to compute for what it was sent
    ROUND_ROBIN = "round-robin"


@dataclass(frozen=True, slots=True)
class Policy:
    # The router's queue (flow control). Off: every request goes to an engine at arrival, as
    # behind a plain load balancer, and the engines' own queues hold the backlog.
    hold_queue: bool = True
    order: Order = Order.SHORTEST
    overload: Overload = Overload.RELEGATE
    queue_limit: int = 4096  # requests held at the router at most
    queue_timeout: float = 60.0  # s a request may wait at the router before a 503
    # An engine is sent more only while the prompt tokens it holds unstarted are fewer than
    # this many steps of its token budget: the step it runs and the next. The router learns
    # that a prefill started only from its first token, a step and a relay later; a window of
    # one step left a fast engine without prompts for that round trip (an H200 ran half-fed
    # at 52 req/s). Small beside the queue, so the order is still re-decided at nearly every
    # release instead of frozen in the engine's queue.
    release_steps: float = 2.0
    # ... and only while the KV cache keeps this fraction free once those prompts are in, so
    # that the engine neither queues what it cannot admit nor preempts streams to grow them.
    kv_reserve: float = 0.05
    # Where the TBT target bounds gaps (p99 or max, not the mean), a prompt goes only to an
    # engine whose next step, with it, is predicted within this fraction of the target.
    step_fraction: float = 0.9
    relegation_margin: float = 0.1  # s of safety added to a request's predicted TTFT
    # An order other than by deadline can hold a request back until it misses although there
    # was time for it (shortest-first does this to long prompts in a burst). A request whose
    # slack (time left before it must be released to meet its TTFT) falls within this goes
    # first, most urgent first, as long as it can still make it. 0: never.
    promotion_slack: float = 0.0
    # ... and only while the whole queue is predicted to drain within that slack: a passing
    # backlog, where the request misses only because later, shorter arrivals keep overtaking
    # it. Under sustained overload the order's choice of whom to serve stands. Off, a burst
    # the engines clear in the end is served as by deadline (and sustained load pays).
    promotion_guard: bool = True
    dispatch: Dispatch = Dispatch.LEAST_DELAY
    # Moves. Offload: an unstarted request on an engine predicted to miss its TTFT moves to an
    # instance predicted to meet it. Migration: a stream whose mean TBT is at risk moves by
    # token replay. Neither moves a request between engines that share a GPU unless allowed.
    offload: bool = True
    offload_margin: float = 0.7  # the paper's Δ, s, for the fixed-margin predictor
    offload_guard: bool = True  # only to a target predicted to meet the deadline
    migration: bool = False  # measured: it cost attainment on every preset (docs/simulator.md)
    moves_within_gpu: bool = False
    max_moves: int = 3  # moves of any kind per request; the last is for recovery
    max_tbt_moves: int = 1
    # HP instances take a new request directly only through a ticket; beyond the paper, the
    # ticket also needs the HP's step within this fraction of the TBT target (0: paper's rule).
    ticket_step_fraction: float = 0.5
    tick: float = 0.05  # s between the controller's periodic passes (moves, timeouts)

    def with_values(self, values: Mapping[str, Any], where: str = "policy") -> Policy:
        """A copy with ``values`` (camelCase keys, as in files and the CRD) applied."""
        return parse_policy(values, base=self, where=where)

    def as_mapping(self) -> dict[str, Any]:
        """camelCase keys and plain values: what the operator writes into the router's config."""
        return {f.key: _plain(getattr(self, f.name)) for f in FIELDS}


@dataclass(frozen=True, slots=True)
class Field:
    name: str  # the dataclass field
    key: str  # camelCase, in config files and the CRD
    kind: type | type[enum.Enum]
    low: float | None = None
    high: float | None = None
    help: str = ""

    @property
    def flag(self) -> str:
        return "--" + "".join("-" + c.lower() if c.isupper() else c for c in self.key)


FIELDS: tuple[Field, ...] = (
    Field("hold_queue", "holdQueue", bool, help="the router holds the queue and releases "
          "requests to engines with room (off: send at arrival)"),
    Field("order", "order", Order, help="queue order within a priority band: shortest (fewest "
          "tokens to compute), deadline (least slack) or fcfs"),
    Field("overload", "overload", Overload, help="a request predicted to miss its TTFT on "
          "every instance: relegate (served after the rest) or reject (429 at once)"),
    Field("queue_limit", "queueLimit", int, 1, 1_000_000, "requests the router holds at most"),
    Field("queue_timeout", "queueTimeoutSeconds", float, 0.1, 86_400,
          "seconds a request may wait at the router before a 503"),
    Field("release_steps", "releaseSteps", float, 0.001, 100,
          "steps of its token budget an engine may hold as unstarted prompt tokens before it "
          "is sent more"),
    Field("kv_reserve", "kvReserveFraction", float, 0, 0.9,
          "fraction of an engine's KV cache kept free before it is sent more"),
    Field("step_fraction", "stepFraction", float, 0.05, 10,
          "for gap TBT targets, an engine's predicted step with a new prompt must stay within "
          "this fraction of the target"),
    Field("relegation_margin", "relegationMarginSeconds", float, 0, 60,
          "seconds of safety added to a request's predicted TTFT before relegating it"),
    Field("promotion_slack", "promotionSlackSeconds", float, 0, 60,
          "a queued request with this little slack left goes ahead of the order (0: never)"),
    Field("promotion_guard", "promotionGuard", bool, help="promote only while the whole "
          "queue is predicted to drain within the request's slack"),
    Field("dispatch", "dispatch", Dispatch, help="instance choice: least-delay, least-tokens "
          "or round-robin"),
    Field("offload", "offload", bool, help="move unstarted requests predicted to miss their "
          "TTFT to an instance predicted to meet it"),
    Field("offload_margin", "offloadMarginSeconds", float, 0, 60,
          "the fixed-margin predictor's safety margin (the paper's delta), seconds"),
    Field("offload_guard", "offloadGuard", bool, help="offload only to an instance predicted "
          "to meet the deadline"),
    Field("migration", "migration", bool, help="move streams whose mean TBT is at risk by "
          "token replay"),
    Field("moves_within_gpu", "movesWithinGpu", bool, help="allow moves between engines that "
          "share a GPU"),
    Field("max_moves", "maxMoves", int, 0, 100, "moves of any kind per request"),
    Field("max_tbt_moves", "maxTbtMoves", int, 0, 100, "TBT migrations per request"),
    Field("ticket_step_fraction", "ticketStepFraction", float, 0, 10,
          "HP tickets need the HP's step within this fraction of the TBT target (0: paper)"),
    Field("tick", "tickSeconds", float, 0.001, 10, "seconds between periodic controller passes"),
)
_BY_KEY = {f.key: f for f in FIELDS}
assert {f.name for f in FIELDS} == {f.name for f in fields(Policy)}, "every knob has a Field"


def _plain(value: Any) -> Any:
    return value.value if isinstance(value, enum.Enum) else value


def parse_value(f: Field, raw: Any, where: str) -> Any:
    """One value, checked; ``where`` prefixes the field in the error (``policy.queueLimit``)."""
    name = f"{where}.{f.key}" if where else f.flag
    if issubclass(f.kind, enum.Enum):
        try:
            return f.kind(raw)
        except ValueError:
            known = ", ".join(str(m.value) for m in f.kind)  # type: ignore[attr-defined]
            raise PolicyError(f"{name}: {raw!r} is not one of {known}") from None
    if f.kind is bool:
        if isinstance(raw, bool):
            return raw
        if isinstance(raw, str) and raw.lower() in ("true", "false"):
            return raw.lower() == "true"
        raise PolicyError(f"{name}: {raw!r} is not true or false")
    try:
        if isinstance(raw, bool):
            raise ValueError
        value = f.kind(raw)
        if f.kind is int and isinstance(raw, float | str) and float(raw) != value:
            raise ValueError
    except (TypeError, ValueError):
        raise PolicyError(f"{name}: {raw!r} is not {'an integer' if f.kind is int else 'a number'}"
                          ) from None
    if not math.isfinite(value) or (f.low is not None and value < f.low) or \
            (f.high is not None and value > f.high):
        raise PolicyError(f"{name}: {raw!r} is out of range [{f.kind(f.low)}, {f.kind(f.high)}]")
    return value


def parse_policy(values: Mapping[str, Any], base: Policy = Policy(),
                 where: str = "policy") -> Policy:
    if not isinstance(values, Mapping):
        raise PolicyError(f"{where}: expected a mapping of policy fields")
    changes: dict[str, Any] = {}
    for key, raw in values.items():
        f = _BY_KEY.get(key)
        if f is None:
            raise PolicyError(f"{where}.{key}: unknown policy field (known: "
                              f"{', '.join(_BY_KEY)})")
        changes[f.name] = parse_value(f, raw, where)
    return replace(base, **changes)
