"""Benchmarks: bench.py (speed and memory) and load.py (load and churn), each against Kernel Gateway 3.0.1."""
