"""dagc: compile a connectome's constrained DAG into a flat PyTorch classifier."""

__version__ = "0.1.0"
