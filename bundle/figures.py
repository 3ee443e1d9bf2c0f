"""Figures in the style of the paper's (Fig. 1: images and liver vs whole-image histograms)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import SimpleITK as sitk  # noqa: E402

from bundle.atomic import atomic_outputs  # noqa: E402

__all__ = ["domain_shift_figure"]


def domain_shift_figure(cases: Sequence[tuple[str, str | Path, str | Path]], out: str | Path) -> Path:
    """Paper Fig. 1: for each (title, image, liver mask), the slice with most liver and the
    intensity histograms of the liver (yellow) and of the whole image (blue).

    The histograms share no axis: each modality has its own units, which is the point.
    """
    fig, axes = plt.subplots(2, len(cases), figsize=(3.2 * len(cases), 6.2), squeeze=False)
    for col, (title, image_path, liver_path) in enumerate(cases):
        image = sitk.GetArrayFromImage(sitk.ReadImage(str(image_path))).astype(np.float32)
        liver = sitk.GetArrayFromImage(sitk.ReadImage(str(liver_path))) > 0
        z = int(np.argmax(liver.sum(axis=(1, 2))))
        low, high = np.percentile(image, [0.5, 99.5])
        axes[0, col].imshow(image[z], cmap="gray", vmin=low, vmax=high)
        axes[0, col].contour(liver[z], levels=[0.5], colors="yellow", linewidths=0.8)
        axes[0, col].set_title(title)
        axes[0, col].axis("off")
        bins = np.linspace(low, high, 80)
        axes[1, col].hist(image.ravel(), bins=bins, density=True, color="tab:blue", alpha=0.6, label="whole image")
        axes[1, col].hist(image[liver], bins=bins, density=True, color="gold", alpha=0.7, label="liver")
        axes[1, col].set_yticks([])
    axes[1, 0].legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_outputs([out]) as (tmp,):
        fig.savefig(tmp, dpi=90)
    plt.close(fig)
    return out
