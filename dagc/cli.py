"""The `dagc` command line: inspect, compile, train, eval.

User mistakes end as one line on stderr and exit code 2, never a traceback.
"""

from __future__ import annotations

import functools
import json
import sys

import click

from dagc import __version__
from dagc.compiler.dag import DAG_KINDS, DagOptions
from dagc.compiler.errors import DagcError
from dagc.compiler.graph import PrepareOptions

CONNECTOME_HELP = (
    "Bundled name (hermaphrodite, male) or a file: WormWiring .mat, Cook SI 5 .xlsx#SEX, "
    "NAME.nodes.csv/NAME.edges.csv pair, .graphml."
)


def front_end_options(command):
    """The options every command that builds a network shares."""

    @click.option(
        "--dag",
        "dag_kind",
        type=click.Choice(DAG_KINDS),
        default="constrained",
        show_default=True,
        help="constrained: Park & Kim 2023; random: Roberts et al. 2019; ws/er/ba: random "
        "graphs of the connectome's size.",
    )
    @click.option("--seed", type=int, default=0, show_default=True, help="Seed for random DAGs.")
    @click.option(
        "--all-cells",
        is_flag=True,
        help="Keep pharyngeal neurons, muscles, glia and end organs (the paper drops them).",
    )
    @click.option(
        "--keep-isolated", is_flag=True, help="Keep neurons left without any synapse."
    )
    @click.option(
        "--keep-unfed",
        is_flag=True,
        help="Keep non-sensory neurons that receive no synapse (dropped by default; NOTES step 4).",
    )
    @functools.wraps(command)
    def wrapper(*args, dag_kind, seed, all_cells, keep_isolated, keep_unfed, **kwargs):
        prepare = PrepareOptions(
            neurons_only=not all_cells, drop_isolated=not keep_isolated, drop_unfed=not keep_unfed
        )
        return command(*args, prepare=prepare, dag_options=DagOptions(dag_kind, seed), **kwargs)

    return wrapper


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="dagc")
def cli():
    """dagc: compile a C. elegans connectome into a flat PyTorch image classifier.

    \b
    Typical use:
      dagc inspect hermaphrodite
      dagc compile --connectome male -o generated/male_net.py
      dagc train generated/male_net.py --dataset mnist
    """


@cli.command()
@click.argument("connectome")
@front_end_options
@click.option("--channels", type=click.IntRange(min=1), default=78, show_default=True,
              help="Channels per node, for the parameter count.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of a table.")
def inspect(connectome, prepare, dag_options, channels, as_json):
    """Load CONNECTOME, build its DAG and network plan, and report the numbers.

    CONNECTOME: bundled name (hermaphrodite, male) or a file: WormWiring .mat, Cook SI 5
    .xlsx#hermaphrodite|#male, NAME.nodes.csv/NAME.edges.csv pair, or .graphml.
    """
    from dagc.compiler.pipeline import front_end_stats, run_front_end

    front = run_front_end(connectome, prepare, dag_options)
    stats = front_end_stats(front, channels=channels)
    warn_pruned(front.plan.pruned)
    if as_json:
        click.echo(json.dumps(stats, indent=2))
    else:
        click.echo(format_stats(stats))


def warn_pruned(pruned) -> None:
    if pruned:
        click.echo(
            f"dagc: warning: {len(pruned)} node(s) unreachable from the input were left out of "
            f"the network: {', '.join(pruned)}",
            err=True,
        )


def format_stats(stats: dict) -> str:
    graph, dag, net = stats["graph"], stats["dag"], stats["network"]
    params = net["parameters"]
    rows = [
        ("connectome", f"{stats['connectome']['name']} ({stats['connectome']['source']})"),
        ("graph nodes / edges", f"{graph['nodes']} / {graph['edges']}"),
        ("self-loops", str(graph["self_loops"])),
        ("neuron types", ", ".join(f"{k} {v}" for k, v in stats["types"].items())),
        ("dropped", ", ".join(f"{k}: {' '.join(v) or '-'}" for k, v in graph["dropped"].items())
         or "-"),
        (f"{dag['kind']} DAG nodes / edges", f"{dag['nodes']} / {dag['edges']}"),
        ("layers X(0), X(1), ...", " / ".join(map(str, dag["layers"])) or "-"),
        ("network nodes / edges", f"{net['nodes']} / {net['edges']}"),
        ("input / output nodes", f"{net['input_nodes']} / {net['output_nodes']}"),
        ("depth (topological levels)", str(net["depth"])),
        ("pruned (unreachable)", ", ".join(net["pruned"]) or "-"),
        (
            f"parameters at {net['channels']} channels",
            f"{params['total']:,} ({params['total_without_batchnorm_affine']:,} without "
            "BatchNorm affine)",
        ),
    ]
    width = max(len(key) for key, _ in rows)
    return "\n".join(f"{key:<{width}}  {value}" for key, value in rows)


def main(argv=None) -> None:
    try:
        cli.main(args=argv, prog_name="dagc", standalone_mode=False)
    except DagcError as exc:
        click.echo(f"dagc: error: {exc}", err=True)
        sys.exit(2)
    except click.exceptions.Abort:
        click.echo("dagc: aborted", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        click.echo("dagc: interrupted", err=True)
        sys.exit(130)
