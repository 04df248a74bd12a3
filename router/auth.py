"""Who may use the router: client API keys and a separate admin token.

Clients send ``Authorization: Bearer KEY`` as OpenAI's clients do (vLLM's ``--api-key`` takes
the same header). The keys come from the environment, where Kubernetes puts a Secret's value
(``ASCENDRA_API_KEYS``: one or more keys, comma-separated); none set, clients need no key,
which is the local stack's default on 127.0.0.1. The admin endpoints (``/ascendra/drain``,
``/ascendra/instances``) take only the admin token (``ASCENDRA_ADMIN_TOKEN``), never a client
key: once client keys are set and no admin token is, they are closed. ``/health`` and
``/metrics`` stay open for probes and Prometheus.
"""

from __future__ import annotations

import hmac
from collections.abc import Mapping
from dataclasses import dataclass

from ascendra.router.protocol import ApiError

KEYS_ENV, ADMIN_ENV = "ASCENDRA_API_KEYS", "ASCENDRA_ADMIN_TOKEN"


def _bearer(authorization: str | None) -> str | None:
    if authorization is None:
        return None
    scheme, _, token = authorization.strip().partition(" ")
    return (token.strip() or None) if scheme.lower() == "bearer" else None


def _matches(token: str, secrets: tuple[str, ...]) -> bool:
    # Every key compared, in constant time each: the answer's timing tells nothing.
    found = False
    for secret in secrets:
        found |= hmac.compare_digest(token.encode(), secret.encode())
    return found


@dataclass(frozen=True)
class Credentials:
    api_keys: tuple[str, ...] = ()  # empty: clients need no key
    admin_token: str | None = None

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Credentials:
        keys = tuple(k.strip() for k in env.get(KEYS_ENV, "").split(",") if k.strip())
        return cls(keys, env.get(ADMIN_ENV, "").strip() or None)

    @property
    def open(self) -> bool:
        return not self.api_keys and self.admin_token is None

    def check_client(self, authorization: str | None) -> None:
        if not self.api_keys:
            return
        token = _bearer(authorization)
        if token is None:
            raise ApiError(401, "missing API key: send Authorization: Bearer KEY",
                           code="invalid_api_key")
        if not _matches(token, self.api_keys):
            raise ApiError(401, "incorrect API key", code="invalid_api_key")

    def check_admin(self, authorization: str | None) -> None:
        if self.open:
            return
        if self.admin_token is None:
            raise ApiError(403, f"admin endpoints are closed: set {ADMIN_ENV} to use them",
                           code="admin_disabled")
        token = _bearer(authorization)
        if token is None or not _matches(token, (self.admin_token,)):
            raise ApiError(401, "admin endpoints need the admin token", code="invalid_token")
