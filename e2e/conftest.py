"""Fixtures for the end-to-end suite: a real API server (or the one your kubeconfig names) and
the operator running against it.

Against your own cluster (kind, a GPU cluster): ``ASCENDRA_E2E_KUBECONFIG=~/.kube/config
pytest e2e``. The suite then uses that cluster as it is, in namespaces of its own, and expects GPU
nodes labelled ``ascendra.io/gpu-pool=h100`` with ``nvidia.com/gpu`` capacity and the
``nvidia.com/gpu`` NoSchedule taint (docs/kubernetes.md).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from cluster import LocalCluster
from e2e_support import ROOT, Kubectl, Operator, eventually, restricted_namespace


@pytest.fixture(scope="session")
def kubeconfig() -> Iterator[Path]:
    own = os.environ.get("ASCENDRA_E2E_KUBECONFIG")
    if own:
        yield Path(own).expanduser()
        return
    with LocalCluster() as cluster:
        yield cluster.kubeconfig


@pytest.fixture(scope="session")
def kubectl(kubeconfig: Path) -> Kubectl:
    k = Kubectl(kubeconfig)
    k("apply", "-f", str(ROOT / "crds" / "ascendraservices.yaml"))
    eventually(lambda: "ascendraservices" in k("api-resources", "--api-group=ascendra.io").stdout,
               what="the CRD being served")
    return k


@pytest.fixture(scope="session")
def operator(kubectl: Kubectl, kubeconfig: Path, tmp_path_factory: pytest.TempPathFactory
             ) -> Iterator[Operator]:
    op = Operator(kubeconfig, tmp_path_factory.mktemp("operator") / "operator.log")
    op.start()
    yield op
    op.stop()
    print(op.log.read_text()[-4000:])


@pytest.fixture
def namespace(kubectl: Kubectl, request: pytest.FixtureRequest) -> Iterator[str]:
    name = "e2e-" + request.node.name.replace("_", "-")[:40].rstrip("-").lower()
    restricted_namespace(kubectl, name)
    yield name
    kubectl("delete", "namespace", name, "--wait=false", check=False)
