"""Placeholder until the benchmark lands: checks the package imports."""

import jobqueue

print(f"jobqueue {jobqueue.__version__}: stages naive, improved, final")
