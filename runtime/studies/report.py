"""ANALYSIS.md: the report `dagc analyze` writes, from the dict it also saves as analysis.json."""

from __future__ import annotations

import numpy as np

from .statistics import p_text


def _pts(value: float) -> str:
    return f"{100 * value:+.2f}"


def markdown(report: dict) -> str:
    model, intact, rows = report["model"], report["intact"], report["neurons"]
    subset = report["subset"]
    syn = report["synapses"]
    harmful = sum(row["drop"] > 0 for row in rows)
    helpful = sum(row["drop"] < 0 for row in rows)
    recorded = report["run_test_accuracy"]
    lines = [
        "# Which neurons and synapses does the classifier use?",
        "",
        f"Run `{report['run']}` (weights `{report['weights']}`): the {model['connectome']} "
        f"connectome, {model['dag']} DAG, {model['nodes']} neurons, {model['edges']} edges, "
        f"{model['levels']} topological levels, {model['channels']} channels per neuron, "
        f"{model['edge_weights']} edge weights, trained on {report['dataset']}"
        + (
            f" (full test accuracy {100 * recorded:.2f} %)."
            if recorded is not None
            else "."
        ),
        "",
        "Written by `dagc analyze`; the numbers are in `analysis.json`.",
        "",
        "## Lesions: every neuron silenced alone",
        "",
        f"Each neuron's output was held at zero (its BatchNorm scale and shift set to zero) and "
        f"the network evaluated on the same {subset['images']} test images (drawn with seed "
        f"{subset['seed']}; one image is {100 / subset['images']:.2f} points). Intact, it "
        f"classifies {100 * intact['accuracy']:.2f} % of them (mean test loss "
        f"{intact['loss']:.4f}). Neurons are ranked by the accuracy drop, ties by the rise "
        f"in test loss.",
        "",
        f"- {harmful} of {len(rows)} lesions lower the accuracy, {helpful} raise it, "
        f"{len(rows) - harmful - helpful} leave it unchanged.",
        f"- The largest drop: {rows[0]['name']} ({rows[0]['type']}, level {rows[0]['level']}), "
        f"{_pts(rows[0]['drop'])} points.",
        "",
        "![ranking](lesion_ranking.png)",
        "",
        "| rank | neuron | type | level | accuracy % | drop (points) | loss rise |",
        "|---:|---|---|---:|---:|---:|---:|",
    ]
    for row in rows[:20]:
        lines.append(
            f"| {row['rank']} | {row['name']} | {row['type']} | {row['level']} | "
            f"{100 * row['accuracy']:.2f} | {_pts(row['drop'])} | {row['loss_rise']:+.4f} |"
        )
    lines += [
        "",
        "### Per neuron type and per topological level",
        "",
        "![by type and level](lesion_by_type_and_level.png)",
        "",
        "| type | neurons | mean drop | median drop | max drop (neuron) | lesions that hurt |",
        "|---|---:|---:|---:|---|---:|",
    ]
    for g in sorted(report["by_type"], key=lambda g: -g["mean_drop"]):
        lines.append(
            f"| {g['type']} | {g['neurons']} | {_pts(g['mean_drop'])} | "
            f"{_pts(g['median_drop'])} | {_pts(g['max_drop'])} ({g['top']}) | "
            f"{g['harmful']} |"
        )
    lines += ["", _level_summary(report), ""]
    command = report["command_interneurons"]
    if command:
        interneurons = [r for r in rows if r["type"] == "interneuron"]
        others = [r for r in interneurons if r not in command]
        mean_cmd = np.mean([r["drop"] for r in command])
        mean_rest = np.mean([r["drop"] for r in others]) if others else float("nan")
        lines += [
            "### The command interneurons",
            "",
            f"AVA, AVB, AVD, AVE and PVC drive locomotion in the worm. Here their mean drop is "
            f"{_pts(mean_cmd)} points against {_pts(mean_rest)} for the other "
            f"{len(others)} interneurons.",
            "",
            "| neuron | rank | level | drop (points) | loss rise |",
            "|---|---:|---:|---:|---:|",
        ]
        for r in sorted(command, key=lambda r: r["rank"]):
            lines.append(
                f"| {r['name']} | {r['rank']} | {r['level']} | {_pts(r['drop'])} | "
                f"{r['loss_rise']:+.4f} |"
            )
        lines.append("")
    lines += [
        "### Which classes they serve",
        "",
        "![per class](lesion_classes.png)",
        "",
        "## Synapses: learned weights against the wiring diagram",
        "",
        f"Each of the {syn['edges']} edges has one learned weight ({model['edge_weights']}: "
        + {
            "sigmoid": "sigmoid of a logit, in (0, 1)",
            "dale": "sigmoid magnitude times the presynaptic transmitter's sign",
            "free": "unconstrained; magnitudes compared",
        }.get(model["edge_weights"], model["edge_weights"])
        + "). Spearman's rho of |weight| against the synapse count, with a two-sided "
        f"permutation p-value ({syn['overall']['permutations']} shuffles of the weights, "
        f"seed {subset['seed']}):",
        "",
        "| edges from | edges | rho | p | median weight |",
        "|---|---:|---:|---:|---:|",
        _rho_row("all neurons", syn["overall"], syn["overall"].get("median_weight")),
    ]
    for kind, stats in syn["by_presynaptic_type"].items():
        lines.append(_rho_row(kind, stats, stats.get("median_weight")))
    lines += ["", "![weights vs synapses](weights_vs_synapses.png)", ""]
    dale = syn.get("dale")
    lines += ["## Dale's law: excitatory against inhibitory weights", ""]
    if dale:
        lines += [
            "| sign | edges | median |w| | mean |w| | rho with synapses | p |",
            "|---|---:|---:|---:|---:|---:|",
        ]
        for label in ("excitatory", "inhibitory"):
            d = dale[label]
            vs = d["vs_synapses"]
            lines.append(
                f"| {label} | {d['edges']} | {_num(d['median'])} | {_num(d['mean'])} | "
                f"{_num(vs['rho'], '+.3f')} | {_pval(vs)} |"
            )
        if "mann_whitney_p" in dale:
            lines += [
                "",
                f"Mann-Whitney U: p = {dale['mann_whitney_p']:.2g}; a random inhibitory "
                f"weight exceeds a random excitatory one with probability "
                f"{dale['p_inhibitory_larger']:.2f}.",
            ]
        lines += ["", "![dale](dale.png)", ""]
    else:
        lines += [
            f"Not a Dale run (edge weights: {model['edge_weights']}); compile with "
            "`--edge-weights dale` to compare excitatory and inhibitory synapses.",
            "",
        ]
    timing = report["timing_s"]
    lines += [
        "## How this was made",
        "",
        f"`dagc analyze {report['run']} --subset {subset['images']} --seed {subset['seed']}`: "
        f"{timing['lesions']:.0f} s of lesions, {timing.get('total', 0):.0f} s in all "
        f"(wall clock; {timing.get('cpu', 0):.0f} s of CPU time on "
        f"{timing.get('threads', 1)} thread(s)).",
        "",
    ]
    return "\n".join(lines)


def _num(value, fmt: str = ".3f") -> str:
    return "n/a" if value is None else format(value, fmt)


def _pval(stats: dict) -> str:
    if stats["p"] is None:
        return "n/a"
    return p_text(stats["p"], stats["permutations"]).replace("= ", "")


def _rho_row(label: str, stats: dict, median) -> str:
    return (
        f"| {label} | {stats['n']} | {_num(stats['rho'], '+.3f')} | {_pval(stats)} | "
        f"{_num(median)} |"
    )


def _level_summary(report: dict, bands: int = 6) -> str:
    """Mean drop in bands of topological levels, as one small table."""
    rows = report["neurons"]
    depth = report["model"]["levels"]
    edges = np.linspace(0, depth, bands + 1).round().astype(int)
    lines = [
        "| levels | neurons | mean drop | max drop (neuron) |",
        "|---|---:|---:|---|",
    ]
    for lo, hi in zip(edges[:-1], edges[1:]):
        members = [r for r in rows if lo <= r["level"] < hi]
        if not members:
            continue
        top = max(members, key=lambda r: (r["drop"], r["loss_rise"]))
        label = f"{lo}" if hi - lo == 1 else f"{lo}-{hi - 1}"
        lines.append(
            f"| {label} | {len(members)} | {_pts(np.mean([r['drop'] for r in members]))} | "
            f"{_pts(top['drop'])} ({top['name']}) |"
        )
    return "\n".join(lines)
