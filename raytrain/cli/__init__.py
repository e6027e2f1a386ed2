"""Command-line front-ends of the jobs (`jobs/*.py` call these)."""
