"""Inference on a folder of volumes (pipeline step 6): a liver mask and a content-only image per case.

MONAI's evaluator stops at the first unreadable case; a clinical folder always has one. This
runner applies the bundle's own MONAI preprocessing, ``SliceInferer`` and postprocessing to one
case at a time, writes the outputs of a case atomically, reports a bad case by name and goes
on with the others, and fails at the end if any case failed. Under ``torchrun`` each rank
segments its share of the cases (every case once) and rank 0 reports for all; ``num_workers``
threads read the next cases and write the finished ones while the network runs.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
import torch.distributed as dist

from bundle.atomic import atomic_outputs, check_writable_dir
from bundle.data.readers import IMAGE_SUFFIXES, case_name
from bundle.errors import DataError, unwrap_data_error
from bundle.networks.segmenter import LiverSegmenter
from bundle.precision import autocast_dtype
from bundle.quality import write_summary
from bundle.report import case_thumbnails, write_report

__all__ = ["find_volumes", "SegmentVolumes", "OUTPUT_SUFFIXES"]

logger = logging.getLogger(__name__)

OUTPUT_SUFFIXES = ("_liver", "_content", "_uncertainty")  # what inference writes; never read back as input
# the first or last word of a mask's file or folder name beside its scan (label_8.nii.gz, 8_seg.nii.gz, mr_001_labels.nii.gz,
# prepare_data.py's NAME_organs.nii.gz, the Ground folder of PNG masks beside CHAOS's DICOM_anon series)
MASK_WORDS = ("label", "labels", "mask", "masks", "seg", "segmentation", "gt", "organs", "ground")


def find_volumes(dataset_dir: str | Path) -> list[Path]:
    """Image files and DICOM series folders in ``dataset_dir`` (not masks or earlier outputs)."""
    folder = Path(dataset_dir)
    if not folder.is_dir():
        raise DataError(folder, "is not a folder of volumes")
    cases = []
    for path in sorted(folder.iterdir()):
        if path.name.startswith("."):
            continue
        if path.is_dir() and not any(path.iterdir()):
            logger.warning("%s: empty folder, skipped", path)
            continue
        if path.is_dir() or path.name.endswith(IMAGE_SUFFIXES):
            name = case_name(path)
            if name.endswith(OUTPUT_SUFFIXES):
                continue
            words = re.split(r"[_\-. ]+", name.lower())
            if words[0] in MASK_WORDS or words[-1] in MASK_WORDS:
                logger.info("%s: named like a mask, not segmented", path)
                continue
            cases.append(path)
    if not cases:
        raise DataError(folder, f"holds no volume ({', '.join(IMAGE_SUFFIXES)} files or DICOM series folders)")
    return cases


def _write_nifti(array: np.ndarray, affine: np.ndarray, path: Path) -> None:
    image = nib.Nifti1Image(array, affine)
    image.set_qform(affine, code=1)
    image.set_sform(affine, code=1)
    nib.save(image, str(path))


class SegmentVolumes:
    """Segment every volume of ``dataset_dir`` into ``output_dir``.

    Writes ``<case>_liver.nii.gz`` (uint8 0/1), ``<case>_content.nii.gz`` (float32, the
    content-only image) and, with ``uncertainty``, ``<case>_uncertainty.nii.gz`` (float32, the
    per-voxel entropy of an ensemble inferer, in nats) on each input's own grid (shape and affine).

    Args:
        network: the inference network.
        preprocessing: volume dict transform (load, RAS, normalise), keeping metadata.
        inferer: a 2D-over-3D inferer (``SliceInferer``) returning (logits, content-only image),
            or an ensemble (``EnsembleInferer``) returning (logits, content, uncertainty).
        postprocessing: dict transform on ``pred`` (logits), ``content`` and ``uncertainty``
            that inverts the preprocessing and makes ``pred`` a label map.
        dataset_dir: folder of input volumes.
        output_dir: folder for the results (created).
        device: where the network runs.
        amp: ``bfloat16`` autocast for the network (about twice as fast on CPUs with bfloat16
            arithmetic, float32 on the others; a few boundary voxels may differ from float32), or ``None``.
        uncertainty: write the inferer's third output as ``<case>_uncertainty.nii.gz``.
        num_workers: threads that read the next cases (this many ahead) and write finished ones
            while the network runs; 0: one step after the other.
        report: also write ``report.html`` (``bundle.report``) beside ``summary.csv``, from the
            postprocessing's ``display`` image.
    """

    def __init__(self, network: LiverSegmenter, preprocessing: Callable, inferer: Callable, postprocessing: Callable,
                 dataset_dir: str | Path, output_dir: str | Path, device: str | torch.device = "cpu", amp: str | None = None,
                 uncertainty: bool = False, num_workers: int = 0, report: bool = True) -> None:
        self.network, self.preprocessing, self.inferer, self.postprocessing = network, preprocessing, inferer, postprocessing
        self.dataset_dir, self.output_dir, self.device = Path(dataset_dir), Path(output_dir), torch.device(device)
        if amp not in (None, "bfloat16"):
            raise DataError("--amp", f"must be null or bfloat16, got {amp!r}")
        if int(num_workers) < 0:
            raise DataError("--num_workers", f"must be 0 or more, got {num_workers}")
        self.amp, self.uncertainty, self.num_workers, self.report = amp, uncertainty, int(num_workers), report

    def predict(self, path: Path) -> tuple[dict[str, np.ndarray], np.ndarray, dict | None]:
        """({"liver": mask uint8, "content": float32[, "uncertainty": float32]}, affine, quality) of one
        volume, on its own grid; quality: its numbers and flags (``bundle.quality``; ``None`` when the
        postprocessing has no ``CaseQualityd``). The volume is read once, by the preprocessing's loader, which validates it.
        """
        return self._infer(self._load(path))

    def _load(self, path: Path) -> dict:
        return self.preprocessing({"image": str(path)})

    @torch.no_grad()
    def _infer(self, data: dict) -> tuple[dict[str, np.ndarray], np.ndarray, dict | None]:
        self.network.eval()
        image = data["image"].to(self.device)[None]
        dtype = autocast_dtype(self.amp, self.device)
        with torch.autocast(self.device.type, dtype=dtype, enabled=dtype is not None):
            logits, content, *rest = self.inferer(image, self.network.segment_with_content)
        data["pred"], data["content"] = logits[0].float().cpu(), content[0].float().cpu()
        if self.network.image_unet is not None:  # the dual path's third output: each path's liver probability
            data["paths"] = rest.pop(0)[0].float().cpu()
        if self.uncertainty:
            if not rest:
                raise ValueError("uncertainty needs an ensemble inferer (EnsembleInferer); this inferer gives none")
            data["uncertainty"] = rest[0][0].float().cpu()
        data = self.postprocessing(data)
        outputs = {"liver": np.asarray(data["pred"][0], dtype=np.uint8), "content": np.asarray(data["content"][0], dtype=np.float32)}
        if self.uncertainty:
            outputs["uncertainty"] = np.asarray(data["uncertainty"][0], dtype=np.float32)
        affine = np.asarray(data["pred"].affine, dtype=np.float64)
        quality = data.get("quality")
        display = data.pop("display", None)  # the normalised image on the input's grid (postprocessing), for the report
        if quality is not None and self.report and display is not None:
            quality = quality | {"thumbnails": case_thumbnails(np.asarray(display[display.shape[0] // 2]), outputs["liver"], affine)}
        return outputs, affine, quality

    def write(self, name: str, outputs: dict[str, np.ndarray], affine: np.ndarray, output_dir: Path) -> dict[str, Path]:
        """Write each ``outputs[key]`` as ``<name>_<key>.nii.gz`` to ``output_dir``, all or none."""
        paths = {key: output_dir / f"{name}_{key}.nii.gz" for key in outputs}
        for path in paths.values():  # what a run killed while writing this case left behind
            for stale in output_dir.glob(f".tmp-????????-{path.name}"):
                stale.unlink(missing_ok=True)
        with atomic_outputs(list(paths.values())) as tmps:
            for array, tmp in zip(outputs.values(), tmps):
                _write_nifti(array, affine, tmp)
        return paths

    def _write_case(self, path: Path, outputs: dict[str, np.ndarray], affine: np.ndarray, start: float) -> dict[str, Path]:
        paths = self.write(case_name(path), outputs, affine, self.output_dir)
        logger.info("%s -> %s (%.1f s)", path.name, paths["liver"], time.perf_counter() - start)
        return paths

    def segment(self, path: Path) -> dict[str, Path]:
        """Segment one volume into ``output_dir``; returns the paths of its outputs by key (``liver``, ``content``, ...)."""
        outputs, affine, _ = self.predict(path)
        return self.write(case_name(path), outputs, affine, self.output_dir)

    def _check_outputs(self, cases: list[Path]) -> None:
        """Before any work: no two cases write the same files (``a.nii`` and ``a.nii.gz``), and
        no output replaces a file of the input folder (a user's ``p1_liver.nii.gz`` next to
        ``p1.nii.gz``). Earlier results in a separate ``output_dir`` are replaced (documented)."""
        by_name: dict[str, Path] = {}
        for path in cases:
            if (other := by_name.setdefault(case_name(path), path)) != path:
                raise DataError(self.dataset_dir, f"{other.name} and {path.name} would both be written as {case_name(path)}_liver.nii.gz; rename one")
        if self.output_dir.resolve() == self.dataset_dir.resolve():
            for name in by_name:
                for suffix in OUTPUT_SUFFIXES:
                    if (existing := self.output_dir / f"{name}{suffix}.nii.gz").exists():
                        raise DataError(existing, "is in the input folder and would be overwritten; choose another --output_dir")

    def __call__(self) -> dict[str, str]:
        """Segment every case (under ``torchrun``, this rank's share); returns ``{case: mask path}``
        of all cases. Raises after the loop if any case failed (rank 0, for every rank's cases)."""
        start = time.perf_counter()
        cases = find_volumes(self.dataset_dir)
        self._check_outputs(cases)
        check_writable_dir(self.output_dir)
        distributed = dist.is_available() and dist.is_initialized()
        rank, world = (dist.get_rank(), dist.get_world_size()) if distributed else (0, 1)
        done, failed = self._segment_all(cases[rank::world])
        if distributed:
            gathered: list = [None] * world
            dist.all_gather_object(gathered, (done, failed))
            done = {k: v for d, _ in gathered for k, v in d.items()}
            failed = [m for _, f in gathered for m in f]
        if rank == 0:
            minutes = (time.perf_counter() - start) / 60
            logger.info("%d of %d cases segmented in %.1f min (%.1f volumes/min, %d process(es))", len(done), len(cases), minutes,
                        len(done) / minutes if minutes > 0 else float("inf"), world)
            if done and "flags" in next(iter(done.values())):
                self._report_quality([done[k] for k in sorted(done)])
            if failed:
                raise DataError(self.dataset_dir, f"{len(failed)} of {len(cases)} cases failed: " + "; ".join(failed))
        return {case: row["mask"] for case, row in sorted(done.items())}

    def _report_quality(self, rows: list[dict]) -> None:
        """One WARNING line per flagged case, ``summary.csv`` (and ``report.html``) beside the masks,
        and the run's quality summary."""
        for row in rows:
            if row["flags"]:
                logger.warning("%s: check this mask (%s)", row["case"], "; ".join(row["flags"]))
        paths = [write_summary(rows, self.output_dir / "summary.csv")]
        if self.report:
            paths.append(write_report(rows, self.output_dir / "report.html"))
        flagged = [row["case"] for row in rows if row["flags"]]
        logger.info("quality: %d of %d cases flagged%s; per case: %s", len(flagged), len(rows),
                    f" ({', '.join(flagged)})" if flagged else "", ", ".join(map(str, paths)))

    def _segment_all(self, cases: list[Path]) -> tuple[dict[str, dict], list[str]]:
        """Segment ``cases``: ({case: its row: file, mask path, quality numbers and flags}, [failure messages]). With ``num_workers``, reading
        runs ``num_workers`` cases ahead and writing behind, in threads, beside the network."""
        pool = ThreadPoolExecutor(self.num_workers) if self.num_workers > 0 else None
        submit = pool.submit if pool is not None else _call_now
        ahead = max(self.num_workers, 1)
        loads = {i: submit(self._load, path) for i, path in enumerate(cases[:ahead])}
        writes, failed = [], []
        try:
            for i, path in enumerate(cases):
                if i + ahead < len(cases):
                    loads[i + ahead] = submit(self._load, cases[i + ahead])
                start = time.perf_counter()
                try:
                    outputs, affine, quality = self._infer(loads.pop(i).result())
                except Exception as e:  # any failure is this case's, not the folder's
                    failed.append(_failure(path, e))
                    continue
                writes.append((path, quality, submit(self._write_case, path, outputs, affine, start)))
            done = {}
            for path, quality, written in writes:
                try:
                    mask = str(written.result()["liver"])
                except Exception as e:
                    failed.append(_failure(path, e))
                    continue
                done[case_name(path)] = {"case": case_name(path), "file": str(path), "mask": mask, **(quality or {})}
        finally:
            if pool is not None:
                pool.shutdown(wait=True, cancel_futures=True)
        return done, failed


def _call_now(fn: Callable, *args) -> Future:
    """``fn(*args)`` run at once, as a finished future: the no-thread path of ``_segment_all``."""
    future: Future = Future()
    try:
        future.set_result(fn(*args))
    except Exception as e:
        future.set_exception(e)
    return future


def _failure(path: Path, e: Exception) -> str:
    """The one-line report of a failed case, logged: our ``DataError`` (file and problem) where
    there is one under MONAI's wrappers, else the root cause with the case's path."""
    error = unwrap_data_error(e)  # MONAI wraps our reader's DataError in "applying transform ..."
    if not isinstance(error, DataError):
        while error.__cause__ is not None:
            error = error.__cause__
    message = str(error) if isinstance(error, DataError) else f"{path}: {error}"
    logger.error("%s", message)
    return message
