"""Benchmarks: figures as ratios against references measured in the same run (bench/RESULTS.md)."""
