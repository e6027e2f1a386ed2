"""Sweep STMAE hyper-parameters with Ray Tune (ASHA): `python jobs/tune_stmae.py --help`, or
`ray job submit --working-dir . -- python jobs/tune_stmae.py ...`. No --data: a tiny sweep on synthetic data."""
import sys

from raytrain.cli.sweep import main

if __name__ == "__main__":
    main("stmae", sys.argv[1:])
