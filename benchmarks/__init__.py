"""Benchmark harness for pyncette; see ``benchmarks/README.md``."""
