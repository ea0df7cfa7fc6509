"""`dagc compile` as a function: front end -> render, plus the header that makes it reproducible."""

from __future__ import annotations

import shlex
from pathlib import Path

from .bundled import BUNDLED_NAMES
from .dag import DagOptions
from .errors import DagcError
from .graph import PrepareOptions
from .pipeline import FrontEnd, run_front_end
from .render import CompileOptions, render_module
from .signs import DEFAULT_SIGNS, edge_signs, read_sign_table


def regenerate_command(
    spec: str, prepare: PrepareOptions, dag_options: DagOptions, options: CompileOptions
) -> str:
    """The canonical command line for these options (file names only: no local paths)."""
    connectome = spec if spec in BUNDLED_NAMES else Path(spec).name
    words = ["dagc", "compile", "--connectome", connectome, "--dag", dag_options.kind]
    if dag_options.kind != "constrained":
        words += ["--seed", str(dag_options.seed)]
    words += ["--all-cells"] * (not prepare.neurons_only)
    words += ["--keep-isolated"] * (not prepare.drop_isolated)
    words += ["--keep-unfed"] * (not prepare.drop_unfed)
    words += [
        "--channels", str(options.channels),
        "--in-channels", str(options.in_channels),
        "--num-classes", str(options.num_classes),
        "--input-size", str(options.input_size),
        "--edge-weights", options.edge_weights,
        "--layout", options.layout,
        "--backward", options.backward,
    ]  # fmt: skip
    if options.transmitter_signs:
        words += ["--transmitter-signs", Path(options.transmitter_signs).name]
    words += ["-o", "FILE.py"]
    return shlex.join(words)


def compile_network(
    spec: str,
    prepare: PrepareOptions = PrepareOptions(),
    dag_options: DagOptions = DagOptions(),
    options: CompileOptions = CompileOptions(),
) -> tuple[FrontEnd, str]:
    """Return the front end's results and the generated module's source text."""
    front = run_front_end(spec, prepare, dag_options)
    if not front.plan.nodes:
        raise DagcError(
            "the network would be empty: no node is reachable from the input", spec
        )
    header = {
        "command": regenerate_command(spec, prepare, dag_options, options),
        "source": front.connectome.source,
        "sha256": front.connectome.sha256,
    }
    if options.edge_weights == "dale":
        signs = DEFAULT_SIGNS
        if options.transmitter_signs:
            signs = read_sign_table(Path(options.transmitter_signs))
        header["edge_signs"] = edge_signs(front.plan, signs)
    elif options.transmitter_signs:
        raise DagcError("--transmitter-signs only applies with --edge-weights dale")
    return front, render_module(front.plan, options, header)
