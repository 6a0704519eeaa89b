"""Benchmarks: each module has a `measure()` for `make bench` and a `main()`."""
