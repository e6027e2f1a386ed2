"""Evaluate SMTC (label propagation or object discovery): `python jobs/eval_smtc.py --help`, or
`ray job submit -- python jobs/eval_smtc.py ...`."""
import sys

from raytrain.cli.evaluate import main_smtc

if __name__ == "__main__":
    main_smtc(sys.argv[1:])
