"""The lesion scan of `dagc analyze`: every neuron silenced alone, scored on a test subset.

The intact network's activations are computed once per batch and each lesion recomputes only
the silenced neuron's descendants (`IncrementalForward`); a module whose forward pass the
incremental one does not reproduce is scanned with full passes instead.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from tqdm import tqdm

from dagc.runtime.data import normalise
from dagc.runtime.interpreter import InterpretedNet

from .lesion import LoadedRun, silenced


def node_levels(module) -> list[int]:
    levels = [0] * len(module.NODES)
    for level, (start, stop) in enumerate(module.LEVELS):
        for i in range(start, stop):
            levels[i] = level
    return levels


def score(logp: torch.Tensor, labels: torch.Tensor, num_classes: int) -> dict:
    predicted = logp.argmax(1)
    right = (predicted == labels).double()
    per_class = [
        right[labels == k].mean().item() if (labels == k).any() else float("nan")
        for k in range(num_classes)
    ]
    return {
        "accuracy": right.mean().item(),
        "loss": -logp.gather(1, labels[:, None]).mean().item(),
        "per_class": per_class,
    }


class IncrementalForward:
    """The network's eval-mode forward pass, node by node, reusing activations.

    Silencing neuron i changes only i and the neurons downstream of it, so a lesion scan
    computes every neuron once for the intact network, keeps the activations, and for each
    lesion recomputes only i's descendants (about half the work over all neurons of the
    hermaphrodite). It has no forward pass of its own: each node goes through the generated
    module's own per-neuron functions (`weighted_relu`, `conv_batch_norm`, which dagc's
    kernels may replace) or, in a module compiled without them (`--backward autograd`),
    through the reference interpreter's `gather` and `node` in the generated code's order;
    the stem and the sink are the interpreter's, holding the trained network's parameters.
    `matches` checks the result against the module's own forward before it is trusted.
    """

    def __init__(self, net: torch.nn.Module, module):
        self.net, self.module = net, module
        self.reference = InterpretedNet(
            module,
            num_classes=net.classifier.out_features,
            in_channels=net.stem_conv.in_channels,
            channels=net.node_conv.shape[1],
            aggregate="chain",  # w[0] * x[0], then + w[j] * x[j]: the generated order
        )
        self.reference.load_state_dict(net.state_dict())
        self.reference.to(net.node_conv.device).eval()
        n = len(module.NODES)
        self.in_edges: list[list[tuple[int, int]]] = [[] for _ in range(n)]
        self.successors: list[list[int]] = [[] for _ in range(n)]
        for e, (pre, post) in enumerate(module.EDGES):
            self.in_edges[post].append((e, pre))
            self.successors[pre].append(post)
        self.inputs = set(module.INPUT_NODES)
        self.primitives = all(
            callable(getattr(module, name, None))
            for name in ("weighted_relu", "conv_batch_norm")
        )

    def descendants(self, i: int) -> list[int]:
        seen, stack = {i}, [i]
        while stack:
            for post in self.successors[stack.pop()]:
                if post not in seen:
                    seen.add(post)
                    stack.append(post)
        seen.discard(i)
        return sorted(seen)

    def _node(self, i: int, values, source, w) -> torch.Tensor:
        """Node i's output from `source` (an input node) or its predecessors' `values`."""
        if not self.primitives:
            x = source if i in self.inputs else self.reference.gather(i, w, values)
            return self.reference.node(i, x)
        if i in self.inputs:  # the generated module applies the source's ReLU once
            x = F.relu(source)
        else:
            edges = [e for e, _ in self.in_edges[i]]
            x = self.module.weighted_relu(
                w[edges], *(values[pre] for _, pre in self.in_edges[i])
            )
        net = self.net
        return self.module.conv_batch_norm(
            x, net.node_conv[i], net.node_bn_weight[i], net.node_bn_bias[i],
            net.node_bn_mean[i], net.node_bn_var[i], False, net.bn_eps,
        )[1]  # fmt: skip

    def intact(self, x: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Every node's activation for normalised images `x`, and the log-probabilities."""
        w = self.net.edge_weights()
        source = self.reference.stem(x)
        values: list = [None] * len(self.module.NODES)
        for i in range(len(values)):
            values[i] = self._node(i, values, source, w)
        return values, self.reference.sink(values)

    def silenced(self, cache: list[torch.Tensor], i: int) -> torch.Tensor:
        """Log-probabilities with neuron i's output held at zero."""
        w = self.net.edge_weights()
        changed = {i: torch.zeros_like(cache[i])}
        view = _Overlay(cache, changed)
        for d in self.descendants(i):  # never an input node: those have no predecessor
            changed[d] = self._node(d, view, None, w)
        return self.reference.sink(view)

    def matches(self, x: torch.Tensor) -> bool:
        _, mine = self.intact(x)
        theirs = self.net(x)
        return mine.shape == theirs.shape and bool(
            torch.allclose(mine, theirs, rtol=1e-4, atol=1e-5)
        )


class _Overlay:
    """cache[i], unless changed holds a new value for i."""

    def __init__(self, cache, changed):
        self.cache, self.changed = cache, changed

    def __getitem__(self, i):
        value = self.changed.get(i)
        return self.cache[i] if value is None else value


def lesion_scan(
    run: LoadedRun,
    images: torch.Tensor,
    labels: torch.Tensor,
    batch: int = 250,
    quiet: bool = False,
    log=lambda line: None,
) -> tuple[dict, list[dict]]:
    """The intact network's scores and, per neuron silenced alone, its scores and drops."""
    module, net = run.module, run.net
    n, num_classes = len(module.NODES), run.info.num_classes
    labels_cpu = labels.cpu()
    net.eval()
    forward = IncrementalForward(net, module)
    with torch.inference_mode():
        fast = forward.matches(normalise(images[: min(len(images), 8)]))
    if not fast:
        log(
            "this module's forward pass is not the one the fast scan knows: full passes"
        )
    intact_parts: list[torch.Tensor] = []
    parts: list[list[torch.Tensor]] = [[] for _ in range(n)]
    batches = range(0, len(images), batch)
    bar = tqdm(total=n * len(batches), desc="lesions", unit="neuron", disable=quiet,
               leave=False, dynamic_ncols=True)  # fmt: skip
    with torch.inference_mode():
        for start in batches:
            x = normalise(images[start : start + batch])
            if fast:
                cache, logp = forward.intact(x)
            else:
                logp = net(x)
            intact_parts.append(logp.double().cpu())
            for i in range(n):
                if fast:
                    out = forward.silenced(cache, i)
                else:
                    with silenced(net, [i]):
                        out = net(x)
                parts[i].append(out.double().cpu())
                bar.update()
            cache = None
    bar.close()
    intact = score(torch.cat(intact_parts), labels_cpu, num_classes)
    levels = node_levels(module)
    rows = []
    for i in range(n):
        scores = score(torch.cat(parts[i]), labels_cpu, num_classes)
        rows.append(
            {
                "name": module.NODES[i],
                "index": i,
                "type": module.NODE_TYPES[i],
                "level": levels[i],
                "accuracy": scores["accuracy"],
                "drop": intact["accuracy"] - scores["accuracy"],
                "loss_rise": scores["loss"] - intact["loss"],
                "class_drops": [
                    a - b for a, b in zip(intact["per_class"], scores["per_class"])
                ],
            }
        )
    rows.sort(
        key=lambda row: (-round(row["drop"], 12), -row["loss_rise"], row["index"])
    )
    for rank, row in enumerate(rows, 1):
        row["rank"] = rank
    intact["fast_scan"] = fast
    return intact, rows
