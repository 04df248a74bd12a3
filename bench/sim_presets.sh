#!/usr/bin/env bash
# Every simulated comparison in docs/simulator.md, re-run: each preset's QPS sweep of all its
# systems (Ascendra as deployed, the paper's design, and the baselines), then Ascendra with one
# HP on the multi-instance presets (does a split pay?). Writes JSON and PNG under docs/results/.
#   bash bench/sim_presets.sh            # about an hour on a 2-core machine
set -euo pipefail
cd "$(dirname "$0")/.."
sim() { .venv/bin/ascendra sim --quiet "$@"; }
for p in paper-sharegpt paper-longbench azure-conv azure-code one-h100-sharegpt \
         one-h100-longbench-gaps; do
    sim --preset "$p" --json "docs/results/$p.json" --plot "docs/results/$p.png"
done
for p in paper-sharegpt paper-longbench azure-conv azure-code; do
    sim --preset "$p" --systems ascendra --hp 1 --json "docs/results/split/$p-hp1.json"
done
