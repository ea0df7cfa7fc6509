"""The reference interpreter: walks the graph at run time, the way RandWire-style code does.

It is the oracle for the generated modules (same parameter names and shapes, so one
state_dict loads into all three) and the baseline that benchmarks divide by.
"""

from __future__ import annotations

from collections import deque
from types import ModuleType

import torch
import torch.nn.functional as F
from torch import nn


class InterpretedNet(nn.Module):
    def __init__(
        self,
        graph: ModuleType,
        num_classes=None,
        in_channels=None,
        channels=None,
        aggregate: str = "stack",
    ):
        """`graph`: a generated module (its metadata tables describe the network).

        aggregate="stack" weighs a node's stacked inputs by broadcasting and sums them, as
        RandWire code does; "chain" adds the weighted inputs one by one in the generated
        code's order (w[0] * x[0], then + w[j] * x[j]), so float32 results agree to rounding.
        """
        super().__init__()
        if aggregate not in ("stack", "chain"):
            raise ValueError(f"aggregate must be 'stack' or 'chain', not {aggregate!r}")
        self.aggregate = aggregate
        self.nodes = list(graph.NODES)
        self.inputs = set(graph.INPUT_NODES)
        self.outputs = list(graph.OUTPUT_NODES)
        self.edge_mode = getattr(graph, "EDGE_WEIGHTS", "sigmoid")
        # Incoming edges of each node: (edge index, predecessor index) pairs.
        self.in_edges: list[list[tuple[int, int]]] = [[] for _ in self.nodes]
        for e, (pre, post) in enumerate(graph.EDGES):
            self.in_edges[post].append((e, pre))
        num_classes = num_classes or graph.NUM_CLASSES
        in_channels = in_channels or graph.INPUT_SHAPE[0]
        c = self.channels = channels or graph.CHANNELS
        n = len(self.nodes)
        self.bn_momentum, self.bn_eps = 0.1, 1e-5
        self.stem_conv = nn.Conv2d(in_channels, c, 3, stride=2, padding=1, bias=False)
        self.stem_bn = nn.BatchNorm2d(c)
        self.node_conv = nn.Parameter(torch.empty(n, c, 1, 3, 3))
        self.node_bn_weight = nn.Parameter(torch.ones(n, c))
        self.node_bn_bias = nn.Parameter(torch.zeros(n, c))
        self.register_buffer("node_bn_mean", torch.zeros(n, c))
        self.register_buffer("node_bn_var", torch.ones(n, c))
        start = 1.0 if self.edge_mode == "free" else 0.0
        self.edge_weight = nn.Parameter(torch.full((len(graph.EDGES),), start))
        if self.edge_mode == "dale":
            self.register_buffer(
                "edge_sign", torch.tensor(graph.EDGE_SIGNS, dtype=torch.float32)
            )
        self.sink_conv = nn.Conv2d(c, c, 1, bias=False)
        self.sink_bn = nn.BatchNorm2d(c)
        self.classifier = nn.Linear(c, num_classes)
        for weight in self.node_conv:
            nn.init.kaiming_uniform_(weight, a=5**0.5)

    def edge_weights(self) -> torch.Tensor:
        if self.edge_mode == "free":
            return self.edge_weight
        gates = torch.sigmoid(self.edge_weight)
        return gates * self.edge_sign if self.edge_mode == "dale" else gates

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.edge_weights()
        source = self.stem(x)
        # Kahn's walk, every call: a node runs once all of its inputs have been computed.
        waiting = [len(edges) for edges in self.in_edges]
        successors: list[list[int]] = [[] for _ in self.nodes]
        for post, edges in enumerate(self.in_edges):
            for _, pre in edges:
                successors[pre].append(post)
        ready = deque(i for i in range(len(self.nodes)) if waiting[i] == 0)
        values: dict[int, torch.Tensor] = {}
        while ready:
            i = ready.popleft()
            total = source if i in self.inputs else self.gather(i, w, values)
            values[i] = self.node(i, total)
            for post in successors[i]:
                waiting[post] -= 1
                if waiting[post] == 0:
                    ready.append(post)
        return self.sink(values)

    def stem(self, x: torch.Tensor) -> torch.Tensor:
        """The source every input node reads (before the ReLU each node applies)."""
        return self.stem_bn(self.stem_conv(x))

    def sink(self, values) -> torch.Tensor:
        """Log-probabilities from the nodes' outputs (`values[i]` for node i): the mean of
        the output nodes, in OUTPUT_NODES order, then the sink's layers."""
        total = values[self.outputs[0]]
        for i in self.outputs[1:]:
            total = total + values[i]
        total = total / len(self.outputs)
        x = F.relu(self.sink_bn(self.sink_conv(F.relu(total))))
        x = torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)
        return F.log_softmax(self.classifier(x), dim=1)

    def gather(
        self, i: int, w: torch.Tensor, values: dict[int, torch.Tensor]
    ) -> torch.Tensor:
        if self.aggregate == "stack":
            edge_ids = torch.tensor([e for e, _ in self.in_edges[i]], device=w.device)
            stacked = torch.stack([values[pre] for _, pre in self.in_edges[i]])
            return (w[edge_ids].view(-1, 1, 1, 1, 1) * stacked).sum(0)
        # In place on a fresh tensor: the same numbers, one pass per edge less (the lesion
        # scan sums through here), and autograd-safe (neither op's backward reads `total`).
        (first, pre), *rest = self.in_edges[i]
        total = torch.mul(values[pre], w[first])
        for e, pre in rest:
            total.addcmul_(values[pre], w[e])
        return total

    def node(self, i: int, x: torch.Tensor) -> torch.Tensor:
        x = F.conv2d(F.relu(x), self.node_conv[i], padding=1, groups=self.channels)
        return F.batch_norm(
            x,
            self.node_bn_mean[i],
            self.node_bn_var[i],
            self.node_bn_weight[i],
            self.node_bn_bias[i],
            self.training,
            self.bn_momentum,
            self.bn_eps,
        )
