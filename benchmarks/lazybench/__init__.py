"""The benchmark rig (`python -m lazybench`, entry point `cli.py`; one run is `run.py`) and the RULER-style tasks."""
