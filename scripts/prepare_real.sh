#!/usr/bin/env bash
# Prepare every scan of the shared real-data folder with the documented CLI, then the datalist.
#   bash scripts/prepare_real.sh [REAL=../shared/data/real] [OUT=data/real]
# Cases are prepared JOBS at a time (default 2, the cores of the machines we run on).
# OUT/sabs_ct: the 30 labelled SABS (BTCV) CT volumes, the main CT source (SABS_IDS="0 1 2"
# prepares only those); OUT/ct: the other labelled CT subjects (one file per person);
# OUT/mr_t2: CHAOS T2-SPIR MR target, its labels serve evaluation only (MR_IDS="1 13" prepares
# only those); OUT/extra: scans that
# duplicate a subject or whose masks are model predictions (TotalSegmentator MR), prepared to
# show the formats work.
# SABS also keeps its 13 labels (NAME_labels.nii.gz, the datalists' "labels" key: the classes the synthetic
# source re-renders, train.yaml --synthesis True).
# SABS and CHAOS T2 also get an organ map (NAME_organs.nii.gz: liver, kidneys, spleen; the
# datalists' "organs" key) for multi-organ training (train.yaml --label_key organs).
# Datalists: OUT/datalist.json (source: every labelled CT) and OUT/datalist_sabs.json (source:
# SABS only, the CT source of the CT -> CHAOS T2 literature); both target the 10 CHAOS T2 patients.
set -euo pipefail
REAL=${1:-../shared/data/real}
OUT=${2:-data/real}
PY=${PYTHON:-.venv/bin/python}
JOBS=${JOBS:-2}
failed=0
# one case in the background; at JOBS running, wait for one to end (a failure is remembered)
prep() {
  "$PY" scripts/prepare_data.py case "$@" &
  if (( $(jobs -rp | wc -l) >= JOBS )); then wait -n || failed=1; fi
}

prep --image "$REAL/chaos_ct/1/DICOM_anon" --mask "$REAL/chaos_ct/1/Ground" --out "$OUT/ct" --name chaos_ct_1
prep --image "$REAL/totalseg/example_ct.nii.gz" --mask "$REAL/totalseg/example_seg_fast_force_split.nii.gz" --liver_label 5 --out "$OUT/ct" --name totalseg_ct
prep --image "$REAL/totalseg/example_ct_dicom" --mask "$REAL/totalseg/example_seg_dicom.nii.gz" --liver_label 5 --out "$OUT/ct" --name totalseg_ct_dicom
prep --image "$REAL/dcmqi_ct3" --mask "$REAL/dcmqi_ct3/liver_seg.nrrd" --out "$OUT/ct" --name dcmqi_ct3
prep --image "$REAL/totalseg/example_ct_sm.nii.gz" --mask "$REAL/totalseg/example_seg.nii.gz" --liver_label 5 --out "$OUT/extra" --name totalseg_ct_sm
prep --image "$REAL/totalseg/example_mr_sm.nii.gz" --mask "$REAL/totalseg/example_seg_mr.nii.gz" --liver_label 5 --out "$OUT/extra" --name totalseg_mr_sm
for id in ${SABS_IDS:-$(seq 0 29)}; do
  prep --image "$REAL/sabs_ct/image_$id.nii.gz" --mask "$REAL/sabs_ct/label_$id.nii.gz" --liver_label 6 \
    --organs right_kidney=2,left_kidney=3,spleen=1 --label_map True --out "$OUT/sabs_ct" --name "sabs_ct_$id"
done
for id in ${MR_IDS:-$(ls "$REAL"/chaos_mr_t2/image_*.nii.gz | sed 's/.*image_\(.*\)\.nii\.gz/\1/')}; do
  prep --image "$REAL/chaos_mr_t2/image_$id.nii.gz" --mask "$REAL/chaos_mr_t2/label_$id.nii.gz" --liver_label 1 \
    --organs right_kidney=2,left_kidney=3,spleen=4 --out "$OUT/mr_t2" --name "chaos_mr_t2_$id"
done
while (( $(jobs -rp | wc -l) > 0 )); do wait -n || failed=1; done
if (( failed )); then echo "error: some cases could not be prepared (their error lines are above)" >&2; exit 2; fi
"$PY" scripts/prepare_data.py datalist --source "$OUT/sabs_ct,$OUT/ct" --target "$OUT/mr_t2" --target_test "$OUT/mr_t2" --out "$OUT/datalist.json"
"$PY" scripts/prepare_data.py datalist --source "$OUT/sabs_ct" --target "$OUT/mr_t2" --target_test "$OUT/mr_t2" --out "$OUT/datalist_sabs.json"
