"""Per-case quality numbers, flags, summary.csv and the cohort report (bundle/quality.py, bundle/report.py)."""

from __future__ import annotations

import base64
import csv
import io
import shutil
import subprocess

import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from PIL import Image

from bundle.quality import QUALITY_FIELDS, CaseQualityd, KeepLargestComponentd, case_quality, flag_rates, quality_flags, write_summary
from bundle.report import case_thumbnails, write_report
from conftest import ROOT

AFFINE = np.diag([1.5, 1.5, 5.0, 1.0])  # 1.5 x 1.5 x 5 mm voxels (0.01125 mL), z towards the head
THRESHOLDS = dict(liver_ml=(700, 3500), min_confidence=0.8, min_paths_dice=0.6, max_uncertainty=2.0)


def _liver(shape=(80, 80, 30), z=(5, 25)) -> np.ndarray:
    mask = np.zeros(shape, bool)
    mask[20:60, 20:60, z[0] : z[1]] = True  # 40 x 40 x 20 voxels = 360 mL
    return mask


def test_a_liver_of_plausible_size_inside_the_scan_raises_no_flag():
    mask = _liver(shape=(120, 120, 30))
    mask[10:110, 10:110, 5:25] = True  # 200000 voxels = 2250 mL
    numbers = case_quality(mask, np.where(mask, 0.95, 0.02), AFFINE)
    assert numbers["liver_ml"] == pytest.approx(2250.0) and numbers["confidence"] == pytest.approx(0.95)
    assert not numbers["touches_top"] and not numbers["touches_bottom"] and numbers["paths_dice"] is None
    assert quality_flags(numbers, **THRESHOLDS) == []


def test_a_tiny_liver_is_an_implausible_volume():
    numbers = case_quality(_liver(), np.full((80, 80, 30), 0.9), AFFINE)
    flags = quality_flags(numbers, **THRESHOLDS)
    assert numbers["liver_ml"] == pytest.approx(360.0) and len(flags) == 1 and flags[0].startswith("implausible_volume: 360 mL")


def test_a_liver_cut_at_the_top_slice_is_flagged_whatever_the_array_order():
    mask = _liver(z=(10, 30))  # reaches the last slice; with z towards the head that is the top
    numbers = case_quality(mask, mask * 0.9, AFFINE)
    assert numbers["touches_top"] and not numbers["touches_bottom"]
    assert any(f.startswith("cut_by_fov: the liver reaches the top slice") for f in quality_flags(numbers, **THRESHOLDS))
    feet_first = AFFINE.copy()
    feet_first[2, 2] = -5.0  # the same array, z towards the feet: the last slice is the bottom
    numbers = case_quality(mask, mask * 0.9, feet_first)
    assert numbers["touches_bottom"] and not numbers["touches_top"]
    assert not any(f.startswith("cut_by_fov") for f in quality_flags(numbers, **(THRESHOLDS | {"fov_cut": "top"})))


def test_two_disagreeing_paths_and_low_confidence_and_uncertainty_are_flagged():
    mask = _liver()
    paths = np.stack([mask * 0.9, np.roll(mask, 30, axis=0) * 0.9])  # the image path sees the liver elsewhere
    numbers = case_quality(mask, np.where(mask, 0.6, 0.0), AFFINE, paths=paths, entropy=np.full(mask.shape, 0.5))
    assert numbers["paths_dice"] == pytest.approx(0.25) and numbers["uncertainty"] == pytest.approx(0.5 * mask.size / mask.sum())
    flags = [f.split(":")[0] for f in quality_flags(numbers, **THRESHOLDS)]
    assert flags == ["implausible_volume", "low_confidence", "low_agreement", "high_uncertainty"]


def test_the_largest_component_step_keeps_monais_result_and_counts_the_islands_26_connected():
    from monai.transforms import KeepLargestConnectedComponent
    raw = _liver()
    raw[70:72, 70:72, 2:4] = True  # an island of 8 voxels
    raw[74, 74, 10] = raw[75, 75, 11] = True  # two voxels touching by a corner: one island
    pred = MetaTensor(torch.as_tensor(raw[None], dtype=torch.float32), affine=torch.as_tensor(AFFINE))
    out = KeepLargestComponentd("pred")({"pred": pred})
    theirs = KeepLargestConnectedComponent(applied_labels=[1])(pred)
    assert torch.equal(out["pred"], theirs) and isinstance(out["pred"], MetaTensor)
    assert out["removed"] == {"components": 2, "voxels": 10}
    numbers = case_quality(np.asarray(out["pred"][0]) > 0, raw * 0.9, AFFINE, removed=out["removed"])
    assert numbers["components_removed"] == 2 and numbers["removed_ml"] == pytest.approx(10 * 0.01125, abs=0.05)
    kept = KeepLargestComponentd("pred", enabled=False)({"pred": pred})
    assert torch.equal(kept["pred"], pred) and kept["removed"] == {"components": 0, "voxels": 0}


def test_the_postprocessing_step_reads_the_helper_items_and_drops_them():
    mask = _liver()
    probabilities = torch.as_tensor(np.stack([1 - mask * 0.9, mask * 0.9]), dtype=torch.float32)
    data = {"pred": MetaTensor(torch.as_tensor(mask[None], dtype=torch.uint8), affine=torch.as_tensor(AFFINE)),
            "probabilities": probabilities, "removed": {"components": 1, "voxels": 80}, "uncertainty": torch.zeros(1, *mask.shape)}
    out = CaseQualityd("pred", thresholds=THRESHOLDS)(data)
    assert "probabilities" not in out and "removed" not in out and "uncertainty" in out and out["quality"]["removed_ml"] == pytest.approx(0.9)
    assert out["quality"]["liver_ml"] == pytest.approx(360.0) and out["quality"]["flags"][0].startswith("implausible_volume")


def test_summary_csv_has_one_row_per_case_with_every_number_and_the_reasons(tmp_path):
    rows = [{"case": "a", "file": "a.nii.gz", **case_quality(_liver(), _liver() * 0.9, AFFINE)},
            {"case": "b", "file": "b.nii.gz", **case_quality(_liver(), _liver() * 0.9, AFFINE)}]
    rows[0]["flags"], rows[1]["flags"] = ["implausible_volume: 360 mL", "cut_by_fov: top"], []
    with open(write_summary(rows, tmp_path / "summary.csv")) as f:
        read = list(csv.DictReader(f))
    assert [r["case"] for r in read] == ["a", "b"] and list(read[0]) == ["case", "file", *QUALITY_FIELDS, "flagged", "flags"]
    assert read[0]["flagged"] == "True" and read[0]["flags"] == "implausible_volume: 360 mL; cut_by_fov: top" and read[1]["flagged"] == "False"
    assert [p.name for p in tmp_path.iterdir()] == ["summary.csv"]  # written atomically: no temporary left


def test_thumbnails_show_the_patients_right_on_the_left_and_the_head_up():
    """A volume whose +x goes towards the patient's left, with the liver at low x (the patient's right) in the
    top slices: in the axial montage the outline lies on the left half, in the coronal view in the upper half."""
    shape = (60, 50, 24)
    image = np.full(shape, -1.0, np.float32)
    mask = np.zeros(shape, np.uint8)
    mask[5:25, 10:40, 12:22] = 1  # low x indices; with +x towards the left, that is the patient's right
    affine = np.diag([-2.0, 2.0, 5.0, 1.0])  # RAS affine: +x index goes towards -R = left
    thumbs = case_thumbnails(image, mask, affine)
    decode = lambda s: np.asarray(Image.open(io.BytesIO(base64.b64decode(s))))
    axial, coronal = decode(thumbs["axial"]), decode(thumbs["coronal"])
    red = lambda rgb: (rgb[..., 0].astype(int) - rgb[..., 1] > 90)
    first = red(axial)[:, : axial.shape[1] // 4]  # the first of the montage's slices
    columns = np.nonzero(first.any(axis=0))[0]
    assert columns.max() < first.shape[1] / 2  # the patient's right on the left of the picture
    rows = np.nonzero(red(coronal).any(axis=1))[0]
    assert rows.max() < coronal.shape[0] / 2 + 2  # the top slices at the top


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


def test_report_lists_flagged_cases_first_and_opens_in_a_real_browser(tmp_path):
    """The report page in headless Chromium (Debian's package; .ci/run installs it): a screenshot that is not
    blank, and a DOM with one row per case, the flagged ones first, each with its thumbnails and mask link."""
    browser = _chromium()
    if browser is None:
        pytest.fail("headless Chromium is not installed (apt-get install chromium; .ci/run does it): the report's browser test cannot run")
    mask = _liver()
    image = np.where(mask, 0.5, -0.5).astype(np.float32)
    rows = []
    for name, flags in (("b_good", []), ("a_good", []), ("z_bad", ["implausible_volume: 360 mL"])):
        (tmp_path / "out").mkdir(exist_ok=True)
        rows.append({"case": name, "file": f"{name}.nii.gz", "mask": str(tmp_path / "out" / f"{name}_liver.nii.gz"),
                     **case_quality(mask, mask * 0.9, AFFINE), "flags": flags, "thumbnails": case_thumbnails(image, mask, AFFINE)})
    page = write_report(rows, tmp_path / "out" / "report.html")
    common = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
              "--disable-component-update", "--disable-sync", f"--user-data-dir={tmp_path / 'profile'}"]
    dom = subprocess.run([*common, "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=120).stdout
    order = [line.split("data-case='")[1].split("'")[0] for line in dom.replace('data-case="', "data-case='").replace('" data-flags', "' data-flags").splitlines()
             if "data-case=" in line]
    assert order == ["z_bad", "a_good", "b_good"]
    assert dom.count("data:image/jpeg;base64,") == 2 * len(rows) and "z_bad_liver.nii.gz" in dom
    shot = tmp_path / "shot.png"
    subprocess.run([*common, "--window-size=1000,700", f"--screenshot={shot}", page.as_uri()], capture_output=True, timeout=120)
    pixels = np.asarray(Image.open(shot).convert("RGB")).astype(float)
    assert pixels.std() > 10 and ((pixels[..., 0] > 200) & (pixels[..., 1] < 80)).sum() > 50  # text, images and the red outlines


def test_flag_rates_count_the_failed_and_the_good_cases_flagged_and_a_fallback_as_flagged():
    """The calibration's figures (scripts/calibrate_quality.py): failed cases caught, good ones flagged."""
    good = {"liver_ml": 1500.0, "confidence": 0.95, "paths_dice": 0.8, "uncertainty": None, "touches_top": False, "touches_bottom": False}
    rows = [good | {"dice": 0.9}, good | {"dice": 0.85, "touches_top": True}, good | {"dice": 0.3, "liver_ml": 200.0},
            good | {"dice": 0.6, "fallback": True}, good | {"dice": 0.5, "paths_dice": 0.3}]
    assert flag_rates(rows, fov_cut="none") == {"failed": 3, "failed_flagged": 2, "good": 2, "good_flagged": 0}
    assert flag_rates(rows, fov_cut="top", min_paths_dice=0.6) == {"failed": 3, "failed_flagged": 3, "good": 2, "good_flagged": 1}


def test_calibration_script_prints_the_rates_and_every_case_with_its_flags(tmp_path, capsys):
    import importlib.util
    import json

    spec = importlib.util.spec_from_file_location("calibrate_quality", ROOT / "scripts/calibrate_quality.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    numbers = {"confidence": 0.95, "paths_dice": 0.8, "uncertainty": None, "touches_top": False, "touches_bottom": False, "fallback": False}
    subjects = [numbers | {"subject": "good", "dice": 0.9, "liver_ml": 1500.0}, numbers | {"subject": "tiny", "dice": 0.2, "liver_ml": 90.0},
                numbers | {"subject": "fell_back", "dice": 0.6, "liver_ml": 1200.0, "fallback": True}]
    (tmp_path / "variant").mkdir()
    (tmp_path / "variant/metrics.json").write_text(json.dumps({"subjects": subjects}))
    script.calibrate(str(tmp_path / "*/metrics.json"), confidence="0", paths_dice="0.6", fov_cut="both", cases=True)
    out = capsys.readouterr().out
    assert "| 0.0 | 0.6 | both | 2 of 2 | 0 of 1 |" in out
    rows = {line.split(" | ")[1]: line for line in out.splitlines() if line.startswith(f"| {tmp_path.name}/variant |")}
    assert rows["good"].endswith("|  |  |") and "implausible_volume" in rows["tiny"] and rows["fell_back"].endswith("| yes | fallback |")
