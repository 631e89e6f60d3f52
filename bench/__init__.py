"""Benchmarks run by `make bench`: each prints one JSON line, our way against the naive way."""
