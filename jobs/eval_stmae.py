"""Evaluate STMAE on DAVIS-16/17 or YouTube-VOS 18/19: `python jobs/eval_stmae.py --help`, or
`ray job submit -- python jobs/eval_stmae.py ...`."""
import sys

from raytrain.cli.evaluate import main_stmae
from shards.errors import run_cli

if __name__ == "__main__":
    sys.exit(run_cli(main_stmae))
