"""The performance bench: `python bench/run.py` (see docs/performance.md)."""
