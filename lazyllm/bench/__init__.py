"""The benchmark rig (`lazyllm bench`, entry point `cli.py`; one run is `run.py`) and the RULER-style tasks."""
