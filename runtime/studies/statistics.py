"""The statistics of `dagc analyze`: lesion drops per group, learned weights against synapses.

Spearman's rho with a seeded permutation p-value (learned edge weight magnitudes against the
wiring diagram's synapse counts, overall and per presynaptic type), and for Dale runs the
excitatory against the inhibitory weights (Mann-Whitney). Plain numbers in, plain dicts out.
"""

from __future__ import annotations

import numpy as np
import torch

from .lesion import LoadedRun


def summarise(rows: list[dict], key: str) -> list[dict]:
    """Drop statistics per value of `key` (type or level), sorted by that value."""
    groups: dict = {}
    for row in rows:
        groups.setdefault(row[key], []).append(row)
    out = []
    for value in sorted(groups):
        members = groups[value]
        drops = np.array([row["drop"] for row in members])
        top = max(members, key=lambda row: (row["drop"], row["loss_rise"]))
        out.append(
            {
                key: value,
                "neurons": len(members),
                "mean_drop": float(drops.mean()),
                "median_drop": float(np.median(drops)),
                "max_drop": float(drops.max()),
                "mean_loss_rise": float(np.mean([row["loss_rise"] for row in members])),
                "harmful": int((drops > 0).sum()),
                "top": top["name"],
            }
        )
    return out


def ranks(values: np.ndarray) -> np.ndarray:
    from scipy.stats import rankdata

    return rankdata(values).astype(np.float64)


def spearman_permutation(
    x: np.ndarray, y: np.ndarray, permutations: int, seed: int
) -> dict:
    """Spearman's rho of x and y and its two-sided permutation p-value (y shuffled)."""
    n = len(x)
    if n < 3:
        return {"n": n, "rho": None, "p": None, "permutations": 0}
    rx, ry = ranks(x), ranks(y)
    rx = (rx - rx.mean()) / (np.linalg.norm(rx - rx.mean()) or 1.0)
    ry = (ry - ry.mean()) / (np.linalg.norm(ry - ry.mean()) or 1.0)
    rho = float(rx @ ry)
    if np.all(rx == 0) or np.all(ry == 0):  # a constant side: no correlation to test
        return {"n": n, "rho": None, "p": None, "permutations": 0}
    rng = np.random.default_rng(seed)
    extreme, done, chunk = 0, 0, max(1, min(permutations, 2_000_000 // n))
    while done < permutations:
        k = min(chunk, permutations - done)
        shuffled = rng.permuted(np.broadcast_to(ry, (k, n)), axis=1)
        extreme += int((np.abs(shuffled @ rx) >= abs(rho) - 1e-12).sum())
        done += k
    return {
        "n": n,
        "rho": rho,
        "p": (extreme + 1) / (permutations + 1),
        "permutations": permutations,
    }


def synapse_analysis(run: LoadedRun, permutations: int, seed: int) -> dict:
    module = run.module
    with torch.no_grad():
        weights = run.net.edge_weights().double().cpu().numpy()
    counts = np.asarray(module.SYNAPSES, dtype=np.float64)
    pre_types = np.array([module.NODE_TYPES[a] for a, _ in module.EDGES])
    magnitude = np.abs(weights)
    result = {
        "edge_weights": module.EDGE_WEIGHTS,
        "edges": len(counts),
        "overall": spearman_permutation(counts, magnitude, permutations, seed),
        "by_presynaptic_type": {},
    }
    result["overall"]["median_weight"] = float(np.median(magnitude))
    for kind in sorted(set(pre_types)):
        mask = pre_types == kind
        stats = spearman_permutation(counts[mask], magnitude[mask], permutations, seed)
        stats["median_weight"] = float(np.median(magnitude[mask]))
        result["by_presynaptic_type"][kind] = stats
    signs = getattr(module, "EDGE_SIGNS", None)
    if module.EDGE_WEIGHTS == "dale" and signs is not None:
        result["dale"] = dale_analysis(
            magnitude, counts, np.asarray(signs), permutations, seed
        )
    return result


def dale_analysis(
    magnitude: np.ndarray,
    counts: np.ndarray,
    signs: np.ndarray,
    permutations: int,
    seed: int,
) -> dict:
    out = {}
    for label, mask in (("excitatory", signs > 0), ("inhibitory", signs < 0)):
        values = magnitude[mask]
        out[label] = {
            "edges": int(mask.sum()),
            "median": float(np.median(values)) if len(values) else None,
            "mean": float(values.mean()) if len(values) else None,
            "vs_synapses": spearman_permutation(
                counts[mask], values, permutations, seed
            ),
        }
    exc, inh = magnitude[signs > 0], magnitude[signs < 0]
    if len(exc) and len(inh):
        from scipy.stats import mannwhitneyu

        test = mannwhitneyu(inh, exc, alternative="two-sided")
        # Common-language effect size: P(a random inhibitory weight > a random excitatory one).
        out["mann_whitney_p"] = float(test.pvalue)
        out["p_inhibitory_larger"] = float(test.statistic / (len(exc) * len(inh)))
    return out


def synapse_data(run: LoadedRun) -> dict:
    module = run.module
    with torch.no_grad():
        weights = run.net.edge_weights().double().cpu().numpy()
    return {
        "weights": weights,
        "counts": np.asarray(module.SYNAPSES, dtype=np.float64),
        "pre_types": np.array([module.NODE_TYPES[a] for a, _ in module.EDGES]),
        "signs": np.asarray(getattr(module, "EDGE_SIGNS", np.sign(weights))),
    }


def initial_weight(run: LoadedRun) -> float | None:
    """The magnitude every edge weight starts from (a fresh model's), when they all start equal."""
    from dagc.runtime.loading import build_model

    with torch.no_grad():
        start = build_model(run.module).edge_weights().abs()
    return float(start[0]) if bool((start == start[0]).all()) else None


def p_text(p: float, permutations: int) -> str:
    floor = 1 / (permutations + 1)
    return f"< {floor:.1g}" if p <= floor * 1.0001 else f"= {p:.2g}"
