#!/usr/bin/env bash
# One prepared check for a lent GPU, at most about 5 minutes in all:
#   1. the CUDA tests (tests/test_model.py and tests/test_train.py with a visible GPU);
#   2. bench_model on CUDA in bf16: tiny16 (MAR and AR) and fractalmar_base_in256 at batch 64
#      (train step time, images/s, peak memory, sampling time), one JSON line per figure;
#   3. a 200-step smoke run of config/train_default.yaml on the GPU.
# Usage, from anywhere:   bash benchmarks/gpu_check.sh        (PYTHON=... to pick the interpreter)
# Without CUDA it stops at once with an error line and exit status 1. Each step has its own
# time limit; a step that fails or times out is reported and the script exits non-zero at the
# end, after the remaining steps have run.
set -uo pipefail

cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
PY="${PYTHON:-python}"
OUT="${GPU_CHECK_OUT:-$(mktemp -d /tmp/gpu_check.XXXXXX)}"
mkdir -p "$OUT"
failed=()

if ! "$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)'; then
    echo "error: benchmarks/gpu_check.sh needs a CUDA GPU, but torch.cuda.is_available() is False" >&2
    exit 1
fi
"$PY" - <<'EOF'
import torch
props = torch.cuda.get_device_properties(0)
print(f"gpu: {props.name}, {props.total_memory / 2**30:.0f} GiB, torch {torch.__version__}, "
      f"CUDA {torch.version.cuda}, bf16 {torch.cuda.is_bf16_supported()}", flush=True)
EOF

step() {  # step NAME SECONDS COMMAND...
    local name=$1 limit=$2
    shift 2
    echo "== $name (limit ${limit}s)"
    local t0=$SECONDS
    timeout --kill-after=10 "$limit" "$@"
    local rc=$?
    echo "== $name: exit $rc after $((SECONDS - t0))s"
    if [ "$rc" -ne 0 ]; then failed+=("$name (exit $rc)"); fi
}

# Time limits add up to 290 s; on an idle GPU machine the steps take well under them.
# 1. CUDA tests: the model on every device with autocast and in bf16, the GPU trainer's
#    checks, and any test named for CUDA or the GPU (RNG state, DDP).
step "cuda tests" 75 "$PY" -m pytest -q -p no:cacheprovider \
    tests/test_model.py tests/test_train.py tests/test_ddp.py tests/test_lightning.py \
    -k "cuda or gpu or device or non_fp32 or user_mistakes"

# 2. Benchmarks, bf16 autocast on CUDA (wall clock, synchronised). The base model samples
#    with fewer steps (8,4,4: 128 pixel-head rounds) so that two samplings fit the budget.
step "bench tiny16 mar" 30 "$PY" benchmarks/bench_model.py --preset tiny16 --gen mar \
    --device cuda --bf16 --steps 20 --warmup 5 --sample-steps 3
step "bench tiny16 ar" 40 "$PY" benchmarks/bench_model.py --preset tiny16 --gen ar \
    --device cuda --bf16 --steps 20 --warmup 5 --sample-steps 3
step "bench fractalmar_base_in256 b64" 75 "$PY" benchmarks/bench_model.py \
    --preset fractalmar_base_in256 --device cuda --bf16 --batch 64 --steps 8 --warmup 2 \
    --sample-steps 1 --num-iter 8,4,4

# 3. A 200-step smoke run of the default GPU config, in a throw-away output folder.
step "train_default 200 steps" 70 "$PY" main.py --config config/train_default.yaml \
    --experiment.output_root "$OUT/runs" --trainer.max_steps 200 \
    --trainer.val_every_n_steps 100 --trainer.accelerator gpu --sampling.num_images 4

if [ "${#failed[@]}" -ne 0 ]; then
    printf 'error: gpu_check failed: %s\n' "${failed[@]}" >&2
    exit 1
fi
echo "gpu_check: all steps passed (outputs in $OUT)"
