"""Measured benchmarks, run as ``momentkit bench NAME`` (one module per benchmark)."""
