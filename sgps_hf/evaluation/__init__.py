"""Benchmark protocol, baselines and metrics."""
