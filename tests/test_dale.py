"""Dale's law edge weights: one fixed sign per presynaptic neuron, before and after training."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from dagc.compiler.errors import DagcError
from dagc.compiler.signs import neuron_sign, read_sign_table
from dagc.runtime.interpreter import InterpretedNet
from dagc.runtime.loading import build_model, load_generated


def expected_signs(module, inhibitory=("GABA",)):
    return torch.tensor(
        [
            (
                -1.0
                if set(module.NEUROTRANSMITTERS[pre].split("+")) & set(inhibitory)
                else 1.0
            )
            for pre, _ in module.EDGES
        ]
    )


def assert_signs(model, expected):
    weights = model.edge_weights().detach()
    assert torch.all(weights[expected < 0] < 0)
    assert torch.all(weights[expected > 0] > 0)


@pytest.mark.slow
def test_gabaergic_edges_stay_negative_through_training(compile_to):
    module = load_generated(
        compile_to("hermaphrodite", channels=2, edge_weights="dale")[1]
    )
    expected = expected_signs(module)
    assert (
        100 < int((expected < 0).sum()) < len(expected) // 2
    )  # GABA neurons are a minority
    torch.manual_seed(0)
    model = build_model(module)
    assert_signs(model, expected)
    optimizer = torch.optim.Adam(
        model.parameters(), lr=0.5
    )  # large steps: try to flip signs
    for _ in range(5):
        loss = F.nll_loss(model(torch.randn(8, 1, 28, 28)), torch.randint(0, 10, (8,)))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert (
        model.edge_weight.abs() > 1e-3
    ).float().mean() > 0.9  # magnitudes were trained
    assert_signs(model, expected)


def test_dale_module_matches_the_interpreter(compile_to):
    module = load_generated(
        compile_to("male", channels=2, edge_weights="dale", layout="levels")[1]
    )
    torch.manual_seed(1)
    model = build_model(module).eval()
    reference = InterpretedNet(module, aggregate="chain").eval()
    reference.load_state_dict(model.state_dict())
    x = torch.randn(3, 1, 28, 28)
    assert torch.allclose(model(x), reference(x), rtol=1e-5, atol=1e-6)


def test_sign_table_overrides_the_default(tmp_path):
    table = tmp_path / "signs.csv"
    table.write_text("transmitter,sign\nGlu,-1\nGABA,+1\n")
    signs = read_sign_table(table)
    assert neuron_sign("Glu", signs) == -1 and neuron_sign("GABA", signs) == 1
    assert neuron_sign("ACh+Glu", signs) == -1 and neuron_sign("", signs) == 1
    assert neuron_sign("ACh+GABA") == -1  # default: any inhibitory transmitter decides


def test_bad_sign_table(tmp_path):
    table = tmp_path / "signs.csv"
    table.write_text("transmitter,sign\nGlu,2\n")
    with pytest.raises(DagcError, match="must be \\+1 or -1"):
        read_sign_table(table)


def test_dale_needs_transmitters(compile_to):
    with pytest.raises(DagcError, match="needs neurotransmitters"):
        compile_to("hermaphrodite", "ws", 0, nodes=10, channels=2, edge_weights="dale")
