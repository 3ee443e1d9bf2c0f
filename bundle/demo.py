"""The end-to-end demo behind `make demo`: the whole pipeline on built-in phantoms, on CPU.

Phantoms (+ the paper's Fig. 1 for them); the real-data preparation path exercised on phantoms
exported as a CHAOS-layout DICOM + PNG folder, checked voxel for voxel; stage 1 (DRLModule);
stage 2 three times (UNet without adaptation, DADR on content-only images, supervised MR upper
bound); inference and evaluation on held-out phantom MR; the comparison table and a figure like
the paper's Fig. 4-5. Every stage runs through ``monai.bundle run`` with the bundle's configs.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from monai.bundle import run as run_bundle

from bundle.data.export import write_chaos_case
from bundle.data.phantoms import MR_SEQUENCES, make_phantoms
from bundle.data.prepare import make_datalist, prepare_chaos
from bundle.figures import adaptation_figure, domain_shift_figure
from bundle.pipeline import CONFIGS, run_evaluation, run_stage1, run_stage2

__all__ = ["run_demo"]


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a > 0, b > 0
    return float(2 * np.logical_and(a, b).sum() / max(a.sum() + b.sum(), 1))


METHODS = {  # demo table rows: stage-2 overrides of configs/train.yaml, and the input modality at training
    "no adaptation (UNet on CT)": {"adaptation": "none", "train_section": "source", "train_modality": "ct"},
    "DADR (content-only CT)": {"adaptation": "dadr", "train_section": "source", "train_modality": "ct"},
    "supervised MR (upper bound)": {"adaptation": "none", "train_section": "target_labelled", "train_modality": "mr"},
}


def run_demo(out: str | Path, n_ct: int = 6, n_mr: int = 8, size: int = 96, seed: int = 0, drl_iterations: int = 1500,
             seg_epochs: int = 15, image_size: int = 64, dim: int = 16) -> dict:
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

    sizes = {"image_size": image_size, "dim": dim}
    t1 = time.time()
    validation = run_stage1(phantoms, out / "drl", drl_iterations, sizes)
    drl_path = out / "drl/drl.pt"
    grids = sorted((out / "drl/images").glob("drl_*.png"))
    print(f"[stage 1] DRLModule, {drl_iterations} iterations at {image_size} px, dim {dim}, in {time.time() - t1:.0f} s -> {drl_path}")
    print(f"[stage 1] validation at iteration {validation['iteration']}: reconstruction L1 CT {validation['recon_l1_ct']:.3f}, "
          f"MR {validation['recon_l1_mr']:.3f}; content-code domain classifier accuracy {validation['content_domain_acc']:.2f} (0.5 = shared)")
    print(f"[stage 1] image grid (CT, content-only CT, CT->MR, MR, content-only MR, MR->CT): {grids[-1]}")

    results, predictions = {}, {}
    for i, (method, overrides) in enumerate(METHODS.items()):
        t2 = time.time()
        folder = out / f"seg_{i}_{overrides['adaptation']}_{overrides['train_modality']}"
        model = run_stage2(phantoms, folder, drl_path, seg_epochs, sizes, **overrides)
        metrics = run_evaluation(phantoms / "datalist.json", model, folder / "test_mr", sizes, adaptation=overrides["adaptation"], modality="mr")
        results[method] = metrics["summary"]
        predictions[method] = folder / "test_mr"
        print(f"[stage 2] {method}: trained {seg_epochs} epochs and evaluated on held-out MR in {time.time() - t2:.0f} s -> {folder}")
    ct_content = out / "content_only_ct"
    dadr_model = predictions["DADR (content-only CT)"].parent / "model.pt"
    run_bundle("inference", config_file=str(CONFIGS / "inference.yaml"), dataset_dir=str(phantoms / "ct"), output_dir=str(ct_content),
               model_path=str(dadr_model), modality="ct", adaptation="dadr", **sizes)

    n_test = len(datalists["datalist.json"]["target_test"])
    print(f"\nLiver segmentation on {n_test} held-out phantom MR volumes (T1 pre-contrast), mean (std) per subject:")
    print(f"{'method':<32}{'Dice':>16}{'HD95 mm':>18}{'ASSD mm':>18}")
    for method, summary in results.items():
        cells = "".join(f"{summary[m]['mean']:>10.3f} ({summary[m]['std']:.3f})" if m == "dice" else f"{summary[m]['mean']:>11.1f} ({summary[m]['std']:4.1f})"
                        for m in ("dice", "hd95_mm", "assd_mm"))
        print(f"{method:<32}{cells}")

    mr_image = f"{test_subject}_t1_pre_image"
    rows = [("CT", [("image", phantoms / "ct/ct_000_image.nii.gz"), ("content-only", ct_content / "ct_000_image_content.nii.gz")]),
            ("MR", [("image", phantoms / f"mr/{mr_image}.nii.gz"),
                    ("content-only", predictions["DADR (content-only CT)"] / f"{mr_image}_content.nii.gz")]
             + [(method.split(" (")[0], predictions[method] / f"{mr_image}_liver.nii.gz") for method in METHODS])]
    figure5 = adaptation_figure(rows, [phantoms / "ct/ct_000_liver.nii.gz", phantoms / f"mr/{test_subject}_liver.nii.gz"],
                                out / "fig5_content_only_and_predictions.png")
    print(f"[figure] CT, content-only CT, MR, content-only MR, predictions (yellow: true liver) -> {figure5}")
    print(f"[demo] done in {time.time() - t0:.0f} s; outputs under {out}")
    return {"phantoms": phantoms, "figure": figure, "prepared": summaries, "drl_validation": validation, "results": results, "figure5": figure5}
