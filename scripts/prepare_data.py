"""Prepare real scans for the pipeline: NIfTI image + binary liver mask on its grid, and a datalist.

    python scripts/prepare_data.py case --image IMG --mask MASK --out DIR --name NAME [--liver_label K] [--organs right_kidney=2,left_kidney=3,spleen=4] [--label_map True]
    python scripts/prepare_data.py chaos --root ROOT --out DIR
    python scripts/prepare_data.py datalist --source DIR[,DIR...] --target DIR [--target_test DIR] --out FILE
    python scripts/prepare_data.py slice_cache --datalist FILE --out FILE.pt.xz [--image_size 128] [--mr_pseudo_labels True]
"""

import json

from bundle.cli import flag, run_cli
from bundle.data import prepare, slices


class PrepareData:
    """Data preparation commands (see ``bundle/data/prepare.py``)."""

    def case(self, image: str, mask: str, out: str, name: str, liver_label: int | None = None, organs: str | None = None,
             label_map: bool = False) -> None:
        """One scan: IMG (NIfTI/NRRD/MHA file or DICOM folder) + MASK (file, DICOM folder or PNG folder);
        --organs: the kidneys' and spleen's ids in a multi-class MASK, for the organ map NAME_organs.nii.gz;
        --label_map True: every label of MASK as NAME_labels.nii.gz (the synthetic source's tissue classes)."""
        print(json.dumps(prepare.prepare_case(image, mask, out, name, liver_label, organs, flag(label_map, "label_map"))))

    def chaos(self, root: str, out: str) -> None:
        """Every case of a CHAOS training-set folder (CT/<id>, MR/<id>/T1DUAL|T2SPIR)."""
        for summary in prepare.prepare_chaos(root, out):
            print(json.dumps(summary))

    def datalist(self, source: str, target: str, out: str, target_test: str | None = None) -> None:
        """Datalist JSON: labelled source (one folder or several, comma-separated), unlabelled target, optional labelled target_test."""
        datalist = prepare.make_datalist(source, target, out, target_test)
        print(f"{out}: " + ", ".join(f"{k}={len(v)}" for k, v in datalist.items()))


    def slice_cache(self, datalist: str, out: str, image_size: int = 128, num_workers: int = 2, mr_pseudo_labels: bool = False) -> None:
        """Stage 1's CT (with labels) and MR slices of DATALIST in one file, for a machine that trains
        stage 1 without the volumes or SimpleITK (drl_train.yaml --slice_cache FILE); --mr_pseudo_labels True:
        every target MR with its pseudo-label from a self-training datalist's pseudo-labelled section, where it has one
        (--target_pseudo_labels True)."""
        counts = slices.save_slice_cache(datalist, out, image_size, num_workers, mr_pseudo_labels=flag(mr_pseudo_labels, "mr_pseudo_labels"))
        print(f"{out}: " + ", ".join(f"{m}={n} slices" for m, n in counts.items()))


if __name__ == "__main__":
    run_cli(PrepareData)
