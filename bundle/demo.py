"""The end-to-end demo behind `make demo`: every stage that exists, on built-in phantoms, on CPU.

Stages so far: phantoms (+ the paper's Fig. 1 for them); the real-data preparation path
exercised on phantoms exported as a CHAOS-layout DICOM + PNG folder, checked voxel for voxel;
and a short stage-1 (DRLModule) training through the MONAI bundle workflow.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from monai.bundle import run as run_bundle

from bundle.data.export import write_chaos_case
from bundle.data.phantoms import MR_SEQUENCES, make_phantoms
from bundle.data.prepare import make_datalist, prepare_chaos
from bundle.figures import domain_shift_figure

__all__ = ["run_demo"]


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a > 0, b > 0
    return float(2 * np.logical_and(a, b).sum() / max(a.sum() + b.sum(), 1))


CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def run_stage1(phantoms: Path, out: Path, iterations: int, image_size: int = 64, dim: int = 8) -> dict:
    """Stage 1 through ``monai.bundle run training`` with small-size overrides; returns the last validation."""
    run_bundle("training", config_file=str(CONFIGS / "drl_train.yaml"), dataset_dir=str(phantoms), output_dir=str(out),
               drl_path=str(out / "drl.pt"), image_size=image_size, dim=dim, max_iterations=iterations,
               val_interval=max(1, iterations // 3), n_val_slices=16, resume=False)
    return json.loads((out / "validation.jsonl").read_text().splitlines()[-1])


def run_demo(out: str | Path, n_ct: int = 6, n_mr: int = 6, size: int = 96, seed: int = 0, drl_iterations: int = 300) -> dict:
    """Run the demo under ``out`` and print what it made; returns the summary."""
    out = Path(out)
    t0 = time.time()
    phantoms = out / "phantoms"
    datalists = make_phantoms(phantoms, n_ct=n_ct, n_mr=n_mr, seed=seed, size=size)
    test_subject = datalists["datalist.json"]["target_test"][0]["subject"]
    cases = [("CT", phantoms / "ct/ct_000_image.nii.gz", phantoms / "ct/ct_000_liver.nii.gz")]
    cases += [(s, phantoms / f"mr/{test_subject}_{s}_image.nii.gz", phantoms / f"mr/{test_subject}_liver.nii.gz") for s in MR_SEQUENCES]
    figure = domain_shift_figure(cases, out / "fig1_domain_shift.png")
    print(f"[phantoms] {n_ct} CT + {n_mr} MR subjects ({', '.join(MR_SEQUENCES)}), {size}x{size} px -> {phantoms}")
    print(f"[phantoms] datalists: {', '.join(sorted(datalists))}; Fig. 1 -> {figure}")

    # Preparation on real-world containers: export phantoms as a CHAOS folder, prepare it back.
    chaos = out / "chaos_layout"
    write_chaos_case(phantoms / "ct/ct_000_image.nii.gz", phantoms / "ct/ct_000_liver.nii.gz", chaos / "CT/1", "CT")
    write_chaos_case(cases[-1][1], cases[-1][2], chaos / "MR/1/T2SPIR", "MR")
    prepared = out / "prepared"
    summaries = prepare_chaos(chaos, prepared)
    datalist = make_datalist(prepared, prepared, prepared / "datalist.json", target_test=prepared)
    print(f"[prepare] CHAOS layout (DICOM series + PNG masks) -> {prepared}")
    print(f"{'case':<10}{'shape':<16}{'liver mL':>10}{'liver mean':>12}{'side':>7}{'Dice vs phantom':>17}")
    for summary, original in zip(summaries, (cases[0][2], cases[-1][2])):
        prepared_mask = sitk.GetArrayFromImage(sitk.ReadImage(str(prepared / f"{summary['name']}_liver.nii.gz")))
        dice = _dice(prepared_mask, sitk.GetArrayFromImage(sitk.ReadImage(str(original))))
        summary["dice_vs_phantom"] = dice
        shape = "x".join(map(str, summary["shape"]))
        print(f"{summary['name']:<10}{shape:<16}{summary['liver_ml']:>10.1f}{summary['liver_mean']:>12.1f}{summary['side']:>7}{dice:>17.3f}")
    print(f"[prepare] datalist: {prepared / 'datalist.json'} ({', '.join(f'{k}={len(v)}' for k, v in datalist.items())})")

    t1 = time.time()
    validation = run_stage1(phantoms, out / "drl", drl_iterations)
    grids = sorted((out / "drl/images").glob("drl_*.png"))
    print(f"[stage 1] DRLModule, {drl_iterations} iterations at 64 px, dim 8, in {time.time() - t1:.0f} s -> {out / 'drl'}")
    print(f"[stage 1] validation at iteration {validation['iteration']}: reconstruction L1 CT {validation['recon_l1_ct']:.3f}, "
          f"MR {validation['recon_l1_mr']:.3f}; content-code domain classifier accuracy {validation['content_domain_acc']:.2f} (0.5 = shared)")
    print(f"[stage 1] image grid (CT, content-only CT, CT->MR, MR, content-only MR, MR->CT): {grids[-1]}")
    print(f"[demo] done in {time.time() - t0:.0f} s; outputs under {out}")
    return {"phantoms": phantoms, "figure": figure, "prepared": summaries, "drl_validation": validation}
