#!/usr/bin/env bash
# GPU benchmark: pairing throughput and the solver at N = 10^6, d = 3072, in under 8 minutes.
# Run from the repository root on a CUDA machine with sdfm installed (pip install -e .):
#     bash benchmarks/gpu.sh [OUT_DIR]        # writes OUT_DIR/gpu.json (default benchmarks/results)
# Stages (see benchmarks/gpu.py): data on the device (12 GiB), exact pairing of 65,536 noises in fp32 and
# in bf16 with exact re-scoring, 100 s solves at full d with fp32 and with bf16 scores, a 100 s solve in a
# 256-d PCA space.
set -euo pipefail
OUT_DIR="${1:-benchmarks/results}"
mkdir -p "$OUT_DIR"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
timeout 470 python benchmarks/gpu.py --out "$OUT_DIR/gpu.json" --n 1000000 --d 3072 --device cuda \
    --solve-seconds 100 --pca 256 --pca-seconds 100
echo "wrote $OUT_DIR/gpu.json"
