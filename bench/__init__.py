"""Benchmarks of the precheck server; run each as `python -m bench.NAME` from the repo root."""
