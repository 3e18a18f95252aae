"""Benchmarks of a pool-server and its client, run as scripts: ``python -m bench.<name>``."""
