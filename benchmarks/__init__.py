"""Benchmark harness for the shipper's CPU and memory budget (issue 3).

`python -m benchmarks.run --help`; see benchmarks/README.md.
"""
