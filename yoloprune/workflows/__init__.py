"""Workflows on top of the engine and the sources: evaluation, training, sweeps (local and on Ray), iterative
pruning, export, latency, the demo, ``info`` and the tables they write."""
