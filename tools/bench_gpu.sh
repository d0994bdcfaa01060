#!/usr/bin/env bash
# `make bench` on a GPU machine that has torch but no internet: its python3 holds torch, torchvision and
# tensorboard; Hydra, OmegaConf and antlr4 (pure Python) come along in .gpu_site/. Results land in $OUT.
# The paired cases for CUDA (tools/bench.py cases_for): digits, resnet18 bf16+channels_last, the GPT in
# bf16 (tokens/s); blocks of 50 steps, each closed by torch.cuda.synchronize().
#   bash tools/bench_gpu.sh [extra tools/bench.py arguments]
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
OUT=${OUT:-/tmp/bench-gpu}
mkdir -p "$OUT"
export PYTHONPATH="$PWD/.gpu_site${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
"$PYTHON" -c "import torch, torchvision, hydra, omegaconf, tensorboard; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"
"$PYTHON" tools/bench.py --device cuda --output "$OUT/benchmarks.md" --json "$OUT/bench_cuda.json" "$@" 2>&1 \
    | tee "$OUT/bench_cuda.log"
