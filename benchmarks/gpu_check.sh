#!/usr/bin/env bash
# `camlens evaluate` on CUDA, the first time a GPU is available: the GPU tests, the end-to-end benchmark and a
# torchrun run over every GPU of the machine compared with one process. About 2-4 minutes; run from anywhere:
#     bash benchmarks/gpu_check.sh            # uses `python` (or PYTHON=/path/to/python bash benchmarks/gpu_check.sh)
# Written without a GPU at hand (none on the machine it was written on): read, not yet run.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
"$PY" - <<'PYEOF'
import sys, torch
if not torch.cuda.is_available():
    sys.exit("gpu_check: no CUDA device visible to torch; nothing to check")
for i in range(torch.cuda.device_count()):
    p = torch.cuda.get_device_properties(i)
    print(f"cuda:{i} {p.name} {p.total_memory / 2**30:.1f} GiB, torch {torch.__version__}")
PYEOF
echo "== 1/3 the tests marked gpu (tests/test_evaluate_scaling.py)"
"$PY" -m pytest -q -m gpu tests/test_evaluate_scaling.py
echo "== 2/3 benchmark: 64 photos, forward only vs evaluate, 2 rounds, 2 DataLoader workers"
"$PY" benchmarks/bench_evaluate.py --device cuda --rounds 2 --workers 2 --threads 2
echo "== 3/3 torchrun over every GPU (nccl) == one process, on the demo set"
GPUS=$("$PY" -c "import torch; print(torch.cuda.device_count())")
OUT=$(mktemp -d)
trap 'rm -rf "$OUT"' EXIT
"$PY" -m camlens evaluate --demo --device cuda --batch-size 1 --out "$OUT/one"
"$PY" -m torch.distributed.run --standalone --nproc-per-node "$GPUS" -m camlens evaluate --demo --device cuda \
    --batch-size 1 --out "$OUT/many"
"$PY" - "$OUT" <<'PYEOF'
import json, sys
from pathlib import Path

def table(folder):
    doc = json.loads((folder / "results.json").read_text().replace(str(folder), "OUT"))
    for row in doc["rows"].values():
        row.pop("seconds_per_image")
    return {k: v for k, v in doc.items() if k not in ("seconds", "files")}

out = Path(sys.argv[1])
same = table(out / "one") == table(out / "many")
print("gpu_check: torchrun table", "== one process" if same else "DIFFERS from one process")
sys.exit(0 if same else 1)
PYEOF
echo "gpu_check: done; add benchmarks/results/evaluate-cuda.json's numbers to docs/benchmarks.md and docs/scaling.md"
