"""Built-in synthetic abdominal CT and multi-phasic MR phantoms: the bundle's default data.

Each subject is an anatomy drawn at random (body outline, subcutaneous fat, muscle, spine,
aorta, kidneys, spleen, stomach and bowel with gas, and a liver on the patient's right whose
shape, size and position vary), then rendered as CT in Hounsfield units or as four MR
sequences (T1 pre-contrast, arterial, portal-venous, T2 fat-suppressed) with the contrasts of
real scans, smooth bias fields and Rician noise. CT and MR subjects are different draws, so
the two domains are unpaired, as in the paper. Geometry is physical: volumes are built in the
LPS frame of SimpleITK (x to the patient's left, y posterior, z superior), with anisotropic
spacing, and written as NIfTI with correct affines.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from bundle.atomic import atomic_outputs, check_writable_dir

__all__ = ["LABELS", "MR_SEQUENCES", "Anatomy", "make_anatomy", "render_ct", "render_mr", "make_phantoms"]

# Label ids of the label maps (liver = 1 as in the pipeline's binary masks).
LABELS = {
    "background": 0, "liver": 1, "spleen": 2, "kidney_right": 3, "kidney_left": 4, "aorta": 5,
    "spine": 6, "muscle": 7, "subcutaneous_fat": 8, "gas": 9, "bowel": 10, "abdominal_cavity": 11,
}
MR_SEQUENCES = ("t1_pre", "t1_arterial", "t1_portal", "t2")

# Tissues are finer than labels: they decide intensities (vessels inside the liver, bone cortex vs marrow).
AIR, FAT, MUSCLE, CAVITY, BOWEL, GAS, LIVER, LIVER_VESSEL, SPLEEN, KIDNEY_R, KIDNEY_L, AORTA, MARROW, CORTEX = range(14)
_LABEL_OF_TISSUE = np.array([0, 8, 7, 11, 10, 9, 1, 1, 2, 3, 4, 5, 6, 6], dtype=np.uint8)

# Mean intensity of each tissue (index = tissue id). CT: HU of a portal-venous scan. MR: relative
# signal; T1 is an in/opposed-phase-free gradient echo (fat bright), the post-contrast phases
# enhance aorta, kidneys and spleen first (arterial), then the liver and its veins (portal);
# T2 is fat-suppressed (SPIR, like CHAOS): fluid and spleen bright, liver and muscle dark,
# flowing blood void. The cavity is a mix of fat and soft tissue: (fat value, soft value).
_CT = [-1000, -100, 50, None, 15, -950, 105, 165, 115, 170, 170, 170, 250, 800]
_MR = {
    "t1_pre":      [0.0, 1.00, 0.30, None, 0.10, 0.0, 0.55, 0.22, 0.38, 0.40, 0.40, 0.15, 0.65, 0.04],
    "t1_arterial": [0.0, 0.95, 0.33, None, 0.10, 0.0, 0.60, 0.50, 0.85, 0.95, 0.95, 1.20, 0.65, 0.04],
    "t1_portal":   [0.0, 0.95, 0.35, None, 0.10, 0.0, 0.85, 0.95, 0.80, 0.85, 0.85, 0.80, 0.65, 0.04],
    "t2":          [0.0, 0.15, 0.12, None, 1.00, 0.0, 0.22, 0.05, 0.60, 0.65, 0.65, 0.05, 0.22, 0.03],
}
_CAVITY = {"ct": (-100, 40), "t1_pre": (1.0, 0.35), "t1_arterial": (0.95, 0.40), "t1_portal": (0.95, 0.45), "t2": (0.15, 0.30)}

Z_RANGE_MM = (-100.0, 100.0)  # cranio-caudal coverage: liver dome to below the kidneys


@dataclass
class Anatomy:
    """One subject on its voxel grid (arrays indexed x, y, z in LPS)."""

    tissue: np.ndarray  # uint8 tissue ids
    cavity_fat: np.ndarray  # float32 0..1: fat fraction of the abdominal cavity, smooth
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]

    @property
    def labels(self) -> np.ndarray:
        return _LABEL_OF_TISSUE[self.tissue]


def _smooth_field(rng: np.random.Generator, shape: tuple[int, ...], sigma_vox: tuple[float, ...]) -> np.ndarray:
    """Zero-mean, unit-std random field with correlation length ``sigma_vox`` (voxels)."""
    field = ndimage.gaussian_filter(rng.standard_normal(shape).astype(np.float32), sigma_vox, mode="wrap")
    return (field - field.mean()) / (field.std() + 1e-8)


def _ellipsoid(x, y, z, center, radii, angle: float = 0.0) -> np.ndarray:
    """Implicit ellipsoid, rotated by ``angle`` (rad) in the axial plane: < 1 inside."""
    dx, dy = x - center[0], y - center[1]
    c, s = np.cos(angle), np.sin(angle)
    u, v = c * dx + s * dy, -s * dx + c * dy
    return (u / radii[0]) ** 2 + (v / radii[1]) ** 2 + ((z - center[2]) / radii[2]) ** 2


def _superellipse(x, y, a, b, p: float) -> np.ndarray:
    """Implicit axial body cross-section (squarer than an ellipse for p > 2): < 1 inside."""
    return np.abs(x / a) ** p + np.abs(y / b) ** p


def _segment_distance(x, y, z, p0, p1) -> np.ndarray:
    """Distance of every voxel to the segment p0-p1 (for vessels)."""
    p0, d = np.asarray(p0, np.float32), np.asarray(p1, np.float32) - np.asarray(p0, np.float32)
    t = np.clip(((x - p0[0]) * d[0] + (y - p0[1]) * d[1] + (z - p0[2]) * d[2]) / float(d @ d), 0, 1)
    return np.sqrt((x - p0[0] - t * d[0]) ** 2 + (y - p0[1] - t * d[1]) ** 2 + (z - p0[2] - t * d[2]) ** 2)


def make_anatomy(rng: np.random.Generator, size: int, fov_mm: float, slice_mm: float) -> Anatomy:
    """Draw one subject's anatomy on a ``size`` x ``size`` grid of ``fov_mm`` with ``slice_mm`` slices."""
    n_z = int(round((Z_RANGE_MM[1] - Z_RANGE_MM[0]) / slice_mm))
    sx = fov_mm / size
    spacing = (sx, sx, slice_mm)
    origin = (-fov_mm / 2 + sx / 2, -fov_mm / 2 + sx / 2, Z_RANGE_MM[0] + slice_mm / 2)
    xs = origin[0] + sx * np.arange(size, dtype=np.float32)
    zs = origin[2] + slice_mm * np.arange(n_z, dtype=np.float32)
    x, y, z = np.meshgrid(xs, xs, zs, indexing="ij")
    shape = x.shape
    u = rng.uniform
    # Low-frequency deformation shared by all organ boundaries of this subject (~25 mm correlation).
    wobble = _smooth_field(rng, shape, (25 / sx, 25 / sx, 25 / slice_mm))

    # Body wall: superellipse outline, subcutaneous fat, then a muscle layer.
    cx, cy = u(-6, 6), u(-4, 8)
    a, b = u(140, 175) * (1 + 0.04 * z / 100), u(100, 128) * (1 + 0.03 * z / 100)
    p = u(2.2, 2.8)
    body = _superellipse(x - cx, y - cy, a, b, p) + 0.02 * wobble
    fat_mm, muscle_mm = u(8, 30), u(6, 12)
    a_in, b_in = a - fat_mm - muscle_mm, b - fat_mm * 0.8 - muscle_mm
    tissue = np.full(shape, AIR, np.uint8)
    tissue[body < 1] = FAT
    tissue[_superellipse(x - cx, y - cy, a - fat_mm, b - fat_mm * 0.8, p) < 1] = MUSCLE
    cavity = _superellipse(x - cx, y - cy, a_in, b_in, p) < 1
    tissue[cavity] = CAVITY
    a0, b0 = float(np.mean(a_in)), float(np.mean(b_in))  # organ placement uses the mean cavity size

    # Bowel loops below the liver (fluid) with gas pockets, and the stomach under the left dome.
    for _ in range(rng.integers(6, 11)):
        c = (cx + u(-0.6, 0.6) * a0, cy + u(-0.8, 0.1) * b0, u(-95, 0))
        loop = _ellipsoid(x, y, z, c, (u(12, 25), u(10, 20), u(15, 30)), u(0, np.pi)) < 1
        tissue[loop & cavity] = GAS if rng.random() < 0.35 else BOWEL
    z_liver = u(15, 40)
    stomach_c = (cx + 0.35 * a0, cy - 0.3 * b0, z_liver + u(0, 20))
    stomach = _ellipsoid(x, y, z, stomach_c, (u(35, 50), u(25, 35), u(35, 50)), u(-0.4, 0.4)) + 0.1 * wobble < 1
    tissue[stomach & cavity] = BOWEL
    tissue[stomach & cavity & (y < stomach_c[1] - u(5, 15))] = GAS  # air rises anteriorly (supine)

    # Liver: a right lobe and a left lobe crossing the midline anteriorly, deformed and rotated.
    angle, scale = u(-0.25, 0.25), u(0.85, 1.15)
    right_c = (cx - 0.42 * a0 + u(-10, 10), cy + u(-12, 8), z_liver)
    right = _ellipsoid(x, y, z, right_c, (0.46 * a0 * scale, 0.66 * b0 * scale, u(55, 75) * scale), angle)
    left_c = (cx + u(0.0, 0.15) * a0, cy - 0.45 * b0, z_liver + u(10, 25))
    left = _ellipsoid(x, y, z, left_c, (0.32 * a0 * scale, 0.24 * b0 * scale, u(30, 45) * scale), angle)
    liver = (np.minimum(right, left) + 0.18 * wobble < 1) & cavity
    tissue[liver] = LIVER
    hilum = (right_c[0] + 0.25 * a0, right_c[1] + 0.1 * b0, z_liver - 15)
    for _ in range(rng.integers(4, 7)):  # portal/hepatic vein branches fanning out of the hilum
        tip = (right_c[0] + u(-0.6, 0.5) * a0, right_c[1] + u(-0.6, 0.4) * b0, z_liver + u(-30, 50))
        tissue[liver & (_segment_distance(x, y, z, hilum, tip) < u(2.5, 5))] = LIVER_VESSEL

    # Spleen (left, posterior), kidneys (the right one lower, under the liver), aorta, spine.
    spleen_c = (cx + 0.58 * a0, cy + 0.3 * b0, z_liver + u(-15, 10))
    spleen = _ellipsoid(x, y, z, spleen_c, (u(20, 30), u(40, 55), u(40, 55)), u(0.3, 0.8)) + 0.1 * wobble < 1
    tissue[spleen & cavity] = SPLEEN
    spine_y = cy + b0 - u(25, 35)
    for tissue_id, side, dz in ((KIDNEY_R, -1, u(-25, -10)), (KIDNEY_L, 1, 0.0)):
        c = (cx + side * u(0.35, 0.45) * a0, spine_y - u(0, 12), u(-60, -35) + dz)
        kidney = _ellipsoid(x, y, z, c, (u(22, 30), u(18, 24), u(45, 55)), side * u(0.3, 0.6)) < 1
        tissue[kidney & cavity] = tissue_id
    tissue[_ellipsoid(x, y, z, (cx + u(8, 18), spine_y - u(28, 36), 0), (u(9, 13), u(9, 13), 1e6)) < 1] = AORTA
    spine_c = (cx, spine_y, 0)
    r_spine = u(16, 21)
    tissue[_ellipsoid(x, y, z, spine_c, (r_spine + 2.5, r_spine + 2.5, 1e6)) < 1] = CORTEX
    tissue[_ellipsoid(x, y, z, spine_c, (r_spine, r_spine, 1e6)) < 1] = MARROW
    for side in (-1, 1):  # paraspinal muscles behind the spine
        tissue[_ellipsoid(x, y, z, (cx + side * u(28, 34), spine_y + u(25, 32), 0), (u(18, 24), u(15, 20), 1e6)) < 1] = MUSCLE

    cavity_fat = (0.5 + 0.35 * _smooth_field(rng, shape, (6 / sx, 6 / sx, 6 / slice_mm))).clip(0, 1)
    return Anatomy(tissue, cavity_fat.astype(np.float32), spacing, origin)


def _render(anatomy: Anatomy, values: list, cavity: tuple[float, float], rng: np.random.Generator, jitter: float) -> np.ndarray:
    """Piecewise-constant image from a tissue table, with per-subject contrast jitter and texture."""
    table = np.array([0.0 if v is None else v for v in values], np.float32)
    table = table * (1 + jitter * rng.standard_normal(table.shape)).astype(np.float32)
    image = table[anatomy.tissue]
    in_cavity = anatomy.tissue == CAVITY
    image[in_cavity] = cavity[0] * anatomy.cavity_fat[in_cavity] + cavity[1] * (1 - anatomy.cavity_fat[in_cavity])
    return image


def _blur(image: np.ndarray, spacing: tuple[float, ...], fwhm_mm: float) -> np.ndarray:
    """Scanner point-spread function: Gaussian of ``fwhm_mm`` in-plane, one slice through-plane."""
    sigma = fwhm_mm / 2.355
    return ndimage.gaussian_filter(image, (sigma / spacing[0], sigma / spacing[1], 0.5))


def render_ct(anatomy: Anatomy, rng: np.random.Generator) -> np.ndarray:
    """CT in HU: portal-venous contrast varying per subject, PSF blur and correlated quantum noise."""
    hu = _render(anatomy, _CT, _CAVITY["ct"], rng, jitter=0.0)
    enhancement = rng.uniform(-30, 15)  # contrast timing: how much the organs have enhanced
    for tissue_id in (LIVER, SPLEEN, KIDNEY_R, KIDNEY_L, AORTA, LIVER_VESSEL):
        hu[anatomy.tissue == tissue_id] += enhancement + rng.normal(0, 5)
    hu = _blur(hu, anatomy.spacing, fwhm_mm=1.2)
    noise = ndimage.gaussian_filter(rng.standard_normal(hu.shape).astype(np.float32), (0.7, 0.7, 0))
    hu += noise / noise.std() * rng.uniform(8, 20)
    return np.clip(hu, -1024, 3071).astype(np.float32)


def _bias_field(rng: np.random.Generator, shape: tuple[int, ...], strength: float) -> np.ndarray:
    """Smooth multiplicative coil sensitivity: exp of a random quadratic polynomial in x, y, z."""
    grids = np.meshgrid(*[np.linspace(-1, 1, n, dtype=np.float32) for n in shape], indexing="ij")
    terms = [g for g in grids] + [g * h for i, g in enumerate(grids) for h in grids[i:]]
    log_field = sum(rng.normal(0, 1) * t for t in terms)
    return np.exp(strength * log_field / (np.abs(log_field).max() + 1e-8)).astype(np.float32)


def render_mr(anatomy: Anatomy, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """The four MR sequences of one session: same anatomy, one coil bias, per-sequence gain and noise."""
    bias = _bias_field(rng, anatomy.tissue.shape, strength=rng.uniform(0.15, 0.35))
    images = {}
    for sequence in MR_SEQUENCES:
        signal = _render(anatomy, _MR[sequence], _CAVITY[sequence], rng, jitter=0.06)
        signal = _blur(signal, anatomy.spacing, fwhm_mm=2.0) * bias
        sigma = rng.uniform(0.015, 0.035)
        noisy = np.hypot(signal + sigma * rng.standard_normal(signal.shape), sigma * rng.standard_normal(signal.shape))
        images[sequence] = (noisy * rng.uniform(300, 1500)).astype(np.float32)  # arbitrary scanner units
    return images


def _to_sitk(array: np.ndarray, anatomy: Anatomy) -> sitk.Image:
    image = sitk.GetImageFromArray(np.ascontiguousarray(array.transpose(2, 1, 0)))  # x,y,z -> z,y,x
    image.SetSpacing(anatomy.spacing)
    image.SetOrigin(anatomy.origin)
    return image


def _write(out: Path, arrays: dict[str, np.ndarray], anatomy: Anatomy) -> None:
    names = list(arrays)
    with atomic_outputs([out / n for n in names]) as temps:
        for tmp, name in zip(temps, names):
            sitk.WriteImage(_to_sitk(arrays[name], anatomy), str(tmp), useCompression=True)


def _subject_rng(seed: int, domain: int, index: int) -> np.random.Generator:
    """Subject ``index`` of a domain is the same whatever the number of subjects asked for."""
    return np.random.default_rng(np.random.SeedSequence([seed, domain, index]))


def make_phantoms(out: str | Path, n_ct: int = 8, n_mr: int = 8, seed: int = 0, size: int = 128, n_mr_test: int | None = None) -> dict:
    """Write CT and MR phantoms and their datalists under ``out``.

    Files: ``ct/ct_NNN_{image,liver,labels}.nii.gz`` and
    ``mr/mr_NNN_{t1_pre,t1_arterial,t1_portal,t2}_image.nii.gz`` with ``mr_NNN_{liver,labels}``.
    Datalists: ``datalist.json`` (target = T1 pre-contrast, the paper's experiment 1),
    ``datalist_<sequence>.json`` for each sequence and ``datalist_multiphase.json`` (the three T1
    phases, experiment 3). The last ``n_mr_test`` MR subjects (default a quarter) are the labelled
    ``target_test`` split; the others are the unlabelled ``target``. ``target_labelled`` holds the
    ``target`` subjects with their masks, for the supervised MR upper bound and joint-domain learning.

    Args:
        out: output folder.
        n_ct: number of CT subjects (labelled source domain).
        n_mr: number of MR subjects (target domain, different people from the CT ones).
        seed: random seed; the same seed gives the same files.
        size: in-plane grid size in voxels.
        n_mr_test: MR subjects held out as the labelled test split.
    """
    if n_ct < 1 or n_mr < 2:
        raise ValueError(f"need n_ct >= 1 and n_mr >= 2 (one target, one target_test), got {n_ct} and {n_mr}")
    n_mr_test = max(1, n_mr // 4) if n_mr_test is None else n_mr_test
    if not 1 <= n_mr_test < n_mr:
        raise ValueError(f"n_mr_test must be between 1 and n_mr - 1 = {n_mr - 1}, got {n_mr_test}")
    out = check_writable_dir(out)
    (out / "ct").mkdir(exist_ok=True)
    (out / "mr").mkdir(exist_ok=True)
    source, mr = [], []
    for i in range(n_ct):
        rng = _subject_rng(seed, 0, i)
        anatomy = make_anatomy(rng, size, fov_mm=rng.uniform(360, 420), slice_mm=rng.uniform(4.0, 5.0))
        name = f"ct_{i:03d}"
        _write(out / "ct", {f"{name}_image.nii.gz": render_ct(anatomy, rng),
                            f"{name}_liver.nii.gz": (anatomy.labels == 1).astype(np.uint8),
                            f"{name}_labels.nii.gz": anatomy.labels}, anatomy)
        source.append({"image": f"ct/{name}_image.nii.gz", "label": f"ct/{name}_liver.nii.gz", "labels": f"ct/{name}_labels.nii.gz",
                       "subject": name})
    for j in range(n_mr):
        rng = _subject_rng(seed, 1, j)
        anatomy = make_anatomy(rng, size, fov_mm=rng.uniform(340, 400), slice_mm=rng.uniform(6.0, 8.0))
        name = f"mr_{j:03d}"
        arrays = {f"{name}_{s}_image.nii.gz": image for s, image in render_mr(anatomy, rng).items()}
        arrays[f"{name}_liver.nii.gz"] = (anatomy.labels == 1).astype(np.uint8)
        arrays[f"{name}_labels.nii.gz"] = anatomy.labels
        _write(out / "mr", arrays, anatomy)
        mr.append(name)
    return _write_datalists(out, source, mr[: n_mr - n_mr_test], mr[n_mr - n_mr_test :])


def _write_datalists(out: Path, source: list[dict], target: list[str], test: list[str]) -> dict:
    def entries(names: list[str], sequences: tuple[str, ...], labelled: bool) -> list[dict]:
        rows = []
        for name in names:
            for s in sequences:
                row = {"image": f"mr/{name}_{s}_image.nii.gz"}
                if labelled:
                    row["label"] = f"mr/{name}_liver.nii.gz"
                rows.append({**row, "subject": name, "sequence": s})
        return rows

    variants = {f"datalist_{s}.json": (s,) for s in MR_SEQUENCES}
    variants["datalist_multiphase.json"] = MR_SEQUENCES[:3]
    variants["datalist.json"] = ("t1_pre",)
    written = {}
    for filename, sequences in variants.items():
        datalist = {"source": source, "target": entries(target, sequences, False), "target_test": entries(test, sequences, True),
                    "target_labelled": entries(target, sequences, True)}
        with atomic_outputs([out / filename]) as (tmp,):
            tmp.write_text(json.dumps(datalist, indent=2) + os.linesep)
        written[filename] = datalist
    return written
