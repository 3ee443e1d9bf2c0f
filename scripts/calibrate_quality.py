"""Choose the quality flags' thresholds on scored predictions (bundle/quality.py, inference.yaml ``quality``).

    python scripts/calibrate_quality.py --metrics "RUN/dadr/fold_*/MODEL/test_mr*/metrics.json" [--metrics "..."] \\
        [--liver_ml 700,3500] [--confidence 0,0.85,0.9] [--paths_dice 0,0.6,0.7] [--fov_cut none,top,both] [--cases True]

Reads every case (its Dice and quality numbers, as evaluation writes them into ``metrics.json``) of the files the
globs match (comma-separated globs, or ``--metrics`` given several times) and prints, for each combination of
thresholds, how many cases below Dice 0.70 are flagged and how many from 0.80 are (false alarms): the table of
docs/RESULTS.md, "Quality control". ``--cases True`` also prints every case (its folder, Dice, numbers and the flags
under the first value of each threshold list). Labels are read only through the Dice evaluation already computed.
"""

import glob
import itertools
import json
from pathlib import Path

from bundle.cli import flag, run_cli
from bundle.errors import DataError
from bundle.quality import QUALITY_FIELDS, flag_rates, quality_flags


def _values(text) -> list:
    items = text if isinstance(text, (list, tuple)) else str(text).split(",")
    return [float(v) if str(v).replace(".", "", 1).replace("-", "", 1).isdigit() or str(v) == "inf" else str(v).strip() for v in items]


def calibrate(metrics: str | list, liver_ml: str | tuple = (700, 3500), confidence: str | tuple = (0, 0.8, 0.85, 0.9),
              paths_dice: str | tuple = (0, 0.6, 0.7, 0.75), fov_cut: str | tuple = ("none", "top", "both"), cases: bool = False) -> None:
    """Print the flags' separation of failed (Dice < 0.70) and good (Dice >= 0.80) cases for every combination."""
    patterns = [p for item in (metrics if isinstance(metrics, (list, tuple)) else [metrics]) for p in str(item).split(",") if p]
    files = sorted({f for p in patterns for f in glob.glob(str(Path(p).expanduser()))})
    rows = []
    for path in files:
        for row in json.loads(Path(path).read_text())["subjects"]:
            if all(k in row for k in QUALITY_FIELDS[:2]):  # liver_ml, confidence: what every release's evaluation wrote
                rows.append(row | {"source": path})
    if not rows:
        raise DataError(",".join(patterns), "matches no metrics.json with quality numbers (evaluate with this release's inference.yaml)")
    low, high = _values(liver_ml)
    print(f"{len(rows)} cases from {len(files)} files; Dice < 0.70: {sum(r['dice'] < 0.7 for r in rows)}, >= 0.80: {sum(r['dice'] >= 0.8 for r in rows)}")
    print("| min_confidence | min_paths_dice | fov_cut | failed flagged | good flagged |\n|---|---|---|---|---|")
    for c, p, f in itertools.product(_values(confidence), _values(paths_dice), _values(fov_cut)):
        rates = flag_rates(rows, liver_ml=(low, high), min_confidence=c, min_paths_dice=p, fov_cut=f)
        print(f"| {c} | {p} | {f} | {rates['failed_flagged']} of {rates['failed']} | {rates['good_flagged']} of {rates['good']} |")
    if flag(cases, "cases"):
        chosen = {"liver_ml": (low, high), "min_confidence": _values(confidence)[0], "min_paths_dice": _values(paths_dice)[0],
                  "fov_cut": _values(fov_cut)[0]}
        print(f"\nEvery case, flags under {chosen}:\n\n| folder | case | Dice | liver mL | confidence | paths Dice | top / bottom | fallback | flags |"
              "\n|---|---|---|---|---|---|---|---|---|")
        for r in sorted(rows, key=lambda r: (r["source"], r["subject"])):
            flags = [f.split(":", 1)[0] for f in quality_flags(r, **chosen)] + (["fallback"] if r.get("fallback") else [])
            folder = Path(r["source"]).parent
            print(f"| {folder.parent.name}/{folder.name} | {r['subject']} | {r['dice']:.3f} | {r['liver_ml']:.0f} | {r['confidence']:.3f} | "
                  f"{'-' if r.get('paths_dice') is None else format(r['paths_dice'], '.2f')} | {int(r['touches_top'])} / {int(r['touches_bottom'])} | "
                  f"{'yes' if r.get('fallback') else ''} | {', '.join(flags)} |")


if __name__ == "__main__":
    run_cli(calibrate)
