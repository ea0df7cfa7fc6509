"""The runtime: load generated modules, the reference interpreter, training and evaluation."""
