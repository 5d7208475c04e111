"""Benchmarks of the I/O and TLS layers; run `python -m bench.run`."""
