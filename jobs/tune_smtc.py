"""Sweep SMTC hyper-parameters with Ray Tune (ASHA): `python jobs/tune_smtc.py --help`, or
`ray job submit --working-dir . -- python jobs/tune_smtc.py ...`. No --data: a tiny sweep on synthetic data."""
import sys
from functools import partial

from raytrain.cli.sweep import main
from raytrain.methods.smtc import METHOD
from shards.errors import run_cli

if __name__ == "__main__":
    sys.exit(run_cli(partial(main, METHOD)))
