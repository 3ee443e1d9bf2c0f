"""Copy a trained inference network and DRLModule into models/ in half precision (40 MB budget).

    python scripts/ship_model.py --model runs/real_seg_dadr/model.pt --drl runs/real_drl/drl.pth [--out models]
    [--image_model runs/real_seg/model.pt]   # model.pt: the dual path of the two (inference.yaml --adaptation dual)
    [--fallback_model runs/synth/model.pt]   # model.pt: --model, and this UNet where its mask fails the quality checks
                                             # (inference.yaml --adaptation fallback)
"""


from bundle.cli import run_cli
from bundle.shipping import ship_weights

if __name__ == "__main__":
    run_cli(ship_weights)
