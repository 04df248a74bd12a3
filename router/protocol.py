"""Request bodies and headers of the OpenAI-compatible API, validated into typed objects.

Everything a client can get wrong is refused here with an OpenAI-style 4xx error
(:class:`ApiError`), before any engine sees the request.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ascendra.core.request import Slo


class ApiError(Exception):
    """An error for the client: HTTP status plus the OpenAI error body."""

    def __init__(self, status: int, message: str, *, param: str | None = None,
                 code: str | None = None, type_: str = "invalid_request_error") -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.type = type_

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param,
                          "code": self.code}}


class StreamOptions(BaseModel):
    include_usage: bool = False


# The engines' transport carries 64-bit integers only: a wider one in a field passed through
# would fail on the way there, after the client's 200.
Int64 = Annotated[int, Field(ge=-(2**63), le=2**63 - 1)]
Count = Annotated[int, Field(ge=0, le=2**31 - 1)]
StopString = Annotated[str, Field(min_length=1)]


class _Sampling(BaseModel):
    """Sampling fields passed through to vLLM, refused here with vLLM's own bounds
    (``vllm.SamplingParams._verify_args``) so that an engine never sees a request it rejects:
    an engine's refusal is the client's error, but it costs a round trip and a held stream."""

    model_config = ConfigDict(extra="ignore", allow_inf_nan=False)

    model: str
    stream: bool = False
    stream_options: StreamOptions | None = None
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    top_k: int | None = Field(None, ge=-1, le=2**31 - 1)  # -1 and 0: no top-k
    min_p: float | None = Field(None, ge=0, le=1)
    seed: Int64 | None = None
    stop: StopString | list[StopString] | None = None
    stop_token_ids: list[Count] | None = None  # within the vocabulary: PromptEncoder checks
    ignore_eos: bool = False
    min_tokens: Count = 0
    presence_penalty: float | None = Field(None, ge=-2, le=2)
    frequency_penalty: float | None = Field(None, ge=-2, le=2)
    repetition_penalty: float | None = Field(None, gt=0)
    n: int = 1
    logprobs: Any = None
    return_token_ids: bool = False

    def sampling_params(self) -> dict[str, Any]:
        keys = ("temperature", "top_p", "top_k", "min_p", "seed", "stop", "stop_token_ids",
                "ignore_eos", "presence_penalty", "frequency_penalty", "repetition_penalty")
        return {k: v for k in keys if (v := getattr(self, k)) is not None}

    def check_min_tokens(self, max_tokens: int) -> None:
        if self.min_tokens > max_tokens:
            raise ApiError(400, f"min_tokens ({self.min_tokens}) must not exceed max_tokens "
                                f"({max_tokens})", param="min_tokens")

    def check_supported(self) -> None:
        if self.n != 1:
            raise ApiError(400, "n > 1 is not supported by the Ascendra router", param="n")
        if self.logprobs not in (None, False, 0):
            raise ApiError(400, "logprobs are not supported by the Ascendra router",
                           param="logprobs")


class CompletionBody(_Sampling):
    prompt: str | list[Count] | list[str] | list[list[Count]]
    max_tokens: Int64 | None = 16
    echo: bool = False

    def check_supported(self) -> None:
        super().check_supported()
        if self.echo:
            raise ApiError(400, "echo is not supported by the Ascendra router", param="echo")


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")

    role: Literal["system", "user", "assistant", "tool", "developer"]
    content: str | list[dict[str, Any]] | None = None


class ChatBody(_Sampling):
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: Int64 | None = None
    max_completion_tokens: Int64 | None = None

    @property
    def requested_max_tokens(self) -> int | None:
        return self.max_completion_tokens if self.max_completion_tokens is not None \
            else self.max_tokens


class TokenizeBody(BaseModel):
    """vLLM's ``/tokenize`` request (the completion form): what its benchmark client sends to
    check that its tokenizer and the server's agree."""

    model: str | None = None
    prompt: str
    add_special_tokens: bool = True


class DetokenizeBody(BaseModel):
    model: str | None = None
    tokens: list[Count]


def parse_body(raw: bytes, kind: type[BaseModel]) -> Any:
    """orjson is strict where Python's json is not: it refuses NaN and Infinity, lone
    surrogates (which no tokenizer can encode) and nesting past 1,024 levels (where json
    recurses until it fails), each with a message for the client."""
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as e:
        raise ApiError(400, f"request body is not valid JSON: {e}") from None
    if not isinstance(data, dict):
        raise ApiError(400, "request body must be a JSON object")
    try:
        body = kind.model_validate(data)
    except ValidationError as e:
        err = e.errors()[0]
        where = ".".join(str(p) for p in err["loc"]) or None
        raise ApiError(400, f"{where}: {err['msg']}" if where else err["msg"],
                       param=where) from None
    if isinstance(body, _Sampling):
        body.check_supported()
    return body


TTFT_HEADER = "x-ascendra-ttft-slo"
TBT_HEADER = "x-ascendra-tbt-slo"
CRITICALITY_HEADER = "x-ascendra-criticality"
RELEGATED_HEADER = "x-ascendra-relegated"  # on a response: served after the rest, on purpose
_CRITICALITY = re.compile(r"^\s*[-+]?[0-9]{1,6}\s*$")
_DURATION = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*(ms|s)?\s*$")


def _duration(value: str, header: str) -> float:
    m = _DURATION.match(value)
    if not m:
        raise ApiError(400, f"header {header} must be a duration like '0.5', '0.5s' or "
                            f"'500ms', got {value!r}", param=header)
    seconds = float(m.group(1)) / (1000 if m.group(2) == "ms" else 1)
    if not 0 < seconds <= 3600:
        raise ApiError(400, f"header {header} must be within (0, 3600] seconds, got {value!r}",
                       param=header)
    return seconds


def slo_from_headers(headers: Any, default: Slo) -> Slo:
    """Per-request SLO overrides: ``X-Ascendra-TTFT-SLO`` and ``X-Ascendra-TBT-SLO`` (the TBT
    target keeps the service's kind: mean, p99 or max gap)."""
    ttft, tbt = headers.get(TTFT_HEADER), headers.get(TBT_HEADER)
    return Slo(
        ttft=_duration(ttft, TTFT_HEADER) if ttft is not None else default.ttft,
        tbt=_duration(tbt, TBT_HEADER) if tbt is not None else default.tbt,
        tbt_kind=default.tbt_kind,
    )


def criticality_from_headers(headers: Any) -> int:
    """``X-Ascendra-Criticality``: an integer, 0 by default, as Gateway API Inference
    Extension's objective priority: higher is served first, and a negative one is sheddable
    (answered 429 rather than relegated when it would miss its TTFT)."""
    raw = headers.get(CRITICALITY_HEADER)
    if raw is None:
        return 0
    if not _CRITICALITY.match(raw):
        raise ApiError(400, f"header {CRITICALITY_HEADER} must be an integer within "
                            f"[-999999, 999999], got {raw!r}", param=CRITICALITY_HEADER)
    return int(raw)
