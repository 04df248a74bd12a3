"""Finding the runtime pods of an AscendraService from inside the cluster.

The router lists its pods through the Kubernetes API with its own service account (the operator
gives it get/list/watch on pods, nothing else) every few seconds and updates its instance pool.
Roles are not read here: the agent in each pod reports its live role.
"""

from __future__ import annotations

import asyncio
import logging
import os
import ssl
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import aiohttp
import yaml

from ascendra.core.view import Role
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


def in_cluster_url(env: Mapping[str, str]) -> str:
    """The API server as the kubelet tells every pod (``KUBERNETES_SERVICE_HOST`` and
    ``_PORT``, as client-go's in-cluster config reads it): a cluster need not run DNS, and
    ``kubernetes.default.svc`` resolves only where it does."""
    host, port = env.get("KUBERNETES_SERVICE_HOST"), env.get("KUBERNETES_SERVICE_PORT")
    if not host or not port:
        return "https://kubernetes.default.svc"
    return f"https://[{host}]:{port}" if ":" in host else f"https://{host}:{port}"


def _credentials(kubeconfig: str | None) -> tuple[str, ssl.SSLContext, dict[str, str]]:
    """(API server URL, TLS context, headers): the pod's service account, or a kubeconfig's
    current context (client certificate or token) when the router runs outside the cluster."""
    if kubeconfig is None:
        token = (SA / "token").read_text().strip()
        return (in_cluster_url(os.environ),
                ssl.create_default_context(cafile=str(SA / "ca.crt")),
                {"Authorization": f"Bearer {token}"})
    cfg = yaml.safe_load(Path(kubeconfig).read_text())
    ctx_name = cfg["current-context"]
    context = next(c["context"] for c in cfg["contexts"] if c["name"] == ctx_name)
    cluster = next(c["cluster"] for c in cfg["clusters"] if c["name"] == context["cluster"])
    user = next(u["user"] for u in cfg["users"] if u["name"] == context["user"])
    ctx = ssl.create_default_context(cafile=cluster.get("certificate-authority"))
    headers = {}
    if "client-certificate" in user:
        ctx.load_cert_chain(user["client-certificate"], user["client-key"])
    if "token" in user:
        headers["Authorization"] = f"Bearer {user['token']}"
    return cluster["server"], ctx, headers


class KubernetesDiscovery:
    def __init__(self, namespace: str, selector: str, engine_port: int, agent_port: int,
                 interval: float = 5.0, kubeconfig: str | None = None) -> None:
        self.namespace, self.selector = namespace, selector
        self.engine_port, self.agent_port = engine_port, agent_port
        self.interval, self.kubeconfig = interval, kubeconfig

    async def poll_forever(self, pool: InstancePool) -> None:
        api, ctx, headers = _credentials(self.kubeconfig)
        url = f"{api}/api/v1/namespaces/{self.namespace}/pods"
        async with aiohttp.ClientSession(headers=headers) as http:
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
