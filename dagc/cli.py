"""The `dagc` command line: inspect, compile, draw, train, bench, eval, reproduce, lesion,
analyze.

User mistakes end as one line on stderr and exit code 2, never a traceback.
"""

from __future__ import annotations

import functools
import json
import sys
from pathlib import Path

import click

from dagc import __version__
from dagc.compiler.dag import DAG_KINDS, DagOptions
from dagc.compiler.errors import DagcError
from dagc.compiler.graph import PrepareOptions
from dagc.compiler.render import (
    BACKWARD_MODES,
    EDGE_WEIGHT_MODES,
    LAYOUTS,
    CompileOptions,
)

CONNECTOME_HELP = (
    "Bundled name (hermaphrodite, male, larva) or a file: WormWiring .mat, Cook SI 5 "
    ".xlsx#SEX, NAME.nodes.csv/NAME.edges.csv pair, larva PREFIX_nodes.csv, .graphml."
)


def precision_option(default: str | None, help_text: str):
    """--precision: how the CPU engine stores activations (fp32, or bf16 with fp32
    arithmetic, parameters and statistics; checkpoints stay fp32 either way)."""
    return click.option(
        "--precision",
        type=click.Choice(["fp32", "bf16"]),
        default=default,
        show_default=default is not None,
        help=help_text,
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
    @click.option(
        "--seed",
        type=click.IntRange(min=0),
        default=None,
        help="Seed for random DAGs [default: 0].",
    )
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
        help="Keep non-sensory neurons that receive no synapse (dropped by default, see docs/recipe.md).",
    )
    @functools.wraps(command)
    def wrapper(*args, dag_kind, seed, all_cells, keep_isolated, keep_unfed, **kwargs):
        if seed is not None and dag_kind == "constrained":
            raise DagcError(
                "--seed only applies to random DAGs; the constrained DAG is unique"
            )
        prepare = PrepareOptions(
            neurons_only=not all_cells,
            drop_isolated=not keep_isolated,
            drop_unfed=not keep_unfed,
        )
        dag_options = DagOptions(dag_kind, seed or 0)
        return command(*args, prepare=prepare, dag_options=dag_options, **kwargs)

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
@click.option(
    "--channels",
    type=click.IntRange(min=1),
    default=78,
    show_default=True,
    help="Channels per node, for the parameter count.",
)
@click.option(
    "--json", "as_json", is_flag=True, help="Print one JSON object instead of a table."
)
def inspect(connectome, prepare, dag_options, channels, as_json):
    """Load CONNECTOME, build its DAG and network plan, and report the numbers.

    CONNECTOME: bundled name (hermaphrodite, male, larva) or a file: WormWiring .mat, Cook SI 5
    .xlsx#hermaphrodite|#male, NAME.nodes.csv/NAME.edges.csv pair, or .graphml.
    """
    from dagc.compiler.pipeline import front_end_stats, run_front_end

    front = run_front_end(connectome, prepare, dag_options)
    stats = front_end_stats(front, channels=channels).as_dict()
    warn_pruned(front.plan.pruned)
    if as_json:
        click.echo(json.dumps(stats, indent=2))
    else:
        click.echo(format_stats(stats))


@cli.command(name="compile")
@click.option("--connectome", "-c", required=True, help=CONNECTOME_HELP)
@click.option(
    "-o",
    "--output",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="The Python file to write (atomically).",
)
@front_end_options
@click.option(
    "--channels",
    type=click.IntRange(min=1),
    default=78,
    show_default=True,
    help="Channels per node (the paper: 78).",
)
@click.option(
    "--in-channels",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Image channels (1 for MNIST, 3 for CIFAR-10).",
)
@click.option(
    "--num-classes", type=click.IntRange(min=2), default=10, show_default=True
)
@click.option(
    "--input-size",
    type=click.IntRange(min=2),
    default=28,
    show_default=True,
    help="Image height and width (28 for MNIST, 32 for CIFAR-10).",
)
@click.option(
    "--edge-weights",
    type=click.Choice(EDGE_WEIGHT_MODES),
    default="sigmoid",
    show_default=True,
    help="sigmoid: positive gates (RandWire); free: unconstrained; "
    "dale: sign fixed by the presynaptic neuron's transmitter (GABA inhibitory).",
)
@click.option(
    "--layout",
    type=click.Choice(LAYOUTS),
    default="flat",
    show_default=True,
    help="flat: one statement per neuron; levels: each topological level at once.",
)
@click.option(
    "--backward",
    type=click.Choice(BACKWARD_MODES),
    default=None,
    help="generated: the whole DAG as one op with a rendered reverse pass (flat layout; "
    "the faster, docs/performance.md); autograd: per-node ops, autograd's backward. "
    "[default: generated for flat, autograd for levels]",
)
@click.option(
    "--transmitter-signs",
    type=click.Path(dir_okay=False, path_type=Path),
    help="With --edge-weights dale: CSV of transmitter,sign (+1/-1) overriding the default "
    "(GABA -1, all else +1).",
)
def compile_command(
    connectome,
    output,
    prepare,
    dag_options,
    channels,
    in_channels,
    num_classes,
    input_size,
    edge_weights,
    layout,
    backward,
    transmitter_signs,
):
    """Compile a connectome into one flat PyTorch module file."""
    from dagc.compiler.build import compile_network
    from dagc.compiler.output import check_writable_dir, write_atomic

    check_writable_dir(output)  # fail before the work, not after it
    options = CompileOptions(
        channels, in_channels, num_classes, input_size, edge_weights, layout,
        str(transmitter_signs) if transmitter_signs else "", backward or "",
    )  # fmt: skip
    front, source = compile_network(connectome, prepare, dag_options, options)
    warn_pruned(front.plan.pruned)
    write_atomic(output, source)
    plan = front.plan
    click.echo(
        f"wrote {output}: {len(plan.nodes)} nodes, {len(plan.edges)} edges, depth {plan.depth}, "
        f"{options.layout} layout, {options.backward} backward",
        err=True,
    )


@cli.command()
@click.argument("model", type=click.Path(path_type=Path))
@click.option(
    "--dataset",
    default="mnist",
    show_default=True,
    help="mnist, fashion-mnist, kmnist or cifar10.",
)
@click.option(
    "--data-dir",
    envvar="DAGC_DATA_DIR",
    type=click.Path(path_type=Path),
    help="Folder with the data set's files (e.g. mnist/*.gz); env DAGC_DATA_DIR.",
)
@click.option("--iterations", type=int, default=15000, show_default=True)
@click.option(
    "--batch-size",
    type=int,
    default=100,
    show_default=True,
    help="Global batch (split across processes under torchrun).",
)
@click.option(
    "--lr", type=float, default=0.004, show_default=True, help="Adam learning rate."
)
@click.option(
    "--lr-step",
    type=int,
    default=10000,
    show_default=True,
    help="Multiply the learning rate by --lr-gamma every this many iterations.",
)
@click.option("--lr-gamma", type=float, default=0.1, show_default=True)
@click.option(
    "--eval-every",
    type=int,
    default=500,
    show_default=True,
    help="Evaluate on the full test set and checkpoint every this many iterations.",
)
@click.option("--log-every", type=int, default=50, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option(
    "--device",
    type=click.Choice(["auto", "cpu", "cuda"]),
    default="auto",
    show_default=True,
)
@click.option(
    "--compile/--no-compile",
    "use_compile",
    default=False,
    help="torch.compile the model (Inductor; minutes of warm-up) [default: off].",
)
@click.option(
    "--kernels",
    type=click.Choice(["auto", "engine", "cpp", "torch", "triton"]),
    default="auto",
    show_default=True,
    help="How each neuron's work is computed (generated backward). engine: dagc's CPU "
    "engine, the whole DAG in one native call per pass; cpp: dagc's C++ kernels per "
    "neuron (both built on first use with the system's compiler); triton: dagc's Triton "
    "kernels (CUDA; not yet measured on a GPU); torch: torch's own ops; auto: the engine "
    "on a CPU when a compiler is there, else torch.",
)
@precision_option(
    "fp32",
    "Activations stored in fp32, or in bf16 (the CPU engine: half the bytes; arithmetic, "
    "parameters, statistics and checkpoints stay fp32).",
)
@click.option(
    "--cuda-graphs/--no-cuda-graphs",
    default=None,
    help="Replay the whole training step as one CUDA graph [default: on for one CUDA "
    "process without --compile].",
)
@click.option(
    "--amp",
    type=click.Choice(["off", "bf16", "fp16"]),
    default="off",
    show_default=True,
    help="Mixed precision.",
)
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    help="Run folder [default: runs/<model>-<dataset>-<seed>].",
)
@click.option(
    "--resume", is_flag=True, help="Continue the run in --out from its last checkpoint."
)
@click.option(
    "--time-limit",
    metavar="DURATION",
    help="Pause cleanly after this much wall time: 90, 90s, 9m or 2h (see above).",
)
@click.option("--quiet", is_flag=True, help="No progress bar.")
def train(
    model,
    dataset,
    data_dir,
    iterations,
    batch_size,
    lr,
    lr_step,
    lr_gamma,
    eval_every,
    log_every,
    seed,
    device,
    use_compile,
    kernels,
    precision,
    cuda_graphs,
    amp,
    out,
    resume,
    time_limit,
    quiet,
):
    """Train a generated MODEL.py with the paper's protocol (defaults) and save everything.

    Writes metrics.jsonl, summary.json, checkpoints and figures (accuracy.png, examples.png,
    confusion.png) into the run folder. Kill it at any time; --resume continues exactly.

    \b
    Pausing: when --time-limit has passed, or on SIGTERM, SIGUSR1 or SIGINT (Ctrl-C), the
    run finishes its current step, writes a checkpoint and summary.json with
    "status": "paused", and exits with code 75 (EX_TEMPFAIL) so that a scheduler can
    requeue it; the same command with --resume continues exactly. A second Ctrl-C stops
    at once (the last checkpoint is kept). Exit codes: 0 complete, 2 user error, 75 paused.
    """
    from dagc.runtime.stopping import PAUSED_EXIT_CODE, parse_duration
    from dagc.runtime.studies.paper import paper_accuracy_of
    from dagc.runtime.train import TrainConfig
    from dagc.runtime.train import train as run_training

    config = TrainConfig(
        model=str(model), dataset=dataset, data_dir=str(data_dir) if data_dir else None,
        iterations=iterations, batch_size=batch_size, lr=lr, lr_step=lr_step,
        lr_gamma=lr_gamma, eval_every=eval_every, log_every=log_every, seed=seed,
        device=device, compile=use_compile, kernels=kernels, precision=precision,
        cuda_graphs=cuda_graphs, amp=amp,
        out=str(out) if out else None,
        resume=resume, quiet=quiet,
        time_limit=parse_duration(time_limit) if time_limit is not None else None,
        reference_accuracy=paper_accuracy_of(model, dataset),
    )  # fmt: skip
    summary = run_training(config)
    if summary.get("status") == "paused":
        if "iterations" in summary:  # the main process reports; every process exits 75
            click.echo(
                f"paused at iteration {summary['iteration']} of {summary['iterations']} "
                f"({summary['stopped_by']}); continue with --resume",
                err=True,
            )
        return PAUSED_EXIT_CODE
    if "final_test_accuracy" in summary:
        click.echo(
            f"final test accuracy {100 * summary['final_test_accuracy']:.2f} % "
            f"(best {100 * summary['best_test_accuracy']:.2f} % at iteration "
            f"{summary['best_iteration']}), {summary['train_wall_time_s']:.0f} s, "
            f"{summary['median_images_per_s']:.0f} images/s on {summary['device']}"
        )


@cli.command()
@click.argument("model", type=click.Path(path_type=Path))
@click.option(
    "--device",
    type=click.Choice(["auto", "cpu", "cuda"]),
    default="auto",
    show_default=True,
)
@click.option("--batch-size", type=int, default=100, show_default=True)
@click.option(
    "--steps",
    type=int,
    default=5,
    show_default=True,
    help="Timed training steps per mode (and inference batches); the median counts.",
)
@click.option(
    "--warmup",
    type=int,
    default=2,
    show_default=True,
    help="Untimed steps first (compile, CUDA-graph warm-up, allocator).",
)
@click.option(
    "--modes",
    default="",
    help="Comma-separated modes, or 'all' (every mode the device can run) [default: the "
    "eager layouts and the generated op compiled, plus dagc's C++ kernels on a CPU and the "
    "CUDA-graph and Triton modes on a GPU; bf16, channels_last and the per-node modules "
    "compiled on request]. "
    "The interpreter always runs.",
)
@click.option("--channels", type=int, help="Channels per node [default: the model's].")
@click.option(
    "--mode-timeout",
    type=float,
    default=1800,
    show_default=True,
    help="Seconds before a mode is stopped and reported as timed out.",
)
@click.option(
    "--json",
    "json_out",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write every figure, the machine and the versions here.",
)
def bench(
    model, device, batch_size, steps, warmup, modes, channels, mode_timeout, json_out
):
    """Time every execution mode of MODEL.py (training and inference) against the
    reference interpreter, each in its own process, and print the table."""
    from dagc.compiler.output import check_writable_dir
    from dagc.runtime.bench import BenchConfig, format_table
    from dagc.runtime.bench import bench as run_bench

    if json_out is not None:
        check_writable_dir(json_out)
    names = tuple(name.strip() for name in modes.split(",") if name.strip())
    config = BenchConfig(
        model=str(model), device=device, batch_size=batch_size, steps=steps,
        warmup=warmup, modes=names, channels=channels, mode_timeout=mode_timeout,
        json_out=str(json_out) if json_out else None,
    )  # fmt: skip
    report = run_bench(config, echo=lambda line: click.echo(line, err=True))
    click.echo(format_table(report))
    if "best_train_mode" in report:
        click.echo(
            f"best training mode: {report['best_train_mode']}, "
            f"{report['best_train_vs_interpreter']:.2f}x the interpreter "
            f"({report['device']}, {report['network']['channels']} channels, "
            f"batch {report['batch_size']})"
        )


@cli.command(name="eval")
@click.argument("target", type=click.Path(path_type=Path))
@click.option("--dataset", default="mnist", show_default=True)
@click.option("--data-dir", envvar="DAGC_DATA_DIR", type=click.Path(path_type=Path))
@click.option(
    "--model",
    type=click.Path(path_type=Path),
    help="The generated module, when TARGET is a weights file outside its run folder.",
)
@click.option(
    "--device",
    type=click.Choice(["auto", "cpu", "cuda"]),
    default="auto",
    show_default=True,
)
@precision_option(
    None,
    "Activation storage of the CPU engine [default: the run's, from its summary.json].",
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def eval_command(target, dataset, data_dir, model, device, precision, as_json):
    """Test accuracy (overall and per class) of a run folder or a .safetensors checkpoint."""
    from dagc.runtime import evaluate

    result = evaluate.evaluate_saved(
        target, dataset, data_dir, device, model, precision
    )
    click.echo(evaluate.as_json(result) if as_json else evaluate.format_result(result))


@cli.command()
@click.argument("connectome")
@click.option(
    "-o",
    "--output",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="Figure file: .svg, .png or .pdf.",
)
@front_end_options
def draw(connectome, output, prepare, dag_options):
    """Draw CONNECTOME's network: neurons by topological level, coloured by type (Fig. 2)."""
    from dagc.compiler.draw import draw_plan
    from dagc.compiler.output import check_writable_dir
    from dagc.compiler.pipeline import run_front_end

    check_writable_dir(output)
    front = run_front_end(connectome, prepare, dag_options)
    warn_pruned(front.plan.pruned)
    title = f"{front.plan.name} ({front.plan.dag_kind} DAG)"
    draw_plan(front.plan, output, title)
    click.echo(f"wrote {output}", err=True)


def slurm_options(command):
    """`dagc reproduce --launcher slurm` and what each cell's job asks of Slurm."""
    options = [
        click.option("--launcher", type=click.Choice(["local", "slurm"]), default="local",
                     show_default=True,
                     help="local: the cells one after another here; slurm: each cell one "
                     "batch job (sbatch), requeued when it pauses (exit 75)."),
        click.option("--partition", help="[slurm] sbatch --partition."),
        click.option("--slurm-time", help="[slurm] sbatch --time per allocation, e.g. 4:00:00."),
        click.option("--cpus-per-task", type=click.IntRange(min=1), help="[slurm]"),
        click.option("--gpus-per-task", type=click.IntRange(min=0), help="[slurm]"),
        click.option("--nproc-per-node", type=click.IntRange(min=1),
                     help="[slurm] train each run data-parallel under torchrun with this many "
                     "processes (one per GPU) [default: 1, no torchrun]."),
        click.option("--signal-grace", type=click.IntRange(min=1),
                     help="[slurm] seconds before the time limit that Slurm asks a cell to "
                     "pause (SIGUSR1) [default: 120]."),
        click.option("--sbatch", "extra", multiple=True, metavar="OPTION",
                     help="[slurm] a further sbatch option, e.g. --sbatch=--account=lab "
                     "(repeatable)."),
        click.option("--slurm-config", type=click.Path(exists=True, dir_okay=False,
                     path_type=Path), help="[slurm] TOML with partition, time, "
                     "cpus_per_task, gpus_per_task, nproc_per_node, signal_grace, extra; "
                     "options override it."),
        click.option("--wait", is_flag=True,
                     help="[slurm] stay until no job of the campaign is queued; exit 0 "
                     "once every cell is complete."),
        click.option("--cell", hidden=True, help="Train this one cell (a batch job's command)."),
    ]  # fmt: skip
    names = ("partition", "slurm_time", "cpus_per_task", "gpus_per_task", "nproc_per_node",
             "signal_grace", "extra", "slurm_config")  # fmt: skip

    @functools.wraps(command)
    def gather(**kwargs):
        settings = {name: kwargs.pop(name) for name in names}
        settings["time"] = settings.pop("slurm_time")
        settings["config"] = settings.pop("slurm_config")
        return command(slurm=settings, **kwargs)

    for option in reversed(options):
        gather = option(gather)
    return gather


@cli.command()
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("docs/reproduction"),
    show_default=True,
)
@click.option(
    "--quick",
    is_flag=True,
    help="Reduced run for a CPU (4 channels, 120 iterations, 1 seed): minutes.",
)
@click.option(
    "--seeds",
    type=click.IntRange(min=1),
    default=None,
    help="Training seeds per network [default: 3, --quick: 1].",
)
@click.option(
    "--device",
    type=click.Choice(["auto", "cpu", "cuda"]),
    default="auto",
    show_default=True,
)
@click.option("--data-dir", envvar="DAGC_DATA_DIR", type=click.Path(path_type=Path))
@click.option(
    "--channels",
    type=click.IntRange(min=1),
    default=None,
    help="Override the channels per node [default: 78, --quick: 4].",
)
@click.option(
    "--iterations",
    type=click.IntRange(min=1),
    default=None,
    help="Override the iterations [default: 15000, --quick: 120].",
)
@click.option("--eval-every", type=click.IntRange(min=1), default=None)
@click.option(
    "--time-limit",
    metavar="DURATION",
    help="Pause cleanly after this much wall time (90, 90s, 9m, 2h); call again to continue.",
)
@click.option(
    "--status",
    "show_status",
    is_flag=True,
    help="Print each run's state (complete, partial, not started) and exit; trains nothing.",
)
@precision_option(
    None,
    "Activation storage of the CPU engine for the runs (see dagc train) [default: fp32].",
)
@slurm_options
def reproduce(out, quick, seeds, device, data_dir, channels, iterations, eval_every,
              time_limit, show_status, precision, launcher, slurm, wait, cell):  # fmt: skip
    """Train the paper's networks and baselines and write REPORT.md with Table 1 and Fig. 3.

    \b
    The runs go in a fixed order; finished runs are skipped and a partial run is resumed
    before a new one starts, so a campaign can be done in slots of any length: with
    --time-limit, or on SIGTERM, SIGUSR1 or SIGINT, the current run pauses cleanly, REPORT.md
    marks each cell complete, partial (iterations reached) or not started, and the command
    exits with code 75 (EX_TEMPFAIL); call it again to continue. The first call records the
    campaign's protocol (--quick, --seeds, --channels, --iterations, --eval-every,
    --precision) in OUT/campaign.json: later calls take those from there, so --out alone
    continues or reports the campaign, and an option that contradicts them is refused.
    Exit codes: 0 complete, 2 user error, 75 paused.

    \b
    --launcher slurm makes each run one batch job, requeued whenever it pauses, and returns
    once they are submitted (exit 0); calling it again submits only the runs that are
    neither complete nor queued. README: Running on a cluster.
    """
    from dagc.runtime.stopping import PAUSED_EXIT_CODE, parse_duration
    from dagc.runtime.studies.reproduce import (
        campaign_settings,
        record_protocol,
        status_table,
    )
    from dagc.runtime.studies.reproduce import reproduce as run_reproduction

    given = dict(seeds=seeds, channels=channels, iterations=iterations,
                 eval_every=eval_every, device=device,
                 data_dir=str(data_dir) if data_dir else None,
                 precision=precision)  # fmt: skip
    settings = campaign_settings(out, quick, given)
    if show_status:
        click.echo(status_table(out, settings))
        if launcher == "slurm":
            from dagc.runtime.studies.slurm import queue_lines

            click.echo("\n".join(queue_lines(out)))
        return 0
    limit = parse_duration(time_limit) if time_limit is not None else None
    if not out.parent.is_dir():
        raise DagcError("parent folder does not exist", out.parent)
    log = functools.partial(click.echo, err=True)
    if cell is not None:  # one cell, as a batch job of --launcher slurm runs it
        from dagc.runtime.studies.reproduce import reproduce_cell

        record_protocol(out, settings)
        complete = reproduce_cell(out, settings, cell, log=log, time_limit=limit)
    elif launcher == "slurm":
        from dagc.runtime.studies import slurm as launch

        launch.submit(out, settings, launch.SlurmOptions.load(**slurm), log, limit)
        # Recorded once submitted: a refused launch leaves no folder behind.
        record_protocol(out, settings)
        complete = not wait or launch.wait(out, settings, log)
        if wait:
            click.echo(status_table(out, settings))
    else:
        if (out / "slurm" / "jobs.json").exists():
            from dagc.runtime.studies.slurm import refuse_if_queued

            refuse_if_queued(out)
        record_protocol(out, settings)
        complete = run_reproduction(out, settings, log=log, time_limit=limit)
    return 0 if complete else PAUSED_EXIT_CODE


DEVICE_OPTION = click.option(
    "--device",
    type=click.Choice(["auto", "cpu", "cuda"]),
    default="auto",
    show_default=True,
)


@cli.command(name="lesion")
@click.argument("run_dir", metavar="RUN_DIR", type=click.Path(path_type=Path))
@click.option(
    "--neurons",
    default="",
    help="Comma-separated neuron names to silence, e.g. AVAL,AVAR (case-insensitive).",
)
@click.option(
    "--types",
    default="",
    help="Comma-separated neuron types to silence whole: sensory, interneuron, motor, "
    "sex-specific, other.",
)
@click.option(
    "--dataset",
    default=None,
    help="Test set [default: the one the run was trained on].",
)
@click.option(
    "--data-dir",
    envvar="DAGC_DATA_DIR",
    type=click.Path(path_type=Path),
    help="Folder with the data set's files (e.g. mnist/*.gz); env DAGC_DATA_DIR.",
)
@click.option(
    "--subset",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    help="Evaluate this many test images drawn with --seed (0: the whole test set).",
)
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True)
@DEVICE_OPTION
@precision_option(
    None,
    "Activation storage of the CPU engine [default: the run's, from its summary.json].",
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def lesion_command(
    run_dir, neurons, types, dataset, data_dir, subset, seed, device, precision,
    as_json,
):  # fmt: skip
    """Test accuracy of a trained RUN_DIR with some neurons silenced, against intact.

    A silenced neuron's output is held at zero (its BatchNorm scale and shift set to zero),
    so the neurons it feeds get nothing from it. Prints the accuracy overall and per class,
    intact and silenced.

    \b
    Example:
      dagc lesion runs/h16 --neurons AVAL,AVAR --data-dir data
    """
    from dagc.runtime.studies.lesion import format_lesion, lesion, split_names

    result = lesion(
        run_dir, split_names(neurons), split_names(types), dataset, data_dir, device,
        subset, seed, precision,
    )  # fmt: skip
    click.echo(json.dumps(result, indent=2) if as_json else format_lesion(result))


@cli.command(name="analyze")
@click.argument("run_dir", metavar="RUN_DIR", type=click.Path(path_type=Path))
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    help="Report folder: ANALYSIS.md, analysis.json, PNG figures [default: "
    "RUN_DIR/analysis].",
)
@click.option(
    "--subset",
    type=click.IntRange(min=0),
    default=300,
    show_default=True,
    help="Test images for the lesion scan (0: all); each neuron costs one pass over them "
    "(16-channel hermaphrodite: about 6 CPU-minutes for 300 images).",
)
@click.option(
    "--seed",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    help="Seed of the test subset and of the permutation tests.",
)
@click.option(
    "--permutations",
    type=click.IntRange(min=1),
    default=10000,
    show_default=True,
    help="Shuffles for the permutation p-value of Spearman's rho.",
)
@click.option(
    "--dataset",
    default=None,
    help="Test set [default: the one the run was trained on].",
)
@click.option(
    "--data-dir",
    envvar="DAGC_DATA_DIR",
    type=click.Path(path_type=Path),
    help="Folder with the data set's files (e.g. mnist/*.gz); env DAGC_DATA_DIR.",
)
@DEVICE_OPTION
@precision_option(
    None,
    "Activation storage of the CPU engine [default: the run's, from its summary.json].",
)
@click.option("--quiet", is_flag=True, help="No progress bar.")
def analyze_command(
    run_dir, out, subset, seed, permutations, dataset, data_dir, device, precision,
    quiet,
):  # fmt: skip
    """Which neurons and synapses a trained RUN_DIR uses: a report with figures.

    Silences every neuron alone on a seeded test subset and ranks them by the accuracy drop
    (per type and per topological level too); compares the learned edge weights with the
    wiring diagram's synapse counts (Spearman's rho, permutation p-value), and, for Dale
    runs, excitatory with inhibitory weights. Writes ANALYSIS.md, analysis.json and PNGs.
    """
    from dagc.runtime.studies.analysis import AnalysisConfig, analyze

    out = out or Path(run_dir) / "analysis"
    config = AnalysisConfig(
        run=str(run_dir), out=str(out), subset=subset, seed=seed,
        permutations=permutations, dataset=dataset,
        data_dir=str(data_dir) if data_dir else None, device=device,
        precision=precision, quiet=quiet,
    )  # fmt: skip
    report = analyze(config, log=lambda line: click.echo(line, err=True))
    top = ", ".join(
        f"{row['name']} {100 * row['drop']:+.1f}" for row in report["neurons"][:5]
    )
    overall = report["synapses"]["overall"]
    rho = (
        "n/a"
        if overall["rho"] is None
        else f"{overall['rho']:+.3f} (p {overall['p']:.2g})"
    )
    click.echo(
        f"wrote {out / 'ANALYSIS.md'} in {report['timing_s']['total']:.0f} s; "
        f"top lesions (points): {top}; weights vs synapses rho {rho}"
    )


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
        (
            "connectome",
            f"{stats['connectome']['name']} ({stats['connectome']['source']})",
        ),
        ("graph nodes / edges", f"{graph['nodes']} / {graph['edges']}"),
        ("self-loops", str(graph["self_loops"])),
        ("neuron types", ", ".join(f"{k} {v}" for k, v in stats["types"].items())),
        (
            "dropped",
            ", ".join(f"{k}: {' '.join(v) or '-'}" for k, v in graph["dropped"].items())
            or "-",
        ),
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
        result = cli.main(args=argv, prog_name="dagc", standalone_mode=False)
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
    sys.exit(result if isinstance(result, int) else 0)
