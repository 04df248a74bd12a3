#!/usr/bin/env bash
# On the GPU machine, after stage.py's groups were copied to /tmp/ascendra-wheels: join the cut
# vLLM wheel and install every wheel into /tmp/site (use with PYTHONPATH=/tmp/site).
set -euo pipefail
cd /tmp/ascendra-wheels
for first in *.part00; do
  [ -e "$first" ] || continue
  base=${first%.part00}
  cat $(ls "$base".part* | sort) > "$base"
  rm "$base".part*
done
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site ./*.whl
PYTHONPATH=/tmp/site python3 -c "import vllm, fastapi, orjson, ascendra.router.app; print('vllm', vllm.__version__)"
