"""Score a results folder against DAVIS-2017 (semi-supervised or unsupervised): `python jobs/score.py --help`, or
`ray job submit -- python jobs/score.py --davis ... --results ... --task semi`."""
import sys

from raytrain.eval.score_cli import main
from shards.errors import run_cli

if __name__ == "__main__":
    sys.exit(run_cli(main))
