"""`make demo`: the whole pipeline on built-in phantoms, on CPU.

    python scripts/demo.py --out demo_output
"""


from bundle.cli import run_cli
from bundle.demo import run_demo


def main(out: str = "demo_output", n_ct: int = 6, n_mr: int = 8, size: int = 96, seed: int = 0, drl_iterations: int = 1500,
         seg_epochs: int = 15, image_size: int = 64, dim: int = 16) -> None:
    run_demo(out, n_ct=n_ct, n_mr=n_mr, size=size, seed=seed, drl_iterations=drl_iterations, seg_epochs=seg_epochs,
             image_size=image_size, dim=dim)


if __name__ == "__main__":
    run_cli(main)
