"""Benchmarks for `make bench`: each case prints packets (or records) per second."""
