"""Train SMTC on Ray Train: `python jobs/train_smtc.py --help`, or `ray job submit -- python jobs/train_smtc.py ...`."""
import sys

from raytrain.cli.train import main

if __name__ == "__main__":
    main("smtc", sys.argv[1:])
