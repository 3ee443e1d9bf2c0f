"""Stage-1 validation signals of a trained DRLModule on a datalist (what training logs, once).

    python scripts/drl_validate.py --drl runs/drl/drl.pth --datalist DATALIST [--image_size 128 --dim 32 --shared_res 1]

``--drl``: a whole stage-1 DRLModule (what configs/drl_train.yaml writes); sizes default to the configs'.

Prints one JSON line: reconstruction L1 per domain and the content-code domain classifier
accuracy (folds hold out subjects; 0.5 = shared content space).
"""

import json

import torch

from bundle.cli import run_cli
from bundle.data.slices import load_slices
from bundle.handlers import DRLValidation
from bundle.networks import DRLModule


def main(drl: str, datalist: str, image_size: int = 128, dim: int = 32, n_down: int = 2, n_res: int = 4, shared_res: int = 1,
         norm: str = "instance", n_slices: int = 64) -> None:
    network = DRLModule(dim=dim, n_down=n_down, n_res=n_res, shared_res=shared_res, norm=norm, image_size=image_size)
    network.load_state_dict(torch.load(drl, map_location="cpu", weights_only=True))
    source = load_slices(datalist, "source", "ct", image_size)
    target = load_slices(datalist, "target", "mr", image_size)
    metrics, _ = DRLValidation(network, source, target, output_dir=".", n_slices=n_slices).compute(torch.device("cpu"))
    print(json.dumps({"drl": drl, **{k: round(v, 4) for k, v in metrics.items()}}))


if __name__ == "__main__":
    run_cli(main)
