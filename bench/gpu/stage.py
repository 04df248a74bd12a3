"""Stage everything the GPU runs need into carry-sized groups (run here, not on the GPU).

The GPU machine has Python 3.12 and torch 2.11.0+cu130 but no vLLM, no FastAPI and no network,
and each device call carries at most 64 MiB. This downloads vLLM 0.26.0 and the wheels its API
server needs (``wheels-need.txt``, from the team's GPU notes) plus what Ascendra adds (orjson),
builds Ascendra's own wheel, cuts the vLLM wheel into pieces and packs everything into groups of
at most ``--group-mb`` under ``.gpu-wheels/stage/gN`` (a folder ``.gitignore`` ignores).

    python bench/gpu/stage.py            # prints one device call per group, then the run

On the device each group is copied to /tmp/ascendra-wheels (carry it, copy it, next call at
once: the machine is given back 30 s after a call ends); ``device_install.sh`` reassembles and
installs them into /tmp/site.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
CACHE = ROOT / ".gpu-wheels"
PLATFORMS = [f"manylinux_2_{n}_x86_64" for n in range(5, 41)] + ["manylinux2014_x86_64", "any"]
EXTRA = ["orjson==3.13.0"]


def download(dest: Path) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    plats = [a for p in PLATFORMS for a in ("--platform", p)]
    subprocess.run([sys.executable, "-m", "pip", "download", "--isolated", "--no-deps",
                    "--only-binary=:all:", "--python-version", "3.12", "--implementation", "cp",
                    *plats, "-d", str(dest), "vllm==0.26.0", *EXTRA,
                    "-r", str(HERE / "wheels-need.txt")], check=True)


def own_wheel(dest: Path) -> None:
    for old in dest.glob("ascendra-*.whl"):
        old.unlink()
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(dest),
                    str(ROOT)], check=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    # A device call carries 64 MiB with the working tree (about 12 MB in 2026-12).
    ap.add_argument("--group-mb", type=int, default=50)
    args = ap.parse_args()
    wheels = CACHE / "wheels"
    if not any(wheels.glob("vllm-0.26.0-*.whl")):
        download(wheels)
    own_wheel(wheels)
    stage = CACHE / "stage"
    shutil.rmtree(stage, ignore_errors=True)
    limit = args.group_mb * 1_000_000
    items: list[tuple[str, bytes | Path]] = []
    for whl in sorted(wheels.glob("*.whl")):
        if whl.stat().st_size <= limit:
            items.append((whl.name, whl))
            continue
        data = whl.read_bytes()  # cut: NAME.partNN, joined on the device in order
        for i in range(0, len(data), limit):
            items.append((f"{whl.name}.part{i // limit:02d}", data[i:i + limit]))
    groups: list[list[tuple[str, bytes | Path]]] = [[]]
    size = 0
    for name, item in sorted(items, key=lambda x: -_size(x[1])):
        n = _size(item)
        placed = False
        for g in groups:  # first fit, largest first
            if sum(_size(i) for _, i in g) + n <= limit:
                g.append((name, item))
                placed = True
                break
        if not placed:
            groups.append([(name, item)])
        size += n
    for k, g in enumerate(groups, 1):
        d = stage / f"g{k}"
        d.mkdir(parents=True)
        for name, item in g:
            if isinstance(item, Path):
                shutil.copy(item, d / name)
            else:
                (d / name).write_bytes(item)
    print(f"{size / 1e6:.0f} MB in {len(groups)} groups under {stage}")
    for k in range(1, len(groups) + 1):
        print(f"  run(carry=['.gpu-wheels/stage/g{k}'], command='mkdir -p /tmp/ascendra-wheels "
              f"&& cp .gpu-wheels/stage/g{k}/* /tmp/ascendra-wheels/')")


def _size(item: bytes | Path) -> int:
    return len(item) if isinstance(item, bytes) else item.stat().st_size


if __name__ == "__main__":
    main()
