"""The cohort report: one static HTML page, the flagged cases first, each with thumbnails of its mask.

A user with 200 scans opens one page, not 200 masks: per case an axial montage through the
liver and a coronal view, the mask outlined on the image, its quality numbers and flags, and a
link to the mask file. Thumbnails are small JPEGs embedded in the page (base64), so it opens
offline and from any copy of the folder (JPEG, about 20 KB a case); they are drawn with numpy and Pillow, not a plotting
library, so a case costs milliseconds beside its inference.
"""

from __future__ import annotations

import base64
import html
import io
import os
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage

from bundle.atomic import atomic_outputs
from bundle.data.orientation import anatomical_axis
from bundle.quality import QUALITY_FIELDS

__all__ = ["case_thumbnails", "write_report"]

OUTLINE = np.array([255, 40, 40], dtype=np.uint8)


def _display(plane: np.ndarray, mask: np.ndarray, spacing: tuple[float, float], height: int) -> np.ndarray:
    """One view (rows top to bottom, columns left to right) as RGB ``height`` px high at its physical
    aspect, the mask's outline in red."""
    width = max(1, int(round(height * plane.shape[1] * spacing[1] / (plane.shape[0] * spacing[0]))))
    grey = np.asarray(Image.fromarray(np.clip((plane + 1) * 127.5, 0, 255).astype(np.uint8)).resize((width, height), Image.BILINEAR))
    inside = np.asarray(Image.fromarray(mask.astype(np.uint8) * 255).resize((width, height), Image.NEAREST)) > 0
    rgb = np.repeat(grey[..., None], 3, axis=2)
    rgb[inside & ~ndimage.binary_erosion(inside, iterations=2)] = OUTLINE  # 2 px: a 1-px red line blurs away in JPEG
    return rgb


def _jpeg(rgb: np.ndarray) -> str:
    """Base64 JPEG: a third of a PNG's size and encoding time for these thumbnails, the outline still plain."""
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, format="JPEG", quality=85)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def case_thumbnails(image: np.ndarray, mask: np.ndarray, affine: np.ndarray, n_axial: int = 4, height: int = 96) -> dict[str, str]:
    """Base64 JPEGs of one case (``image`` normalised to [-1, 1] and ``mask``, both on the case's grid):
    ``axial``: ``n_axial`` slices evenly through the liver (through the volume when the mask is
    empty), side by side; ``coronal``: the slice through the mask's centre. Radiological display:
    anterior up and the patient's right on the left (axial), superior up (coronal)."""
    axes = {code: anatomical_axis(affine, code) for code in ("S", "A", "P", "I", "L")}
    spacing = np.sqrt((np.asarray(affine)[:3, :3] ** 2).sum(axis=0))

    def view(fixed: str, index: int, down: str, across: str) -> np.ndarray:
        """The plane at ``index`` along ``fixed``'s axis, rows going towards ``down``, columns towards ``across``."""
        (row_axis, row_sign), (col_axis, col_sign) = axes[down], axes[across]
        remaining = [a for a in range(3) if a != axes[fixed][0]]
        at = tuple(index if a == axes[fixed][0] else slice(None) for a in range(3))  # a view: np.take would copy the volume
        planes = [v[at].transpose(remaining.index(row_axis), remaining.index(col_axis))[::row_sign, ::col_sign] for v in (image, mask)]
        return _display(planes[0], planes[1] > 0, (spacing[row_axis], spacing[col_axis]), height)

    z_axis = axes["S"][0]
    present = np.nonzero(mask.any(axis=tuple(a for a in range(3) if a != z_axis)))[0]
    low, high = (present[0], present[-1]) if len(present) else (0, mask.shape[z_axis] - 1)
    slices = np.unique(np.linspace(low, high, n_axial + 2).round().astype(int)[1:-1]) if high > low else [low]
    axial = np.concatenate([view("S", int(k), "P", "L") for k in slices], axis=1)  # anterior up, the patient's right on the left
    a_axis = axes["A"][0]
    profile = mask.sum(axis=tuple(a for a in range(3) if a != a_axis), dtype=np.int64)
    centre = int(round((profile * np.arange(len(profile))).sum() / profile.sum())) if profile.any() else mask.shape[a_axis] // 2
    return {"axial": _jpeg(axial), "coronal": _jpeg(view("A", centre, "I", "L"))}  # superior up


_STYLE = """body{font-family:sans-serif;margin:1.5em;color:#222}table{border-collapse:collapse}
td,th{border-bottom:1px solid #ccc;padding:4px 8px;vertical-align:top;text-align:left}
tr.flagged{background:#fff1f0}.flags{color:#b00;font-weight:bold}img{image-rendering:auto;display:block}
.numbers{font-size:90%;white-space:nowrap}"""


def _number(value) -> str:
    if value is None or value == "":
        return "-"
    return f"{value:g}" if isinstance(value, float) else html.escape(str(value))


def write_report(rows: list[dict], path: str | Path, title: str = "Liver segmentation: quality report") -> Path:
    """``path`` (report.html), atomically: one table row per case (``rows``: case, file, mask, the
    quality numbers, flags and thumbnails), the flagged cases first (by number of flags), then
    the others by name. Links to the masks are relative to the page."""
    path = Path(path)
    ordered = sorted(rows, key=lambda r: (-len(r["flags"]), r["case"]))
    flagged = sum(1 for r in rows if r["flags"])
    lines = ["<!DOCTYPE html>", "<html lang='en'><head><meta charset='utf-8'>", f"<title>{html.escape(title)}</title>",
             f"<style>{_STYLE}</style></head><body>", f"<h1>{html.escape(title)}</h1>",
             f"<p id='summary'>{len(rows)} cases, <span class='flags'>{flagged} flagged</span> (listed first: check these masks). "
             "Red: the liver mask's outline. Axial: anterior up, the patient's right on the left.</p>",
             "<table id='cases'><thead><tr><th>case</th><th>flags</th><th>numbers</th><th>axial</th><th>coronal</th></tr></thead><tbody>"]
    for row in ordered:
        mask_link = os.path.relpath(row["mask"], path.parent) if row.get("mask") else ""
        numbers = "<br>".join(f"{k}: {_number(row.get(k))}" for k in QUALITY_FIELDS)
        flags = "<br>".join(html.escape(f) for f in row["flags"]) or "none"
        thumbs = row.get("thumbnails") or {}
        images = [f"<img alt='{view} view of {html.escape(row['case'])}' src='data:image/jpeg;base64,{thumbs[view]}'>" if view in thumbs else "-"
                  for view in ("axial", "coronal")]
        lines.append(f"<tr class='case{' flagged' if row['flags'] else ''}' data-case='{html.escape(row['case'])}' data-flags='{len(row['flags'])}'>"
                     f"<td><b>{html.escape(row['case'])}</b><br><a href='{html.escape(mask_link)}'>mask</a></td>"
                     f"<td class='{'flags' if row['flags'] else ''}'>{flags}</td><td class='numbers'>{numbers}</td>"
                     f"<td>{images[0]}</td><td>{images[1]}</td></tr>")
    lines += ["</tbody></table></body></html>"]
    with atomic_outputs([path]) as (tmp,):
        tmp.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path
