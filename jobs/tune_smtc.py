"""Sweep SMTC hyper-parameters with Ray Tune (ASHA): `python jobs/tune_smtc.py --help`, or
`ray job submit --working-dir . -- python jobs/tune_smtc.py ...`. No --data: a tiny sweep on synthetic data."""
import sys

from raytrain.cli.sweep import main

if __name__ == "__main__":
    main("smtc", sys.argv[1:])
