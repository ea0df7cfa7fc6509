"""Stage 5: render a network plan as one flat, readable PyTorch module (Jinja2 + black).

The renderer decides the statements as plain data (one `Step` per node or level, in forward
and, with the generated backward, in reverse order); the templates only lay them out. Which
names each statement reads comes from the plan, and so does the point after which a value
is freed. Output is byte-stable: no timestamps, no absolute paths.
"""

from __future__ import annotations

import ast
import builtins
import functools
import hashlib
import json
import re
import textwrap
from dataclasses import dataclass, field
from importlib.resources import files
from pathlib import Path

import black
import jinja2

from dagc import __version__

from .errors import DagcError
from .names import RESERVED, Namespace
from .params import parameter_breakdown
from .plan import NetworkPlan, PlanNode

LAYOUTS = ("flat", "levels")
EDGE_WEIGHT_MODES = ("sigmoid", "free", "dale")
# generated: one op for the whole DAG with a reverse pass rendered beside the forward pass;
# autograd: per-node ops whose backward autograd assembles (the layout-agnostic original).
BACKWARD_MODES = ("generated", "autograd")


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
    backward: str = ""  # "": generated for the flat layout, autograd for levels

    def __post_init__(self):
        if not self.backward:
            default = "generated" if self.layout == "flat" else "autograd"
            object.__setattr__(self, "backward", default)


@dataclass
class Step:
    """One statement: a comment, the code, the names it reads and those freed after it."""

    comment: str
    code: str
    reads: tuple[str, ...] = ()
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
    if node.label:
        kind = f"{node.label}; {kind}"
    if not node.preds:
        return f"{node.name} ({kind}) <- source"
    feeders = ", ".join(
        f"{plan.nodes[p].name}:{w:g}" for p, w in zip(node.preds, node.synapses)
    )
    return f"{node.name} ({kind}) <- {feeders}"


def reads_of(plan: NetworkPlan, names: list[str], i: int) -> tuple[str, ...]:
    """The values node i's forward statement reads: its predecessors, or the source."""
    node = plan.nodes[i]
    return tuple(names[p] for p in node.preds) if node.preds else ("source",)


def node_step(plan: NetworkPlan, names: list[str], i: int) -> Step:
    return Step(
        describe(plan, i),
        f"{names[i]} = self.node({i}, {weighted_sum(plan, i, names)})",
        reads_of(plan, names, i),
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
        reads = tuple(
            dict.fromkeys(name for i in members for name in reads_of(plan, names, i))
        )
        steps.append(
            Step(
                comment,
                f"{targets}, = self.level({start}, {stop}, {stacked}).split(self.channels, 1)",
                reads,
            )
        )
    return steps


def add_frees(steps: list[Step], keep: set[str] = frozenset()) -> None:
    """Free each value right after the step that last reads it, in the steps' order; the
    names in `keep` stay alive (outputs read by the sink after the last step)."""
    last_use: dict[str, int] = {}
    for position, step in enumerate(steps):
        for name in step.reads:
            last_use[name] = position
    for name, position in sorted(last_use.items(), key=lambda item: item[1]):
        if name not in keep:
            steps[position].frees.append(name)


# --- the generated reverse pass ----------------------------------------------------------


def consumer_slices(plan: NetworkPlan) -> list[tuple[int, int]]:
    """[start, stop) of each node's outgoing edges in the edges sorted by (pre, post): the
    template's CONSUMER_ORDER, computed from the same sort."""
    slices = [(0, 0)] * len(plan.nodes)
    order = sorted(plan.edges)
    start = 0
    for position in range(1, len(order) + 1):
        if position == len(order) or order[position][0] != order[start][0]:
            slices[order[start][0]] = (start, position)
            start = position
    return slices


def consumers_of(plan: NetworkPlan) -> list[list[int]]:
    consumers: list[list[int]] = [[] for _ in plan.nodes]
    for pre, post in sorted(plan.edges):
        consumers[pre].append(post)
    return consumers


def wrap_call(head: str, args: list[str], close: str, separator: str = ", ") -> str:
    """`head` + args + `close` on one line if it fits black's width, else the arguments
    several to a line under it, black-like. The dag functions sit in a `# fmt: off` block:
    black spent most of the compile time (tens of seconds) exploding these calls one
    argument per line, which also made the file three times longer to read."""
    one_line = head + separator.join(args) + close
    if len(one_line) + 4 <= 88:  # the statement is indented once in its function
        return one_line
    lines, line = [head], "    "
    joiner = separator.rstrip()
    for position, arg in enumerate(args):
        piece = arg + (joiner if position < len(args) - 1 or joiner == "," else "")
        if len(line) + len(piece) + 4 > 88 and line.strip():
            lines.append(line.rstrip())
            line = "    "
        line += piece + " "
    lines.append(line.rstrip())
    lines.append(close)
    return "\n".join(lines)


def free_statement(names: list[str]) -> str:
    one_line = "del " + ", ".join(names)
    return one_line if len(one_line) + 4 <= 88 else wrap_call("del (", names, ")")


def dag_forward_steps(plan: NetworkPlan, names: list[str]) -> list[Step]:
    """dag_forward: one statement per node in topological order, then the sink's input."""
    steps = []
    for i, node in enumerate(plan.nodes):
        if node.preds:
            start, stop = node.edge_slice
            inputs = [f"w[{start}:{stop}]"] + [names[p] for p in node.preds]
            code = wrap_call(f"{names[i]} = node({i}, weighted_relu(", inputs, "))")
        else:
            code = f"{names[i]} = node({i}, source)"
        steps.append(Step(describe(plan, i), code, reads_of(plan, names, i)))
    outputs = [names[i] for i in plan.outputs]
    steps.append(
        Step(
            f"sink <- mean of the {len(outputs)} output nodes",
            wrap_call("out = (", outputs, f") / {len(outputs)}", separator=" + "),
            tuple(outputs),
        )
    )
    add_frees(steps, keep={"source"})  # an argument: the caller holds it anyway
    steps[-1].frees.clear()  # the function returns right after
    return steps


def dag_reverse_steps(
    plan: NetworkPlan, names: list[str], grads: list[str]
) -> list[Step]:
    """dag_backward: per node in reverse topological order, its output gradient gathered
    from its consumers in one weighted sum (or the sink's share), the node's own backward,
    then its edge-weight gradients in one pass over its inputs."""
    consumers, slices = consumers_of(plan), consumer_slices(plan)
    outputs = set(plan.outputs)
    steps = [
        Step(
            f"the sink reads the mean of the {len(outputs)} output nodes",
            f"sink_grad = grad / {len(outputs)}",
        )
    ]
    source_started = False
    for i in reversed(range(len(plan.nodes))):
        node = plan.nodes[i]
        target = (
            f"{grads[i]} ="
            if node.preds
            else "source_grad +="
            if source_started
            else "source_grad ="
        )
        if i in outputs:
            comment, reads = f"{node.name} -> the sink", ("sink_grad",)
            code = f"{target} node({i}, sink_grad)"
        else:
            start, stop = slices[i]
            feeding = [grads[c] for c in consumers[i]]
            comment = f"{node.name} -> " + ", ".join(
                plan.nodes[c].name for c in consumers[i]
            )
            args = [f"w_out[{start}:{stop}]"] + feeding
            code = wrap_call(f"{target} node({i}, gather(", args, "))")
            reads = tuple(feeding)
        if node.preds:
            start, stop = node.edge_slice
            inputs = [names[p] for p in node.preds]
            code += "\n" + wrap_call(
                f"grad_w[{start}:{stop}] = dots(", [grads[i]] + inputs, ")"
            )
            reads += tuple(inputs)
        else:
            comment += " (fed by the source)"
            source_started = True
        steps.append(Step(comment, code, reads))
    add_frees(steps)
    # The activations are the op's saved tensors: release them, not only the names.
    activations = set(names)
    for step in steps:
        saved = [name for name in step.frees if name in activations]
        if saved:
            step.code += "\n" + wrap_call("node.release(", saved, ")")
    return steps


def ops_namespace(plan: NetworkPlan, names: list[str], template_text: str) -> str:
    """A torch.library namespace unique to this network's reverse-pass code: a hash of the
    structure it is generated from and of the template that renders it."""
    key = json.dumps(
        [__version__, names, plan.edges, plan.outputs, template_text], sort_keys=True
    )
    return "dagc_" + hashlib.sha256(key.encode()).hexdigest()[:16]


def check_options(options: CompileOptions) -> None:
    if options.backward not in BACKWARD_MODES:
        raise DagcError(f"--backward must be one of {', '.join(BACKWARD_MODES)}")
    if options.backward == "generated" and options.layout != "flat":
        raise DagcError(
            "--backward generated renders the flat layout; use --backward autograd "
            "with --layout levels"
        )


def render_module(
    plan: NetworkPlan, options: CompileOptions, header: dict, template_dir=None
) -> str:
    check_options(options)
    template_dir = str(template_dir or files("dagc.templates"))
    namespace = Namespace(RESERVED | template_names(options, template_dir))
    names = [namespace.create(node.name) for node in plan.nodes]
    grads, ops = [], ""
    if options.backward == "generated":
        grads = [namespace.create(f"{node.name}_grad") for node in plan.nodes]
        template_text = (Path(template_dir) / "reverse_ops.py.j2").read_text()
        ops = ops_namespace(plan, names, template_text)
    context = statements(plan, options, names, grads, ops)
    return render_source(plan, options, header, names, template_dir, context)


def statements(
    plan: NetworkPlan, options: CompileOptions, names, grads, ops: str
) -> dict:
    """The template's statement lists for these options, with their frees."""
    context = {"steps": [], "forward_steps": [], "reverse_steps": [], "read_names": []}
    if options.backward == "generated":
        read = sorted({pre for pre, _ in plan.edges})
        context.update(
            forward_steps=dag_forward_steps(plan, names),
            reverse_steps=dag_reverse_steps(plan, names, grads),
            read_names=[names[i] for i in read],
            ops_namespace=ops,
        )
    else:
        steps = (
            level_steps(plan, names)
            if options.layout == "levels"
            else flat_steps(plan, names)
        )
        add_frees(steps, keep={names[i] for i in plan.outputs})
        context["steps"] = steps
    return context


def render_source(plan, options, header, names, template_dir: str, context) -> str:
    environment = jinja2.Environment(
        loader=jinja2.FileSystemLoader(template_dir),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    environment.filters["wrap"] = wrap_items
    environment.filters["wrap_names"] = wrap_names
    environment.filters["free_statement"] = free_statement
    environment.filters["comment_lines"] = comment_lines
    source = environment.get_template("module.py.j2").render(
        plan=plan,
        options=options,
        header=header,
        version=__version__,
        class_name=class_name(plan),
        output_names=[names[i] for i in plan.outputs],
        synapses=[weight for node in plan.nodes for weight in node.synapses],
        params=parameter_breakdown(
            plan, options.channels, options.in_channels, options.num_classes
        ),
        **context,
    )
    return format_source(source)


# --- black, without the blocks it leaves alone -------------------------------------------

FMT_OFF, FMT_ON = "# fmt: off", "# fmt: on"


def format_source(source: str) -> str:
    """`black.format_str(source)`, without black reading the top-level `# fmt: off` blocks.

    Black copies such a block verbatim, but it still tokenizes and parses it: for the larva
    (a 100k-line dag_forward / dag_backward and 72k-edge tables, all inside `# fmt: off`)
    that was 35 s of the compile. Here each block's lines are swapped for one placeholder
    statement, black formats the rest, and the blocks go back in place of their
    placeholders. The result is black's on the whole text (tests compare the two).
    """
    lines = source.splitlines(keepends=True)
    skeleton, blocks, block = [], [], None
    for line in lines:
        stripped = line.rstrip("\n")
        if block is None:
            skeleton.append(line)
            if stripped == FMT_OFF:
                block = []
        elif stripped == FMT_ON:
            skeleton.append(f"{placeholder(len(blocks))} = None\n")
            skeleton.append(line)
            blocks.append("".join(block))
            block = None
        else:
            block.append(line)
    if block is not None or not blocks:  # no block, or one left open: black does it all
        return black.format_str(source, mode=black.Mode())
    formatted = black.format_str("".join(skeleton), mode=black.Mode())
    pieces = re.split(r"^(dagc_verbatim_block_\d+) = None\n", formatted, flags=re.M)
    if len(pieces) != 2 * len(blocks) + 1:
        return black.format_str(source, mode=black.Mode())
    out = [pieces[0]]
    for k, block_text in enumerate(blocks):
        if pieces[2 * k + 1] != placeholder(k):
            return black.format_str(source, mode=black.Mode())
        out += [block_text, pieces[2 * k + 2]]
    return "".join(out)


def placeholder(k: int) -> str:
    return f"dagc_verbatim_block_{k}"


# --- names the template uses ------------------------------------------------------------


PROBE_NAMES = ("dagc_probe_input", "dagc_probe_output")


@functools.cache
def template_names(options: CompileOptions, template_dir: str) -> frozenset[str]:
    """Every identifier the rendered module defines or reads (module globals, imports,
    builtins it calls, locals of its functions), found by rendering a two-node probe
    network with the same options and walking its syntax tree; plus every builtin. A
    neuron's name must avoid them all: it becomes a local of functions that read them."""
    probe = NetworkPlan(
        name="probe",
        dag_kind="constrained",
        seed=None,
        nodes=(
            PlanNode(PROBE_NAMES[0], "sensory", "", 0, (), (0, 0), ()),
            PlanNode(PROBE_NAMES[1], "motor", "", 1, (0,), (0, 1), (1.0,)),
        ),
        edges=((0, 1),),
        inputs=(0,),
        outputs=(1,),
        levels=((0, 1), (1, 2)),
        pruned=(),
    )
    names = list(PROBE_NAMES)
    grads = [f"{name}_grad" for name in PROBE_NAMES]
    context = statements(probe, options, names, grads, "dagc_probe")
    names += grads
    header = {"command": "-", "source": "-", "sha256": "-", "edge_signs": [1]}
    source = render_source(probe, options, header, names, template_dir, context)
    found = set(dir(builtins))
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Name):
            found.add(node.id)
        elif isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            found.add(node.name)
        elif isinstance(node, ast.arg):
            found.add(node.arg)
        elif isinstance(node, ast.alias):
            found.add((node.asname or node.name).split(".")[0])
    return frozenset(found - set(names))


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


def wrap_names(names, indent: int = 8, width: int = 88) -> str:
    """Identifiers several to a line, each followed by a comma (inside `# fmt: off`)."""
    return wrap_items(names, indent, width, render=str)


def wrap_items(items, indent: int = 4, width: int = 88, render=None) -> str:
    """Lay out Python literals several to a line (inside `# fmt: off`, so black keeps it)."""
    lines, line = [], " " * indent
    for item in map(render or literal, items):
        piece = item + ","
        if len(line) + len(piece) + 1 > width and line.strip():
            lines.append(line.rstrip())
            line = " " * indent
        line += piece + " "
    if line.strip():
        lines.append(line.rstrip())
    return "\n".join(lines)
