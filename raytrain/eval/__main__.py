"""`python -m raytrain.eval score --davis ROOT --results DIR --task semi|unsup ...` (`--help` lists the flags)."""
import sys

from raytrain.eval.score_cli import main
from shards.errors import run_cli

COMMANDS = {"score": main}

if __name__ == "__main__":
    if len(sys.argv) < 2 or sys.argv[1] not in COMMANDS:
        sys.exit(f"usage: python -m raytrain.eval {{{','.join(COMMANDS)}}} [flags]  (e.g. python -m raytrain.eval "
                 "score --help)")
    sys.exit(run_cli(COMMANDS[sys.argv[1]], sys.argv[2:], prog=f"python -m raytrain.eval {sys.argv[1]}"))
