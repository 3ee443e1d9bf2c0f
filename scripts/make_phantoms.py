"""Write the built-in synthetic CT and multi-phasic MR phantoms and their datalists.

    python scripts/make_phantoms.py --out DIR --n_ct N --n_mr M --seed S [--size 128] [--figure PNG]
"""

from pathlib import Path

from bundle.cli import run_cli
from bundle.data.phantoms import MR_SEQUENCES, make_phantoms
from bundle.figures import domain_shift_figure


def main(out: str, n_ct: int = 8, n_mr: int = 8, seed: int = 0, size: int = 128, n_mr_test: int | None = None, figure: str | None = None) -> None:
    """Phantoms under OUT; with --figure, also the paper's Fig. 1 for the first CT and MR subject."""
    datalists = make_phantoms(out, n_ct=n_ct, n_mr=n_mr, seed=seed, size=size, n_mr_test=n_mr_test)
    main_list = datalists["datalist.json"]
    print(f"{out}: {n_ct} CT and {n_mr} MR subjects ({len(MR_SEQUENCES)} sequences each), {size}x{size} in-plane")
    print(f"datalists: {', '.join(sorted(datalists))} (source={len(main_list['source'])}, "
          f"target={len(main_list['target'])}, target_test={len(main_list['target_test'])})")
    if figure:
        root = Path(out)
        cases = [("CT", root / "ct/ct_000_image.nii.gz", root / "ct/ct_000_liver.nii.gz")]
        test_subject = main_list["target_test"][0]["subject"]
        cases += [(s, root / f"mr/{test_subject}_{s}_image.nii.gz", root / f"mr/{test_subject}_liver.nii.gz") for s in MR_SEQUENCES]
        print(f"figure: {domain_shift_figure(cases, figure)}")


if __name__ == "__main__":
    run_cli(main)
