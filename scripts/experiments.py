"""The paper's experiments: subject-wise k-fold DADR vs no adaptation, DACGAN, supervised MR, joint learning, multi-phasic MR.

    python scripts/experiments.py --datalist FILE --out DIR [--folds 5] [--multiphase_datalist FILE]
        [--size 128] [--dim 32] [--drl_iterations N] [--cyclegan_iterations N] [--seg_epochs N] [--figures False] [--split_source False]

Re-running with the same --out resumes: finished steps and folds are not recomputed.
One job per fold (a cluster, or folds across sessions): --run_folds 1 trains fold 1 only; the tables
take every fold of --out that has finished, and results.md names them. --run_folds all trains the
chosen models once more on every subject (DIR/<experiment>/all, nothing tested): the model to ship.
"""

import functools

from bundle.cli import run_cli
from bundle.experiments import run_experiments


@functools.wraps(run_experiments)
def main(*args, **kwargs) -> None:
    run_experiments(*args, **kwargs)  # the tables are printed; the returned dict is not


if __name__ == "__main__":
    run_cli(main)
