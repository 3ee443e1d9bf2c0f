"""The pipeline's steps as Python calls, each through ``monai.bundle run`` with the bundle's configs.

The demo and the experiment runner are sequences of these calls; going through the configs
(rather than building the objects by hand) means they run exactly what a user runs.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from monai.bundle import run as run_bundle

__all__ = ["CONFIGS", "gan_val_interval", "run_stage1", "run_cyclegan", "run_stage2", "run_evaluation"]

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
CHECKPOINT_ITERATIONS = 500  # GAN checkpoints at least this often: 5-13 min at 128 px on a 2-core CPU (bfloat16 to float32), what a stopped run loses


def gan_val_interval(iterations: int) -> int:
    """Iterations between a GAN run's validations and checkpoints: a third of the run, or less
    for long runs (at most ``CHECKPOINT_ITERATIONS``), so that a run stopped part-way resumes
    from a recent checkpoint. The run trains ``iterations // interval`` whole intervals."""
    return max(1, iterations // max(3, math.ceil(iterations / CHECKPOINT_ITERATIONS)))


def _run_gan(configs: list[str], weights: dict, dataset_dir: Path, out: Path, iterations: int, sizes: dict, resume: bool, overrides: dict) -> dict:
    run_bundle("training", config_file=[str(CONFIGS / c) for c in configs], dataset_dir=str(dataset_dir), output_dir=str(out),
               max_iterations=iterations, val_interval=gan_val_interval(iterations), n_val_slices=16, resume=resume,
               **weights, **sizes, **overrides)
    return json.loads((out / "validation.jsonl").read_text().splitlines()[-1])


def run_stage1(dataset_dir: Path, out: Path, iterations: int, sizes: dict, resume: bool = False, **overrides) -> dict:
    """Stage 1 (configs/drl_train.yaml) into ``out``, weights ``out/drl.pt``; returns the last validation.
    ``resume``: continue from the checkpoints of an interrupted run in ``out``."""
    return _run_gan(["drl_train.yaml"], {"drl_path": str(out / "drl.pt")}, dataset_dir, out, iterations, sizes, resume, overrides)


def run_cyclegan(dataset_dir: Path, out: Path, iterations: int, sizes: dict, resume: bool = False, **overrides) -> dict:
    """The DACGAN baseline's CycleGAN (drl_train.yaml + cyclegan_train.yaml) into ``out``,
    weights ``out/cyclegan.pt``; returns the last validation."""
    return _run_gan(["drl_train.yaml", "cyclegan_train.yaml"], {"cyclegan_path": str(out / "cyclegan.pt")}, dataset_dir, out,
                    iterations, sizes, resume, overrides)


def run_stage2(dataset_dir: Path, out: Path, drl_path: Path, epochs: int, sizes: dict, **overrides) -> Path:
    """Stage 2 (configs/train.yaml) into ``out``; returns the model.pt it wrote."""
    run_bundle("training", config_file=str(CONFIGS / "train.yaml"), dataset_dir=str(dataset_dir), drl_path=str(drl_path),
               ckpt_dir=str(out), output_dir=str(out), max_epochs=epochs, **sizes, **overrides)
    return out / "model.pt"


def run_evaluation(datalist: Path, model: Path, out: Path, sizes: dict, **overrides) -> dict:
    """Inference + evaluation (inference.yaml + evaluate.yaml) into ``out``; returns metrics.json."""
    run_bundle("evaluating", config_file=[str(CONFIGS / "inference.yaml"), str(CONFIGS / "evaluate.yaml")], datalist=str(datalist),
               model_path=str(model), output_dir=str(out), **sizes, **overrides)
    return json.loads((out / "metrics.json").read_text())
