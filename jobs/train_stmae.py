"""Train STMAE on Ray Train: `python jobs/train_stmae.py --help`, or `ray job submit -- python jobs/train_stmae.py ...`."""
import sys

from raytrain.cli.train import main

if __name__ == "__main__":
    main("stmae", sys.argv[1:])
