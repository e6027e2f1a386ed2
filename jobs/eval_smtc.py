"""Evaluate SMTC (label propagation or object discovery): `python jobs/eval_smtc.py --help`, or
`ray job submit -- python jobs/eval_smtc.py ...`."""
import sys

from raytrain.cli.evaluate import main_smtc
from shards.errors import run_cli

if __name__ == "__main__":
    sys.exit(run_cli(main_smtc))
