"""Finding the runtime pods of an AscendraService from inside the cluster.

The router lists its pods through the Kubernetes API with its own service account (the operator
gives it get/list/watch on pods, nothing else) every few seconds and updates its instance pool.
Roles are not read here: the agent in each pod reports its live role.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from pathlib import Path
from typing import Any

import aiohttp

from ascendra.core.dispatch import Role
from ascendra.router.instances import InstancePool, InstanceSpec

log = logging.getLogger("ascendra.router")
SA = Path("/var/run/secrets/kubernetes.io/serviceaccount")


def instances_from_pods(pods: list[dict[str, Any]], engine_port: int,
                        agent_port: int) -> list[InstanceSpec]:
    out = []
    for pod in pods:
        meta, status = pod.get("metadata") or {}, pod.get("status") or {}
        ip = status.get("podIP")
        if not ip or meta.get("deletionTimestamp") or status.get("phase") != "Running":
            continue
        role = (meta.get("labels") or {}).get("ascendra.io/role", "lp")
        out.append(InstanceSpec(f"http://{ip}:{engine_port}", f"http://{ip}:{agent_port}",
                                Role(role) if role in ("lp", "hp", "mixed") else Role.LP))
    return sorted(out, key=lambda s: s.engine_url)


class KubernetesDiscovery:
    def __init__(self, namespace: str, selector: str, engine_port: int, agent_port: int,
                 interval: float = 5.0, api: str = "https://kubernetes.default.svc") -> None:
        self.namespace, self.selector = namespace, selector
        self.engine_port, self.agent_port = engine_port, agent_port
        self.interval, self.api = interval, api

    async def poll_forever(self, pool: InstancePool) -> None:
        token = (SA / "token").read_text().strip()
        ctx = ssl.create_default_context(cafile=str(SA / "ca.crt"))
        url = f"{self.api}/api/v1/namespaces/{self.namespace}/pods"
        async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {token}"}) as http:
            while True:
                try:
                    async with http.get(url, params={"labelSelector": self.selector},
                                        ssl=ctx) as r:
                        r.raise_for_status()
                        pods = (await r.json())["items"]
                    pool.sync(instances_from_pods(pods, self.engine_port, self.agent_port))
                except (TimeoutError, aiohttp.ClientError, KeyError, ValueError) as e:
                    log.warning("pod discovery failed (keeping the last instance list): %s", e)
                await asyncio.sleep(self.interval)
