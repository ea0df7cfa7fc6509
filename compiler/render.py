"""Stage 5: render a network plan as one flat, readable PyTorch module (Jinja2 + black).

The renderer decides the forward() statements as plain data (one `Step` per node or level);
the templates only lay them out. Output is byte-stable: no timestamps, no absolute paths.
"""

from __future__ import annotations

import json
import re
import textwrap
from dataclasses import dataclass, field
from importlib.resources import files

import black
import jinja2

from dagc import __version__
from dagc.compiler.names import Namespace
from dagc.compiler.params import parameter_breakdown
from dagc.compiler.plan import NetworkPlan

LAYOUTS = ("flat", "levels")
EDGE_WEIGHT_MODES = ("sigmoid", "free", "dale")


@dataclass(frozen=True)
class CompileOptions:
    channels: int = 78
    in_channels: int = 1
    num_classes: int = 10
    input_size: int = 28
    edge_weights: str = "sigmoid"
    layout: str = "flat"
    transmitter_signs: str = (
        ""  # CSV overriding the Dale's-law signs ("" = GABA inhibitory)
    )


@dataclass
class Step:
    """One statement of forward(): a comment, the code, and the names freed after it."""

    comment: str
    code: str
    frees: list[str] = field(default_factory=list)


def class_name(plan: NetworkPlan) -> str:
    words = re.findall(r"[A-Za-z0-9]+", plan.name) or ["Connectome"]
    base = "".join(word[:1].upper() + word[1:] for word in words)
    if base[0].isdigit():
        base = "Net" + base
    suffix = "" if plan.dag_kind == "constrained" else plan.dag_kind.capitalize()
    return f"{base}{suffix}Net"


def weighted_sum(plan: NetworkPlan, node_index: int, names: list[str]) -> str:
    """The expression for a node's input after its ReLU: its predecessors weighted by their
    edges (`weighted_relu`, one in-place sum per node), or the source, already ReLU'd.
    """
    node = plan.nodes[node_index]
    if not node.preds:
        return "source"
    start, stop = node.edge_slice
    inputs = ", ".join(names[pre] for pre in node.preds)
    return f"weighted_relu(w[{start}:{stop}], {inputs})"


def describe(plan: NetworkPlan, node_index: int) -> str:
    node = plan.nodes[node_index]
    kind = f"{node.type}, {node.transmitter}" if node.transmitter else node.type
    if not node.preds:
        return f"{node.name} ({kind}) <- source"
    feeders = ", ".join(
        f"{plan.nodes[p].name}:{w:g}" for p, w in zip(node.preds, node.synapses)
    )
    return f"{node.name} ({kind}) <- {feeders}"


def node_step(plan: NetworkPlan, names: list[str], i: int) -> Step:
    return Step(
        describe(plan, i),
        f"{names[i]} = self.node({i}, {weighted_sum(plan, i, names)})",
    )


def flat_steps(plan: NetworkPlan, names: list[str]) -> list[Step]:
    return [node_step(plan, names, i) for i in range(len(plan.nodes))]


def level_steps(plan: NetworkPlan, names: list[str]) -> list[Step]:
    steps = []
    for depth, (start, stop) in enumerate(plan.levels):
        if stop - start == 1:
            step = node_step(plan, names, start)
            step.comment = f"level {depth}: " + step.comment
            steps.append(step)
            continue
        members = range(start, stop)
        if all(not plan.nodes[i].preds for i in members):
            stacked = f"source.repeat(1, {stop - start}, 1, 1)"
        else:
            stacked = "torch.cat([" + ", ".join(
                weighted_sum(plan, i, names) for i in members
            )
            stacked += "], 1)"
        targets = ", ".join(names[i] for i in members)
        comment = f"level {depth}, {stop - start} nodes:\n" + "\n".join(
            describe(plan, i) for i in members
        )
        steps.append(
            Step(
                comment,
                f"{targets}, = self.level({start}, {stop}, {stacked}).split(self.channels, 1)",
            )
        )
    return steps


def add_frees(steps: list[Step], names: list[str], outputs: set[str]) -> None:
    """Free each value right after the statement that last reads it (outputs live to the sink)."""
    last_use: dict[str, int] = {}
    for position, step in enumerate(steps):
        for token in re.findall(r"\b\w+\b", step.code.split("=", 1)[1]):
            last_use[token] = position
    tracked = set(names) | {"source"}
    for token, position in sorted(last_use.items(), key=lambda item: item[1]):
        if token in tracked and token not in outputs:
            steps[position].frees.append(token)


def render_module(
    plan: NetworkPlan, options: CompileOptions, header: dict, template_dir=None
) -> str:
    namespace = Namespace()
    names = [namespace.create(node.name) for node in plan.nodes]
    steps = (
        level_steps(plan, names)
        if options.layout == "levels"
        else flat_steps(plan, names)
    )
    output_names = [names[i] for i in plan.outputs]
    add_frees(steps, names, set(output_names))
    environment = jinja2.Environment(
        loader=jinja2.FileSystemLoader(template_dir or str(files("dagc.templates"))),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    environment.filters["wrap"] = wrap_items
    environment.filters["comment_lines"] = comment_lines
    source = environment.get_template("module.py.j2").render(
        plan=plan,
        options=options,
        header=header,
        version=__version__,
        class_name=class_name(plan),
        steps=steps,
        output_names=output_names,
        synapses=[weight for node in plan.nodes for weight in node.synapses],
        params=parameter_breakdown(
            plan, options.channels, options.in_channels, options.num_classes
        ),
    )
    return black.format_str(source, mode=black.Mode())


def comment_lines(text: str, width: int = 78) -> list[str]:
    """Split a comment into lines that keep the generated file readable at black's width."""
    lines = []
    for line in text.splitlines():
        lines += textwrap.wrap(
            line, width, subsequent_indent="    ", break_on_hyphens=False
        )
    return lines


def literal(value) -> str:
    """A Python literal in black's style (double-quoted strings)."""
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, tuple):
        return (
            "("
            + ", ".join(map(literal, value))
            + ("," if len(value) == 1 else "")
            + ")"
        )
    return repr(value)


def wrap_items(items, indent: int = 4, width: int = 88) -> str:
    """Lay out Python literals several to a line (inside `# fmt: off`, so black keeps it)."""
    lines, line = [], " " * indent
    for item in map(literal, items):
        piece = item + ","
        if len(line) + len(piece) + 1 > width and line.strip():
            lines.append(line.rstrip())
            line = " " * indent
        line += piece + " "
    if line.strip():
        lines.append(line.rstrip())
    return "\n".join(lines)
