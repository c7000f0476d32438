"""Benchmark scripts: each writes a markdown table (and plots) to benchmarks/results/."""
