"""Benchmark helpers: RULER-style long-context tasks and scoring."""
