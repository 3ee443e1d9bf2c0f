#!/bin/bash
# The GPU path in one go, for a lent accelerator: at the paper's size (256 px, dim 64) with
# bfloat16 autocast and channels-last, it prints the arithmetic ceiling, stage-1 seconds per
# iteration eager and with torch.compile, the largest stage-1 batch that fits and its
# throughput, stage-2 slices/s (training and content-only precomputation), and runs a short
# stage-1 training (from SLICE_CACHE if given, e.g. .gpu/slices128.pt.xz, the built-in phantoms
# otherwise). About 5 minutes on one H100/H200; every step's wall time is printed.
#   bash scripts/gpu_check.sh                      # on the GPU machine, in the repository root
#   SIZE=64 DIM=4 ITERS=2 TRAIN_ITERS=4 LIMIT=2 DEVICE=cpu COMPILE=False bash scripts/gpu_check.sh   # a tiny run anywhere (the test's)
# Environment: SIZE DIM ITERS TRAIN_ITERS LIMIT (largest batch tried) DEVICE (default cuda if
# available) COMPILE (False skips the compiled run: on a small CPU compiling alone takes minutes)
# SLICE_CACHE OUT (run folder, default a temporary one) PY (python).
set -euo pipefail
PY=${PY:-python}
SIZE=${SIZE:-256}; DIM=${DIM:-64}; ITERS=${ITERS:-10}; TRAIN_ITERS=${TRAIN_ITERS:-300}; LIMIT=${LIMIT:-256}; COMPILE=${COMPILE:-True}
DEVICE=${DEVICE:-$($PY -c "import torch; print('cuda' if torch.cuda.is_available() else 'cpu')")}
OUT=${OUT:-$(mktemp -d)}
N=$([ "$DEVICE" = cpu ] && echo 256 || echo 8192)
T0=$(date +%s)
step() {  # title command...: run it, keep its last line, print the wall time
  local title=$1; shift
  local start=$(date +%s)
  local line
  line=$("$@" 2>&1 | tail -1)
  echo "$title: $line ($(( $(date +%s) - start )) s)"
}
$PY -c "import torch; print('torch', torch.__version__, 'device', '$DEVICE', torch.cuda.get_device_name() if '$DEVICE' != 'cpu' else 'cpu')"
step "ceiling" $PY scripts/benchmark.py matmul --n $N --dtype bfloat16 --device $DEVICE
step "stage 1 eager" $PY scripts/benchmark.py drl --size $SIZE --dim $DIM --iters $ITERS --amp bfloat16 --channels_last True --device $DEVICE
[ "$COMPILE" = False ] || step "stage 1 compiled" $PY scripts/benchmark.py drl --size $SIZE --dim $DIM --iters $ITERS --amp bfloat16 --channels_last True --compile True --device $DEVICE
step "stage 1 largest batch" $PY scripts/benchmark.py max_batch --size $SIZE --dim $DIM --limit $LIMIT --channels_last True --device $DEVICE
step "stage 2" $PY scripts/benchmark.py seg --size $SIZE --dim $DIM --batch 16 --iters $ITERS --amp bfloat16 --device $DEVICE
DATA=(--dataset_dir "$OUT/phantoms" --phantom_subjects 2)
[ -n "${SLICE_CACHE:-}" ] && DATA=(--slice_cache "$SLICE_CACHE")
step "stage 1 training, $TRAIN_ITERS iterations" $PY -m monai.bundle run training --config_file configs/drl_train.yaml "${DATA[@]}" \
  --device $DEVICE --image_size $SIZE --dim $DIM --amp bfloat16 --max_iterations $TRAIN_ITERS --val_interval $TRAIN_ITERS \
  --n_val_slices 8 --output_dir "$OUT/drl" --drl_path "$OUT/drl/drl.pth"
test -s "$OUT/drl/drl.pth"
echo "gpu_check: done in $(( $(date +%s) - T0 )) s; weights $OUT/drl/drl.pth"
