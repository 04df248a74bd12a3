"""The operator's few API operations, on the official ``kubernetes`` client.

Objects go in and come out as plain dicts (what the builders make and the planners read).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from ascendra.operator.builders import ROLE_LABEL, drifted


def load_config() -> None:
    """In a pod: its service account. Elsewhere: the current kubeconfig."""
    try:
        config.load_incluster_config()
    except config.ConfigException:
        config.load_kube_config()


def api_message(e: ApiException) -> str:
    """The API server's own message out of an error (it says what was wrong)."""
    import json

    try:
        return str(json.loads(e.body).get("message") or e.reason)
    except (TypeError, ValueError):
        return str(e.reason)


class Kube:
    def __init__(self) -> None:
        self.api = client.ApiClient()
        self.core = client.CoreV1Api(self.api)
        self.apps = client.AppsV1Api(self.api)
        self.rbac = client.RbacAuthorizationV1Api(self.api)
        self.networking = client.NetworkingV1Api(self.api)

    def _plain(self, obj: Any) -> dict[str, Any]:
        return self.api.sanitize_for_serialization(obj)

    def _ops(self, kind: str) -> tuple[Callable[..., Any], Callable[..., Any], Callable[..., Any]]:
        """read, create, patch for a namespaced kind."""
        c, a, r, n = self.core, self.apps, self.rbac, self.networking
        table = {
            "ServiceAccount": (c.read_namespaced_service_account,
                               c.create_namespaced_service_account,
                               c.patch_namespaced_service_account),
            "ConfigMap": (c.read_namespaced_config_map, c.create_namespaced_config_map,
                          c.patch_namespaced_config_map),
            "Service": (c.read_namespaced_service, c.create_namespaced_service,
                        c.patch_namespaced_service),
            "Deployment": (a.read_namespaced_deployment, a.create_namespaced_deployment,
                           a.patch_namespaced_deployment),
            "Role": (r.read_namespaced_role, r.create_namespaced_role, r.patch_namespaced_role),
            "RoleBinding": (r.read_namespaced_role_binding, r.create_namespaced_role_binding,
                            r.patch_namespaced_role_binding),
            "NetworkPolicy": (n.read_namespaced_network_policy,
                              n.create_namespaced_network_policy,
                              n.patch_namespaced_network_policy),
        }
        return table[kind]

    def apply(self, obj: dict[str, Any]) -> str:
        """Create ``obj`` if missing, patch it if it drifted: created, updated or unchanged."""
        read, create, patch = self._ops(obj["kind"])
        name, ns = obj["metadata"]["name"], obj["metadata"]["namespace"]
        try:
            current = self._plain(read(name, ns))
        except ApiException as e:
            if e.status != 404:
                raise
            try:
                create(ns, obj)
            except ApiException as e2:
                if e2.status != 409:  # created meanwhile (another pass, a restarted operator)
                    raise
            return "created"
        if not drifted(obj, current):
            return "unchanged"
        patch(name, ns, obj)
        return "updated"

    def has_group(self, group: str) -> bool:
        """Whether the API server serves ``group`` (e.g. the prometheus-operator CRDs)."""
        groups = client.ApisApi(self.api).get_api_versions().groups or []
        return any(g.name == group for g in groups)

    def apply_custom(self, obj: dict[str, Any], plural: str) -> str:
        """``apply`` for custom resources: created, updated or unchanged."""
        group, version = obj["apiVersion"].split("/")
        name, ns = obj["metadata"]["name"], obj["metadata"]["namespace"]
        custom = client.CustomObjectsApi(self.api)
        try:
            current = custom.get_namespaced_custom_object(group, version, ns, plural, name)
        except ApiException as e:
            if e.status != 404:
                raise
            custom.create_namespaced_custom_object(group, version, ns, plural, obj)
            return "created"
        if not drifted(obj, current):
            return "unchanged"
        custom.patch_namespaced_custom_object(group, version, ns, plural, name, obj)
        return "updated"

    def get_deployment(self, name: str, ns: str) -> dict[str, Any] | None:
        try:
            return self._plain(self.apps.read_namespaced_deployment(name, ns))
        except ApiException as e:
            if e.status == 404:
                return None
            raise

    def list_pods(self, ns: str, selector: str) -> list[dict[str, Any]]:
        pods = self.core.list_namespaced_pod(ns, label_selector=selector)
        return [self._plain(p) for p in pods.items]

    def create_pod(self, pod: dict[str, Any]) -> bool:
        try:
            self.core.create_namespaced_pod(pod["metadata"]["namespace"], pod)
        except ApiException as e:
            if e.status == 409:
                return False
            raise
        return True

    def delete_pod(self, name: str, ns: str) -> None:
        try:
            self.core.delete_namespaced_pod(name, ns)
        except ApiException as e:
            if e.status != 404:
                raise

    def set_role(self, name: str, ns: str, role: str) -> None:
        self.core.patch_namespaced_pod(name, ns, {"metadata": {"labels": {ROLE_LABEL: role}}})
