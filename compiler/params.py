"""Parameter count of a planned network, computed from the plan alone (no torch).

The generated module's own count must agree with this; a test checks it.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

from .plan import NetworkPlan


@dataclass(frozen=True)
class ParameterCount:
    """Learnable parameters of a network, part by part."""

    stem_conv: int  # 3x3, stride 2, no bias (BatchNorm follows)
    stem_batchnorm_affine: int
    node_convs: int  # depthwise 3x3: 9 weights per channel per node
    node_batchnorm_affine: int  # scale and shift per channel per node
    edge_weights: int  # one learnable scalar per DAG edge
    sink_conv: int  # 1x1, no bias
    sink_batchnorm_affine: int
    classifier: int

    @property
    def total(self) -> int:
        return sum(getattr(self, part.name) for part in fields(self))

    @property
    def total_without_batchnorm_affine(self) -> int:
        """The figure comparable with Park & Kim's 0.21 M: BatchNorm's affine parameters left out."""
        return self.total - (
            self.stem_batchnorm_affine
            + self.node_batchnorm_affine
            + self.sink_batchnorm_affine
        )

    def as_dict(self) -> dict[str, int]:
        """Every part, then `total` and `total_without_batchnorm_affine` (the JSON form)."""
        parts = {part.name: getattr(self, part.name) for part in fields(self)}
        parts["total"] = self.total
        parts["total_without_batchnorm_affine"] = self.total_without_batchnorm_affine
        return parts

    def __getitem__(self, key: str) -> int:
        """`count["total"]`, as when this was a dict."""
        return self.as_dict()[key]


def parameter_breakdown(
    plan: NetworkPlan, channels: int, in_channels: int, num_classes: int
) -> ParameterCount:
    n, c = len(plan.nodes), channels
    return ParameterCount(
        stem_conv=c * in_channels * 9,
        stem_batchnorm_affine=2 * c,
        node_convs=n * c * 9,
        node_batchnorm_affine=n * 2 * c,
        edge_weights=len(plan.edges),
        sink_conv=c * c,
        sink_batchnorm_affine=2 * c,
        classifier=c * num_classes + num_classes,
    )
