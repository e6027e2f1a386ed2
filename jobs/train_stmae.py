"""Train STMAE on Ray Train: `python jobs/train_stmae.py --help`, or `ray job submit -- python jobs/train_stmae.py ...`."""
import sys
from functools import partial

from raytrain.cli.train import main
from raytrain.methods.stmae import METHOD
from shards.errors import run_cli

if __name__ == "__main__":
    sys.exit(run_cli(partial(main, METHOD)))
