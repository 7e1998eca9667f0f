#!/usr/bin/env bash
# Reproduce the README's GPU tables: the GPU tests, packed training (and the packed layout against
# vmap at small widths), Hessian (vmapped forward-over-reverse against packed double backward) and
# surface benchmarks, and the loop step on several CUDA streams, each writing JSON into OUT_DIR.
# All steps take up to 24 minutes on an H100 (each step's time limit), more than one device call
# may run: name steps to split them over calls (in priority order):
#
#     bash benchmarks/run_gpu.sh OUT_DIR tests replay taxonomy   # at most 8 minutes (~6.5 on an H200)
#     bash benchmarks/run_gpu.sh OUT_DIR concurrency layouts     # at most 6 minutes
#     bash benchmarks/run_gpu.sh OUT_DIR hessian                 # at most 4.7 minutes
#     bash benchmarks/run_gpu.sh OUT_DIR streams surfaces        # at most 5 minutes
#     bash benchmarks/run_gpu.sh OUT_DIR profile                 # at most 4 minutes
#     bash benchmarks/run_gpu.sh OUT_DIR packing                 # at most 5.5 minutes
#     bash benchmarks/run_gpu.sh OUT_DIR transformer             # at most 3 minutes
#     bash benchmarks/run_gpu.sh OUT_DIR                         # all of them
#     bash benchmarks/run_gpu.sh OUT_DIR grokking                # at most 10 minutes; not in "all"
#
# Needs torch with CUDA, torchvision, numpy and scikit-learn (no Ray, no Hydra): landscape/ is
# imported from this checkout. Each step has a time limit, so one slow step cannot eat the rest.
set -u
all="tests replay taxonomy concurrency layouts hessian streams packing transformer surfaces profile"
# grokking is named only explicitly (see its step)
out=${1:?usage: bash benchmarks/run_gpu.sh OUT_DIR [STEP ...] (steps: $all)}
shift
steps=${*:-$all}
mkdir -p "$out"
cd "$(dirname "$0")/.."
export PYTHONPATH=. PYTHONUNBUFFERED=1
py=${PYTHON:-python3}

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$out/gpu.txt"
for step in $steps; do
    echo "== $step"
    case $step in
    tests)
        timeout 150 "$py" -m pytest -q -m gpu tests/landscape 2>&1 | tail -15 |
            tee "$out/gpu_tests.txt" ;;
    replay)  # which part of the packed bf16 step a graph replay computes differently (issue 15)
        timeout 90 "$py" benchmarks/diagnose_replay.py --out "$out/diagnose_replay.json" 2>&1 |
            tee "$out/diagnose_replay.txt" ;;
    taxonomy)  # the flagship preset's cells end to end (capped at an H100's 80 GB), projection, concurrency
        timeout 330 "$py" benchmarks/bench_taxonomy.py --budget-s 240 --concurrency --memory-gb 80 \
            --out "$out/bench_taxonomy.json" 2>&1 | tee "$out/bench_taxonomy.log" | tail -4 ;;
    concurrency)  # 4 and 13 width-8 packs: one process on streams, processes, processes + MPS
        timeout 200 "$py" benchmarks/bench_concurrency.py --out "$out/bench_concurrency.json" ;;
    layouts)
        timeout 150 "$py" benchmarks/bench_packing.py --device cuda --model resnet18 \
            --widths 4 8 16 --pack-sizes 32 64 --step-modes vmap packed --modes graph \
            --rounds 3 --out "$out/bench_packing_layouts.json" | grep -E '^peak|x$|x ' ;;
    hessian)
        timeout 280 "$py" benchmarks/bench_hessian.py --device cuda --models resnet18=4,8,16 \
            --members 8 --loop-members 2 --hvp-modes vmap packed \
            --out "$out/bench_hessian.json" | grep width ;;
    streams)
        timeout 200 "$py" benchmarks/bench_packing.py --device cuda --model resnet18 \
            --widths 16 32 64 --pack-sizes 8 32 --step-modes loop --streams 1 2 4 --modes graph \
            --rounds 3 --out "$out/bench_packing_streams.json" | grep -E '^peak' ;;
    packing)
        timeout 330 "$py" benchmarks/bench_packing.py --device cuda --model resnet18 \
            --widths 4 8 16 32 64 --pack-sizes 8 32 64 --modes graph --rounds 3 \
            --out "$out/bench_packing.json" | grep -E '^peak' ;;
    transformer)  # issue 24's goal: 64 one-block transformers (d_model 128, a + b mod 97, full
        # batch, AdamW, fp32) packed at >= 10x the model-steps/s of one nn.Module at a time
        timeout 180 "$py" benchmarks/bench_packing.py --device cuda --model transformer \
            --widths 128 --pack-sizes 1 8 64 --step-modes vmap loop --precision fp32 \
            --steps 10 --warmup 3 --rounds 3 --out "$out/bench_packing_transformer.json" |
            grep -E '^peak|"pack": 64' ;;
    surfaces)
        timeout 100 "$py" benchmarks/bench_surfaces.py --device cuda \
            --out "$out/bench_surfaces.json" > "$out/bench_surfaces.log" 2>&1 ;;
    profile)  # where the time goes: vmap against the packed layout, training and HVPs
        for m in vmap packed; do
            timeout 60 "$py" benchmarks/profile_step.py --device cuda --width 8 --pack 32 \
                --step-mode $m > "$out/profile_step_$m.txt" 2>&1
            timeout 60 "$py" benchmarks/profile_step.py --device cuda --width 4 --pack 8 \
                --hvp $m --probes 1 > "$out/profile_hvp_$m.txt" 2>&1
        done ;;
    grokking)  # sweep=grokking_modadd (issue 25), then its claims; not in the default steps. The
        # device's Python has no Ray or Hydra: the preset's packs were composed here, with Hydra,
        # into benchmarks/plans/grokking_modadd.json (a test keeps it current); run_plan.py trains
        # and measures them with the sweep's worker and store, one pack after another
        timeout 540 "$py" benchmarks/run_plan.py run benchmarks/plans/grokking_modadd.json \
            "$out/grokking/grokking_modadd" --device cuda --budget-s 420 2>&1 |
            tail -8 | tee "$out/grokking_sweep.txt"
        timeout 120 "$py" -m analysis.report "$out/grokking/grokking_modadd" \
            --out "$out/grokking/grokking_modadd/report" 2>&1 | tail -2
        timeout 60 "$py" -m analysis.claims "$out/grokking/grokking_modadd" \
            --json "$out/grokking_claims.json" 2>&1 | tee "$out/grokking_claims.txt"
        # between seeds by grokking phase (the report's table), where the sweep got that far
        cp "$out/grokking/grokking_modadd/report/grokking_pairs.csv" "$out/" 2>/dev/null ||
            echo "no grokking_pairs.csv: the sweep's report did not reach the pairs" ;;
    *) echo "unknown step $step (steps: $all)" >&2; exit 2 ;;
    esac
done
ls -l "$out"
