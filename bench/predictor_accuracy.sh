#!/usr/bin/env bash
# The learned predictor's accuracy on real engines (docs/predictor.md). H100 (one run of each
# system, one profile): train on 4 of every 5 blocks of observations and evaluate on the fifth
# (--split); step times by 5-fold cross-validation over the profile. CPU engine: trained on one
# run and scored on another (held-out profiling run, held-out serving run; the commands that
# made them are in docs/predictor.md). Reports go to docs/results/predictor/.
set -euo pipefail
out=docs/results/predictor
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
gpu=docs/results/gpu/round3
h100=ascendra/data/profiles/llama31-8b-h100-vllm026.csv
for system in vllm sarathi ascendra; do
  obs=$gpu/gpu1-$system-sustained.observations.jsonl.gz
  ascendra predictor train --model llama31-8b --observations "$obs" --split --out "$tmp/$system.json"
  ascendra predictor eval --model llama31-8b --predictor "$tmp/$system.json" --observations "$obs" \
    --split --profile "$h100" --model-config bench/gpu/llama31-8b/config.json --gpu h100 \
    --json "$out/h100-$system.json" > /dev/null
done
cpu=$out/cpu
ascendra predictor train --model tiny-llama --observations "$cpu-train.observations.jsonl.gz" \
  --out "$tmp/cpu.json"
ascendra predictor eval --model tiny-llama --predictor "$tmp/cpu.json" \
  --observations "$cpu-heldout.observations.jsonl.gz" \
  --profile ascendra/data/profiles/tiny-llama-vllm-cpu.csv --test-profile "$cpu-heldout.profile.csv" \
  --model-config tiny-llama --json "$out/cpu-vllm.json" > /dev/null
python - "$out" <<'PY'
import json, sys, pathlib
for f in sorted(pathlib.Path(sys.argv[1]).glob("*.json")):
    r = json.loads(f.read_text())
    if "ttft" not in r:
        continue
    t, i = r["ttft"], r.get("iteration", {})
    print(f"{f.stem:14s} step MdAPE {i.get('mdape_learned', float('nan')):.3f} "
          f"(roofline {i.get('mdape_roofline', float('nan')):.3f}, "
          f"same composition {i.get('mdape_same_composition') or float('nan'):.3f})  "
          f"TTFT MdAPE {t['mdape_learned']:.3f} / at arrival {t['mdape_learned_arrival']:.3f} "
          f"(analytic {t['mdape_analytic_arrival']:.3f})  "
          f"in vain learned {t['learned_rule']['in_vain']} paper {t['paper_rule']['in_vain']}  "
          f"recall {t['learned_rule']['recall']:.3f} / {t['paper_rule']['recall']:.3f}")
PY
