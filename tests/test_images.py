"""The operator image, built by images/build_images.py with no Docker engine and no
registry (Debian's mmdebstrap and umoci), then run by an OCI runtime (runc) as the pods run it:
as uid 10001 on a read-only root filesystem. Needs root, as the build does (CI runs as root;
`make system-deps` installs the tools)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "images"))
import build_images as build  # noqa: E402

from ascendra import __version__  # noqa: E402

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="building an image needs root")


def test_the_lock_is_what_the_tested_environment_runs():
    """images/operator.lock pins what the project's environment has installed (what the tests
    ran against); a dependency changed without re-locking fails here, not in a pod."""
    assert build.locked(build.IMAGES["operator"]) == build.resolve(build.IMAGES["operator"])


@pytest.fixture(scope="module")
def layout(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    out = tmp_path_factory.mktemp("images")
    archive = build.build(build.IMAGES["operator"], out)
    assert archive.name == f"ascendra-operator-{__version__}.oci.tar"
    d = out / "layout"
    with tarfile.open(archive) as t:
        t.extractall(d, filter="tar")
    yield d


def _blob(layout: Path, digest: str) -> dict:
    return json.loads((layout / "blobs" / "sha256" / digest.split(":")[1]).read_text())


@needs_root
def test_the_image_says_what_it_is_and_runs_as_a_user(layout: Path):
    index = json.loads((layout / "index.json").read_text())
    (entry,) = index["manifests"]
    assert entry["annotations"]["org.opencontainers.image.ref.name"] == __version__
    config = _blob(layout, _blob(layout, entry["digest"])["config"]["digest"])
    labels = config["config"]["Labels"]
    assert labels["org.opencontainers.image.version"] == __version__
    assert labels["org.opencontainers.image.revision"] == build.revision()
    assert config["config"]["User"] == "10001:10001"
    assert config["config"]["Entrypoint"] == ["/opt/ascendra/bin/ascendra"]
    assert config["config"]["Cmd"] == ["operator"]


def _run(layout: Path, tmp_path: Path, args: list[str] | None) -> str:
    """Run the image with runc, read-only root, ``args`` in place of its command."""
    bundle = tmp_path / "bundle"
    subprocess.run(["umoci", "unpack", "--image", f"{layout}:{__version__}", str(bundle)],
                   check=True, capture_output=True)
    cfg = json.loads((bundle / "config.json").read_text())
    if args is not None:
        cfg["process"]["args"] = args
    cfg["process"]["terminal"] = False
    cfg["root"]["readonly"] = True
    (bundle / "config.json").write_text(json.dumps(cfg))
    done = subprocess.run(["runc", "run", "--bundle", str(bundle), f"t-{tmp_path.name}"],
                          capture_output=True, text=True, timeout=120)
    shutil.rmtree(bundle)
    assert done.returncode == 0, done.stderr
    return done.stdout


@needs_root
def test_the_operator_and_router_start_in_it_as_the_pods_run_them(layout: Path,
                                                                     tmp_path: Path):
    assert _run(layout, tmp_path, ["/opt/ascendra/bin/ascendra", "--version"]).strip() == \
        f"ascendra {__version__}"
    out = _run(layout, tmp_path, ["/opt/ascendra/bin/python", "-c", (
        "import os, ascendra.operator.handlers, ascendra.router.app, ascendra.router.server;"
        "print(os.getuid(), os.getgid(), os.environ['HOME'])")])
    assert out.split() == ["10001", "10001", "/home/ascendra"]
    help_text = _run(layout, tmp_path, ["/opt/ascendra/bin/ascendra", "router", "--help"])
    assert "--config" in help_text
