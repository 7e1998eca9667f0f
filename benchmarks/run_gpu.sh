#!/usr/bin/env bash
# Reproduce the README's GPU tables in one go (about 10 minutes on an H100): the GPU tests, then
# packed training (and the packed layout against vmap at small widths), Hessian and surface
# benchmarks, each writing JSON into OUT_DIR.
#
#     bash benchmarks/run_gpu.sh OUT_DIR
#
# Needs torch with CUDA, torchvision, numpy and scikit-learn (no Ray, no Hydra): landscape/ is
# imported from this checkout. Each step has a time limit, so one slow step cannot eat the rest.
set -u
out=${1:?usage: bash benchmarks/run_gpu.sh OUT_DIR}
mkdir -p "$out"
cd "$(dirname "$0")/.."
export PYTHONPATH=. PYTHONUNBUFFERED=1
py=${PYTHON:-python3}

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$out/gpu.txt"
timeout 120 "$py" -m pytest -q -m gpu tests/landscape/test_cuda.py 2>&1 | tail -3 | tee "$out/gpu_tests.txt"
timeout 330 "$py" benchmarks/bench_packing.py --device cuda --model resnet18 \
    --widths 4 8 16 32 64 --pack-sizes 8 32 64 --modes graph --rounds 3 \
    --out "$out/bench_packing.json" | grep -E '^peak'
timeout 150 "$py" benchmarks/bench_packing.py --device cuda --model resnet18 \
    --widths 4 8 16 --pack-sizes 32 64 --step-modes vmap packed --modes graph --rounds 3 \
    --out "$out/bench_packing_layouts.json" | grep -E '^peak'
timeout 200 "$py" benchmarks/bench_hessian.py --device cuda --models resnet18=4,8,16 \
    --members 8 --loop-members 2 --out "$out/bench_hessian.json" | grep width
timeout 100 "$py" benchmarks/bench_surfaces.py --device cuda \
    --out "$out/bench_surfaces.json" > "$out/bench_surfaces.log" 2>&1
ls -l "$out"
