"""The published numbers dagc is compared with: Park & Kim 2023, Table 1 (test accuracy, %)."""

from __future__ import annotations

# (connectome, DAG kind, data set) -> test accuracy in percent, single runs.
PAPER_ACCURACY: dict[tuple[str, str, str], float] = {
    ("hermaphrodite", "constrained", "mnist"): 99.6,
    ("male", "constrained", "mnist"): 99.5,
    ("hermaphrodite", "constrained", "fashion-mnist"): 92.7,
    ("male", "constrained", "fashion-mnist"): 92.6,
    ("hermaphrodite", "random", "mnist"): 99.0,  # random DAG (Roberts et al. 2019)
    ("hermaphrodite", "ws", "mnist"): 99.3,  # Watts-Strogatz random graph
}


def paper_accuracy(connectome: str, dag: str, dataset: str) -> float | None:
    return PAPER_ACCURACY.get((connectome, dag, dataset))


def paper_accuracy_of(model_path: str, dataset: str) -> float | None:
    """The published accuracy for the network in a generated file on `dataset`, if any.
    (Imports the file; `dagc train` then finds it in sys.modules. A file that does not load
    gives None here: training reports why in its own words.)"""
    from dagc.compiler.errors import DagcError
    from dagc.runtime.loading import load_generated

    try:
        module = load_generated(model_path)
    except DagcError:
        return None
    connectome = getattr(module, "CONNECTOME", None)
    return paper_accuracy(connectome, getattr(module, "DAG_KIND", None), dataset)
