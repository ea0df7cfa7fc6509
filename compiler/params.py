"""Parameter count of a planned network, computed from the plan alone (no torch).

The generated module's own count must agree with this; a test checks it.
"""

from __future__ import annotations

from dagc.compiler.plan import NetworkPlan


def parameter_breakdown(
    plan: NetworkPlan, channels: int, in_channels: int, num_classes: int
) -> dict[str, int]:
    n, c = len(plan.nodes), channels
    parts = {
        "stem_conv": c * in_channels * 9,  # 3x3, stride 2, no bias (BatchNorm follows)
        "stem_batchnorm_affine": 2 * c,
        "node_convs": n * c * 9,  # depthwise 3x3: 9 weights per channel per node
        "node_batchnorm_affine": n * 2 * c,  # scale and shift per channel per node
        "edge_weights": len(plan.edges),  # one learnable scalar per DAG edge
        "sink_conv": c * c,  # 1x1, no bias
        "sink_batchnorm_affine": 2 * c,
        "classifier": c * num_classes + num_classes,
    }
    parts["total"] = sum(parts.values())
    # The figure comparable with Park & Kim's 0.21 M: BatchNorm's affine parameters left out.
    parts["total_without_batchnorm_affine"] = parts["total"] - sum(
        value for key, value in parts.items() if key.endswith("batchnorm_affine")
    )
    return parts
