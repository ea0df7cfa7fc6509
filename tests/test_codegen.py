"""Generated modules: byte-stable, readable, equal to the reference interpreter, compilable."""

from __future__ import annotations

import ast
import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from dagc.compiler.params import parameter_breakdown
from dagc.runtime.equivalence import differences, randomise, relative
from dagc.runtime.interpreter import InterpretedNet
from dagc.runtime.loading import build_model, load_generated

ROOT = Path(__file__).resolve().parents[1]
GENERATED = sorted((ROOT / "generated").glob("*.py"))


def forward_of(path: Path) -> ast.FunctionDef:
    tree = ast.parse(path.read_text())
    (cls,) = [
        node
        for node in tree.body
        if isinstance(node, ast.ClassDef) and node.name.endswith("Net")
    ]
    return next(
        f for f in cls.body if isinstance(f, ast.FunctionDef) and f.name == "forward"
    )


def test_committed_files_are_fresh():
    spec = importlib.util.spec_from_file_location(
        "regenerate", ROOT / "scripts" / "regenerate.py"
    )
    regenerate = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(regenerate)
    assert sorted(regenerate.TARGETS) == sorted(p.name for p in GENERATED)
    for path in GENERATED:
        assert path.read_text() == regenerate.fresh_source(path.name), (
            f"{path.name} is stale: run python scripts/regenerate.py"
        )


@pytest.mark.parametrize("path", GENERATED, ids=lambda p: p.name)
def test_generated_files_are_straight_line_and_torch_only(path):
    forward = forward_of(path)
    loops = [
        n
        for n in ast.walk(forward)
        if isinstance(n, (ast.For, ast.While, ast.comprehension))
    ]
    assert loops == []
    imports = {
        alias.name.split(".")[0]
        for node in ast.parse(path.read_text()).body
        if isinstance(node, (ast.Import, ast.ImportFrom))
        for alias in (
            node.names if isinstance(node, ast.Import) else [ast.alias(node.module)]
        )
    }
    assert imports == {"torch"}


def test_generated_file_is_black_formatted_and_named_after_neurons():
    path = ROOT / "generated" / "hermaphrodite_net.py"
    result = subprocess.run(
        [sys.executable, "-m", "black", "--check", "--quiet", str(path)],
        capture_output=True,
    )
    assert result.returncode == 0, result.stderr
    text = path.read_text()
    assert "AVAL = node(189, weighted_relu(" in text and "# AVAL (interneuron" in text
    assert "sha256 " in text and "/work" not in text and "/tmp" not in text


def test_byte_identical_recompile(tmp_path):
    from dagc.cli import main

    outputs = []
    for name in ("a.py", "b.py"):
        with pytest.raises(SystemExit):
            main(["compile", "--connectome", "male", "-o", str(tmp_path / name)])
        outputs.append((tmp_path / name).read_bytes())
    assert outputs[0] == outputs[1] == (ROOT / "generated" / "male_net.py").read_bytes()


def test_parameter_count_matches_the_plan():
    module = load_generated(ROOT / "generated" / "hermaphrodite_net.py")
    model = build_model(module)
    counted = sum(p.numel() for p in model.parameters())
    from dagc.compiler.pipeline import run_front_end

    planned = parameter_breakdown(run_front_end("hermaphrodite").plan, 78, 1, 10)
    assert counted == planned["total"]
    assert 200_000 <= counted <= 260_000
    assert f"{counted:,}" in (ROOT / "generated" / "hermaphrodite_net.py").read_text()


def assert_equivalent(reference, model, x, tolerance: float = 1e-5) -> None:
    """Output, gradients and running statistics after one pass within `tolerance`
    (relative; dagc.runtime.equivalence)."""
    too_far = {
        key: value
        for key, value in differences(reference, model, x).items()
        if not value < tolerance
    }
    assert not too_far, too_far


CASES = [
    ("hermaphrodite", "constrained", 0),
    ("male", "constrained", 0),
    ("hermaphrodite", "random", 5),
    ("hermaphrodite", "ws", 1),
    ("male", "ba", 2),
]


@pytest.mark.slow
@pytest.mark.parametrize("spec, kind, seed", CASES)
@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
def test_flat_and_levels_match_the_interpreter(compile_to, spec, kind, seed, train):
    torch.manual_seed(seed)
    modules = {
        layout: load_generated(
            compile_to(spec, kind, seed, channels=3, layout=layout)[1]
        )
        for layout in ("flat", "levels")
    }
    reference = InterpretedNet(modules["flat"], aggregate="chain")
    state = randomise(reference, seed)
    x = torch.randn(4, 1, 28, 28)
    reference.train(train)
    for _layout, module in modules.items():
        reference.load_state_dict(state)  # each comparison from the same state
        model = build_model(module)
        model.load_state_dict(state)
        model.train(train)
        assert_equivalent(reference, model, x)


def test_stacking_interpreter_agrees_in_float64(compile_to):
    """The RandWire-style (stack) interpreter sums in another order: compare in float64."""
    module = load_generated(compile_to("hermaphrodite", channels=3, layout="levels")[1])
    torch.manual_seed(0)
    reference = InterpretedNet(module, aggregate="stack").double()
    model = build_model(module).double()
    model.load_state_dict(reference.state_dict())
    x = torch.randn(4, 1, 28, 28, dtype=torch.float64)
    assert_equivalent(reference, model, x)


def test_a_checkpoint_loads_into_either_layout(compile_to):
    flat = build_model(load_generated(compile_to("male", channels=2, layout="flat")[1]))
    levels = build_model(
        load_generated(compile_to("male", channels=2, layout="levels")[1])
    )
    levels.load_state_dict(flat.state_dict())  # strict: same names and shapes


def test_outputs_are_log_probabilities():
    model = build_model(
        load_generated(ROOT / "generated" / "hermaphrodite_net.py")
    ).eval()
    out = model(torch.randn(2, 1, 28, 28))
    assert out.shape == (2, 10)
    assert torch.allclose(out.exp().sum(1), torch.ones(2), atol=1e-5)


def test_imports_with_torch_alone(tmp_path):
    """The generated file runs in an interpreter that cannot import dagc."""
    code = (
        "import sys, importlib.util\n"
        "sys.modules['dagc'] = None\n"  # any `import dagc` would now fail
        f"spec = importlib.util.spec_from_file_location('m', {str(ROOT / 'generated' / 'male_net.py')!r})\n"
        "m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m)\n"
        "import torch\n"
        "net = getattr(m, m.MODEL_CLASS)(channels=4).eval()\n"
        "print(tuple(net(torch.randn(2, 1, 28, 28)).shape))\n"
    )
    result = subprocess.run(
        [sys.executable, "-I", "-c", code], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "(2, 10)"


@pytest.mark.slow
@pytest.mark.parametrize("layout", ["flat", "levels"])
def test_full_network_traces_without_graph_breaks(layout, compile_to):
    """Dynamo traces the whole 282-node forward and backward as one graph (no Inductor here)."""
    model = build_model(
        load_generated(compile_to("hermaphrodite", channels=2, layout=layout)[1])
    )
    compiled = torch.compile(model, fullgraph=True, backend="eager")
    compiled(torch.randn(2, 1, 28, 28)).sum().backward()
    torch._dynamo.reset()


@pytest.mark.slow
def test_inductor_compiles_a_small_network(compile_to):
    """Real torch.compile (Inductor, CPU) with fullgraph=True on a 10-node random graph."""
    path = compile_to("hermaphrodite", "ws", 0, nodes=10, channels=2, layout="levels")[
        1
    ]
    torch.manual_seed(0)
    model = build_model(load_generated(path))
    x = torch.randn(4, 1, 28, 28)
    expected = model(x)
    compiled = torch.compile(model, fullgraph=True)
    out = compiled(x)
    out.sum().backward()
    assert relative(expected.detach(), out.detach()) < 1e-5
    torch._dynamo.reset()
