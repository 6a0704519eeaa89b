"""Benchmarks: `python -m bench.<name>`; `make bench` runs them on a fixed corpus subset."""
