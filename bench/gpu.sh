#!/usr/bin/env bash
# The benchmark rows on a CUDA GPU, within 8 minutes: `bash bench/gpu.sh` on a machine with a GPU.
#
# It builds the venv if needed (pip takes torch from the machine's own index), starts Redis and PostgreSQL
# when they are installed but down (row 4 needs them; it is skipped when they are missing), and writes
# bench/results/<date>-cuda.md (and .json) with the GPU's name. GPU figures are reported only from a run of it.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-bench/results}
PY=${PY:-.venv/bin/python}
if [ ! -x "$PY" ]; then
    make venv
fi
"$PY" - <<'PY'
import torch, sys
if not torch.cuda.is_available():
    sys.exit("bench/gpu.sh needs a CUDA GPU; torch sees none (use `make bench` on a CPU)")
print("GPU:", torch.cuda.get_device_name(0), "torch", torch.__version__)
PY
rows=1,2,3,5
if bash scripts/services.sh >/dev/null 2>&1; then
    rows=1,2,3,4,5
else
    echo "Redis/PostgreSQL not available: the queue row (4) is left out" >&2
fi
gpus=$(nvidia-smi --query-gpu=index --format=csv,noheader 2>/dev/null | wc -l || echo 0)
if [ "$gpus" -ge 2 ]; then
    rows="$rows,9"  # --ddp 2 against one process: the scaling efficiency
else
    echo "one GPU: the --ddp 2 scaling row (9) needs two and is left out" >&2
fi
mkdir -p "$OUT"
timeout 470 "$PY" bench/run.py --device cuda --rows "$rows" --out "$OUT" --work "${WORK:-bench/work-cuda}"
