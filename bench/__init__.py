"""Benchmarks: measure the service side by side with baselines and write a report."""
