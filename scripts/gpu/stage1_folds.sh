#!/bin/bash
# Stage 1 of the SABS -> CHAOS T2 cross-validation on one GPU (docs/RESULTS.md), as it ran on an H200:
# five trainings side by side from a slice cache (no volumes, no SimpleITK: scripts/gpu/SimpleITK is
# an importable stand-in that fails if called), each stopped after MIN minutes; then the paper-size
# stage-1 benchmark. Made here first:
#   python scripts/prepare_data.py slice_cache --datalist data/real/datalist_sabs.json --out .gpu/slices128.pt.xz
#   pip download monai==1.6.1 pytorch-ignite==0.5.5 nibabel==5.4.2 fire==0.7.1 termcolor -d .gpu/whl (--no-deps, cp312 manylinux)
# For the runs pseudo_f0 / pseudo_f1 (ours + the MR in the task term, --target_pseudo_labels), a fold's cache of its
# training MR with the agreed masks of its teachers: the fold_k/drl/datalist.json that the runner writes with
# --stage1_pseudo_labels True --split_source False (all 30 CT, as slices128.pt.xz) before its CPU stage 1 (stop it there):
#   python scripts/prepare_data.py slice_cache --datalist RUN/dadr/fold_0/drl/datalist.json --mr_pseudo_labels True --out .gpu/slices128_pseudo_f0.pt.xz
# and pseudo_all (the shipped model's stage 1: all 10 MR) from OUT/datalist.json of scripts/self_train.py --out OUT.
# Run there:  OUT=<folder for results> [RUNS="paper_f0 ..."] [MIN=6 | ITERS=10000] bash scripts/gpu/stage1_folds.sh
# ITERS: each run stops after that many iterations instead of MIN minutes, a multiple of the validation interval
# (500; 10000: the CPU runs of docs/RESULTS.md).
# OUT receives <run>.pt (the content path in float16: what stage 2 reads), summary.txt and logs.tgz.
set -u
T0=$(date +%s)
MIN=${MIN:-6}
LENGTH="--max_iterations 200000 --max_minutes $MIN"; [ -z "${ITERS:-}" ] || LENGTH="--max_iterations $ITERS"
PY=${PY:-python3}
[ -n "${SKIP_PIP:-}" ] || python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .gpu/whl/*.whl || exit 3
export PYTHONPATH=/tmp/site:$PWD/scripts/gpu:$PWD PYTHONUNBUFFERED=1 OMP_NUM_THREADS=2
(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || true) | tee $OUT/summary.txt
$PY -c "import torch, monai, ignite; print('torch', torch.__version__, 'monai', monai.__version__, 'ignite', ignite.__version__, torch.cuda.get_device_name())" 2>&1 | tee -a $OUT/summary.txt
F0="['chaos_mr_t2_1','chaos_mr_t2_31','chaos_mr_t2_33','chaos_mr_t2_38','chaos_mr_t2_3']"
F1="['chaos_mr_t2_13','chaos_mr_t2_19','chaos_mr_t2_21','chaos_mr_t2_36','chaos_mr_t2_8']"
PAPER="--task_weight 0 --content_adv_weight 0 --shared_res 0 --learning_rate 1e-4 --adversarial log"
OURS="--task_weight 1.0"
R=${R:-/tmp/runs}; mkdir -p $R
train() {  # name cache subjects options...
  local name=$1 cache=$2 subjects=$3; shift 3
  $PY -m monai.bundle run training --config_file configs/drl_train.yaml --image_size 128 --dim 32 --amp bfloat16 \
    --slice_cache $cache --cache_target_subjects "$subjects" $LENGTH --lr_step 200000 \
    --val_interval 500 --output_dir $R/$name "$@" > $R/$name.log 2>&1
  echo "$name rc=$? $(( $(date +%s) - T0 )) s" | tee -a $OUT/summary.txt
}
RUNS=${RUNS:-"paper_f0 paper_f1 ours_f0 ours_f1 ours_all"}
declare -A SUBJECTS=([paper_f0]="$F0" [paper_f1]="$F1" [ours_f0]="$F0" [ours_f1]="$F1" [ours_all]=None [pseudo_f0]=None [pseudo_f1]=None [pseudo_all]=None)
for n in $RUNS; do
  cache=.gpu/slices128.pt.xz
  case $n in paper_*) options=$PAPER ;; pseudo_*) options="$OURS --target_pseudo_labels True"; cache=.gpu/slices128_$n.pt.xz ;; *) options=$OURS ;; esac
  train $n $cache "${SUBJECTS[$n]}" $options &
done
sleep 60; (nvidia-smi || true) | tee -a $OUT/summary.txt; wait
for n in $RUNS; do
  grep -h "weights written" $R/$n.log | tail -1 | sed "s/^/$n last: /" >> $OUT/summary.txt
  $PY - $R/$n/drl.pth $OUT/$n.pt <<'PY' >> $OUT/summary.txt 2>&1
import sys, torch
s = torch.load(sys.argv[1], map_location="cpu", weights_only=True)
keep = {k: (v.half() if v.is_floating_point() and not k.startswith("trained_for") else v) for k, v in s.items()
        if k.startswith(("content_encoders.", "generators.ct.", "trained_for."))}
torch.save(keep, sys.argv[2]); print(sys.argv[2], len(keep), "tensors")
PY
done
tar czf $OUT/logs.tgz -C $R --exclude=checkpoints --exclude=drl.pth . 2>/dev/null
echo "training done $(( $(date +%s) - T0 )) s" | tee -a $OUT/summary.txt
for b in 1 8; do timeout 45 $PY scripts/benchmark.py drl --size 256 --dim 64 --batch $b --iters 10 --warmup 3 --amp bfloat16 2>&1 | tail -2 | tee -a $OUT/summary.txt; done
timeout 20 $PY scripts/benchmark.py matmul --n 8192 --dtype bfloat16 2>&1 | tail -1 | tee -a $OUT/summary.txt
echo "all done $(( $(date +%s) - T0 )) s" | tee -a $OUT/summary.txt
