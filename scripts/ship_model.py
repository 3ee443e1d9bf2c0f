"""Copy a trained inference network and DRLModule into models/ in half precision (40 MB budget).

    python scripts/ship_model.py --model runs/real_seg_dadr/model.pt --drl runs/real_drl/drl.pth [--out models]
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bundle.cli import run_cli  # noqa: E402
from bundle.shipping import ship_weights  # noqa: E402

if __name__ == "__main__":
    run_cli(ship_weights)
