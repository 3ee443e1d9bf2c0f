"""Figures in the style of the paper's: Fig. 1 (domain shift), Fig. 4-5 (content-only images, predictions) and
grids of slices for Fig. 3-7 (translations, content-only images, style transfer)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import SimpleITK as sitk  # noqa: E402
import torch  # noqa: E402

from bundle.atomic import atomic_outputs  # noqa: E402

__all__ = ["domain_shift_figure", "adaptation_figure", "slice_grid"]


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
    return _save(fig, out)


def _save(fig, out: str | Path) -> Path:
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_outputs([out]) as (tmp,):
        fig.savefig(tmp, dpi=90)
    plt.close(fig)
    return out


def _radiological(image) -> np.ndarray:
    from bundle.handlers import radiological

    return radiological(torch.as_tensor(np.asarray(image, dtype=np.float32))).numpy()


def _array(path: str | Path) -> np.ndarray:
    return sitk.GetArrayFromImage(sitk.ReadImage(str(path))).astype(np.float32)


def adaptation_figure(rows: Sequence[tuple[str, Sequence[tuple[str, str | Path]]]], liver: Sequence[str | Path], out: str | Path) -> Path:
    """Paper Fig. 4-5: one row per case, its images side by side at the slice with most liver.

    ``rows`` are (row title, [(panel title, volume path), ...]); masks (uint8 volumes) are shown
    as they are, images with a robust grey window; ``liver[i]`` (row i's reference mask) is
    outlined in yellow on every panel of its row.
    """
    masks = [_array(path) > 0 for path in liver]
    levels = [int(np.argmax(mask.sum(axis=(1, 2)))) for mask in masks]

    def draw(ax, r: int, path: str | Path) -> None:
        image = _array(path)[levels[r]]
        low, high = np.percentile(image, [0.5, 99.5]) if image.max() > 1 or image.min() < 0 else (0.0, 1.0)
        ax.imshow(image, cmap="gray", vmin=low, vmax=high)
        ax.contour(masks[r][levels[r]], levels=[0.5], colors="yellow", linewidths=0.6)

    return _grid(rows, draw, out, (2.6, 2.8))


def slice_grid(rows: Sequence[tuple[str, Sequence[tuple[str, np.ndarray]]]], out: str | Path, outlines: Sequence[np.ndarray | None] | None = None) -> Path:
    """A grid of 2D slices in network units ([-1, 1]), shown radiologically (anterior up,
    patient's right on the left), one row per (row title, [(panel title, slice), ...]);
    ``outlines[i]`` (a 2D mask or ``None``) is drawn in yellow on every panel of row i."""

    def draw(ax, r: int, image) -> None:
        ax.imshow(_radiological(image), cmap="gray", vmin=-1, vmax=1)
        if outlines is not None and outlines[r] is not None:
            ax.contour(_radiological(outlines[r]), levels=[0.5], colors="yellow", linewidths=0.6)

    return _grid(rows, draw, out, (2.3, 2.5))


def _grid(rows: Sequence[tuple[str, Sequence[tuple[str, object]]]], draw, out: str | Path, panel_size: tuple[float, float]) -> Path:
    """One titled panel per (row title, [(panel title, content), ...]) entry; ``draw(ax, row, content)`` fills it."""
    n_cols = max(len(panels) for _, panels in rows)
    fig, axes = plt.subplots(len(rows), n_cols, figsize=(panel_size[0] * n_cols, panel_size[1] * len(rows)), squeeze=False)
    for r, (row_title, panels) in enumerate(rows):
        for c in range(n_cols):
            ax = axes[r, c]
            ax.axis("off")
            if c < len(panels):
                title, content = panels[c]
                draw(ax, r, content)
                ax.set_title(f"{row_title}: {title}" if c == 0 else title, fontsize=9)
    fig.tight_layout()
    return _save(fig, out)
