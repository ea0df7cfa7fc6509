"""dagc's native CPU engine (runtime/kernels/engine.py, engine.cpp): the whole DAG in one call per
pass must equal the torch path (the generated module's own dag_forward/dag_backward)."""

from __future__ import annotations

import contextlib
import os

import pytest
import torch

from dagc.compiler.errors import DagcError
from dagc.runtime import kernels
from dagc.runtime.equivalence import randomise, relative
from dagc.runtime.kernels import engine
from dagc.runtime.loading import build_model, load_generated

if (
    not engine.available()
):  # CI's machine has a compiler: there a missing one fails loudly
    reason = f"engine unavailable: {engine.unavailable_reason()}"
    if os.environ.get("CI"):
        raise RuntimeError(reason)
    pytest.skip(reason, allow_module_level=True)


def step(module, train: bool, seed: int = 0, batch: int = 3, steps: int = 1):
    """Output, every gradient and the buffers after `steps` forward + backward passes."""
    torch.manual_seed(seed)
    model = build_model(module)
    model.load_state_dict(randomise(model, seed))
    model.train(train)
    x = torch.randn(
        batch, *module.INPUT_SHAPE, generator=torch.Generator().manual_seed(1)
    )
    for _ in range(steps):
        for parameter in model.parameters():
            parameter.grad = None
        out = model(x)
        weights = torch.linspace(-1, 1, out.shape[1])
        (out * weights).sum().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    buffers = {n: b.clone() for n, b in model.named_buffers() if b.is_floating_point()}
    return out.detach(), grads, buffers


@contextlib.contextmanager
def engine_installed(module, precision: str = "fp32"):
    """The engine in `module` for the block, the module's own functions again after it."""
    kernels.install(module, "engine", precision=precision)
    try:
        yield
    finally:
        kernels.uninstall(module)


def compare(module, train: bool, precision: str = "fp32", seed: int = 0) -> dict:
    """The worst relative differences (engine against the torch path) per tensor."""
    kernels.uninstall(module)
    expected = step(module, train, seed)
    with engine_installed(module, precision):
        got = step(module, train, seed)
    largest = max(g.abs().max() for g in expected[1].values())
    errors = {"out": relative(expected[0], got[0])}
    # The stem BatchNorm's gradients are rounding noise around zero (every path from it meets
    # another train-mode BatchNorm): the torch path's own float32 error on stem_bn.bias is
    # 3.7e-5 of its size against float64 on the WS DAG (the engine's 2.1e-5), so they are
    # measured against the largest gradient, as tests/test_reverse_pass.py does.
    for name, grad in expected[1].items():
        floor = largest.item() if name.startswith("stem_bn.") else 1e-30
        errors[name] = relative(grad, got[1][name], floor)
    for name, value in expected[2].items():
        errors[name] = relative(value, got[2][name])
    return errors


NETWORKS = [
    ("hermaphrodite", "constrained", 0),
    ("male", "constrained", 0),
    ("hermaphrodite", "random", 5),
    ("hermaphrodite", "ws", 1),
]


@pytest.mark.parametrize("spec, kind, seed", NETWORKS)
@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
def test_the_engine_equals_the_torch_path(compile_to, spec, kind, seed, train):
    module = load_generated(compile_to(spec, kind, seed, channels=2)[1])
    errors = compare(module, train, seed=seed)
    assert max(errors.values()) < 1e-5, errors


@pytest.mark.parametrize("edge_weights", ["sigmoid", "free", "dale"])
@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
def test_every_edge_weight_mode(compile_to, edge_weights, train):
    path = compile_to("hermaphrodite", channels=3, edge_weights=edge_weights)[1]
    errors = compare(load_generated(path), train)
    assert max(errors.values()) < 1e-5, errors


def dag_inputs(module, channels: int, batch: int, seed: int = 0):
    """Random inputs of the DAG op (source, w, conv, bn_weight, bn_bias, bn_mean, bn_var)."""
    g = torch.Generator().manual_seed(seed)
    n, e = len(module.NODES), len(module.EDGES)
    size = module.INPUT_SHAPE[1] // 2
    return (
        torch.rand(batch, channels, size, size, generator=g),
        torch.rand(e, generator=g),
        torch.randn(n, channels, 1, 3, 3, generator=g) / 3,
        torch.rand(n, channels, generator=g) + 0.5,
        torch.randn(n, channels, generator=g) / 10,
        torch.randn(n, channels, generator=g) / 10,
        torch.rand(n, channels, generator=g) + 0.5,
    )


def dag_pass(module, inputs, training: bool) -> list[torch.Tensor]:
    """The DAG op's forward and reverse pass (module.dag_forward, module.dag_backward)."""
    source, w, conv, bn_weight, bn_bias, bn_mean, bn_var = inputs
    eps = 1e-5
    out, mean, invstd, *saved = module.dag_forward(
        source, w, conv, bn_weight, bn_bias, bn_mean, bn_var, training, eps, True
    )
    grad = torch.linspace(-1, 1, out.numel(), dtype=out.dtype).view(out.shape)
    grads = module.dag_backward(
        grad, source, w, conv, bn_weight, bn_mean, bn_var, training, eps,
        [mean, invstd, *saved],
    )  # fmt: skip
    return [out, mean, invstd, *grads]


OP_RESULTS = ("out", "mean", "invstd", "source", "w", "conv", "bn_weight", "bn_bias")


def op_errors(module, train: bool, precision: str, channels=2, batch=3, norm=False):
    """The DAG op's results (engine, and the torch path in float32) against the torch path
    in float64: the worst difference over the largest value (or normwise with `norm`)."""
    inputs = dag_inputs(module, channels, batch)
    kernels.uninstall(module)
    reference = dag_pass(module, [t.double() for t in inputs], train)
    torch32 = dag_pass(module, inputs, train)
    with engine_installed(module, precision):
        got = dag_pass(module, inputs, train)

    def error(expected, value):
        if norm:
            return ((expected - value.double()).norm() / expected.norm()).item()
        return relative(expected, value.double())

    return {
        name: (error(r, g), error(r, t))
        for name, r, g, t in zip(OP_RESULTS, reference, got, torch32)
        if r.numel()
    }


@pytest.mark.parametrize("spec, kind, seed", NETWORKS[:3])
@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
def test_the_dag_op_is_as_accurate_as_the_torch_path(
    compile_to, spec, kind, seed, train
):
    """Every result of dag_forward and dag_backward (the model-level test above can hide
    some behind the sink's ReLU): within 1e-5 of float64, and of torch's own float32."""
    module = load_generated(compile_to(spec, kind, seed, channels=2)[1])
    errors = op_errors(module, train, "fp32", batch=4)
    for name, (ours, theirs) in errors.items():
        assert ours < max(1e-5, 2 * theirs), (name, ours, theirs)


def test_bf16_storage_stays_within_its_documented_bound(compile_to):
    """bf16 storage (activations, saved conv inputs and gradients rounded to 8 significant
    bits, everything accumulated in float32 or double) against float64, normwise, on the
    hermaphrodite DAG (282 nodes, 72 levels), train and eval. Measured: the output within
    0.2-1.2 %, every gradient within 1.1-12 % (batch 3 and 32); the gradients move more
    than the output because they are the exact gradients of the bf16-perturbed forward
    (keeping the gradient arena in float32 changed them by < 1 %). Bound: 2 % for the
    output and the statistics, 20 % for the gradients. Whether training accuracy survives
    this is for the campaign to measure (issue 21)."""
    module = load_generated(compile_to("hermaphrodite", channels=2)[1])
    for train in (True, False):
        errors = op_errors(module, train, "bf16", batch=3, norm=True)
        for name, (ours, theirs) in errors.items():
            bound = 0.02 if name in ("out", "mean", "invstd") else 0.2
            assert ours < bound, (train, name, ours)
            assert theirs < 1e-5  # the float32 torch path, for scale


@pytest.mark.parametrize("precision", engine.PRECISIONS)
@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
def test_results_are_bitwise_the_same_for_one_and_two_threads(
    compile_to, precision, train
):
    module = load_generated(compile_to("hermaphrodite", channels=4)[1])
    inputs = dag_inputs(module, channels=5, batch=3)  # 5 channels: an uneven split
    kernels.install(module, "engine", precision=precision)
    threads = torch.get_num_threads()
    try:
        results = []
        for count in (1, 2):
            torch.set_num_threads(count)
            results.append(dag_pass(module, inputs, train))
    finally:
        torch.set_num_threads(threads)
        kernels.uninstall(module)
    for a, b in zip(*results):
        assert torch.equal(a, b)


def test_a_module_without_the_generated_reverse_pass_is_a_clear_error(compile_to):
    module = load_generated(compile_to("male", channels=2, backward="autograd")[1])
    with pytest.raises(DagcError, match="--backward generated"):
        kernels.install(module, "engine")


def test_an_unknown_precision_is_a_clear_error(compile_to):
    module = load_generated(compile_to("male", channels=2)[1])
    with pytest.raises(DagcError, match="precision"):
        kernels.install(module, "engine", precision="fp8")
    assert kernels.installed(module) is None


def test_install_and_uninstall_swap_the_module_functions(compile_to):
    module = load_generated(compile_to("male", channels=2)[1])
    forward, backward = module.dag_forward, module.dag_backward
    kernels.install(module, "engine")
    kernels.install(
        module, "engine", precision="bf16"
    )  # twice: still wraps the module's own functions
    assert module.dag_forward.__wrapped__ is forward
    assert module.dag_backward.__wrapped__ is backward
    assert kernels.installed(module) == ("engine", {"precision": "bf16"})
    kernels.uninstall(module)
    assert (module.dag_forward, module.dag_backward) == (forward, backward)
    assert kernels.installed(module) is None


def test_calls_the_engine_cannot_take_go_to_the_module_functions(compile_to):
    module = load_generated(compile_to("hermaphrodite", channels=2)[1])
    kernels.uninstall(module)
    torch.manual_seed(0)
    model = build_model(module).double()
    x = torch.randn(2, *module.INPUT_SHAPE, dtype=torch.float64)
    expected = model(x)
    with engine_installed(module):
        got = model(x)  # float64: the module's own dag_forward and dag_backward
        got.sum().backward()
    assert torch.equal(expected, got)


def test_a_second_backward_through_one_graph_is_a_clear_error(compile_to):
    module = load_generated(compile_to("hermaphrodite", channels=2)[1])
    with engine_installed(module):
        model = build_model(module)
        out = model(torch.randn(2, *module.INPUT_SHAPE)).sum()
        out.backward(retain_graph=True)
        with pytest.raises(RuntimeError, match="freed"):
            out.backward()


# --- choosing the engine: --kernels and --precision ------------------------------------------


def test_auto_on_a_cpu_chooses_the_engine_and_torch_restores(compile_to):
    from dagc.runtime.kernels import use_kernels

    module = load_generated(compile_to("male", channels=2)[1])
    cpu = torch.device("cpu")
    forward, conv = module.dag_forward, module.conv_batch_norm
    assert use_kernels("auto", module, cpu, "net.py", precision="bf16") == "engine"
    assert kernels.installed(module) == ("engine", {"precision": "bf16"})
    assert module.dag_forward is not forward and module.conv_batch_norm is not conv
    assert use_kernels("cpp", module, cpu, "net.py") == "cpp"
    assert module.dag_forward is forward  # the engine's passes are gone with it
    assert use_kernels("torch", module, cpu, "net.py") == "torch"
    assert (module.dag_forward, module.conv_batch_norm) == (forward, conv)


@pytest.mark.parametrize("choice", ["cpp", "torch"])
def test_bf16_storage_needs_the_engine(compile_to, choice):
    from dagc.runtime.kernels import use_kernels

    module = load_generated(compile_to("male", channels=2)[1])
    with pytest.raises(DagcError, match="--precision bf16 needs dagc's CPU engine"):
        use_kernels(choice, module, torch.device("cpu"), "net.py", precision="bf16")


def test_the_engine_needs_the_generated_reverse_pass(compile_to):
    from dagc.runtime.kernels import engine_hint, use_kernels

    module = load_generated(compile_to("male", channels=2, backward="autograd")[1])
    cpu = torch.device("cpu")
    assert use_kernels("auto", module, cpu, "x/net.py") == "torch"
    # `dagc train` says so in one line: a module that falls back is several times slower
    hint = engine_hint("auto", module, cpu, "x/net.py")
    assert "\n" not in hint and hint.startswith(
        "dagc: net.py has autograd's reverse pass"
    )
    assert engine_hint("torch", module, cpu, "x/net.py") is None  # asked for
    generated = load_generated(compile_to("male", channels=2)[1])
    assert engine_hint("auto", generated, cpu, "x/net.py") is None
    with pytest.raises(DagcError, match="--kernels engine needs a module compiled"):
        use_kernels("engine", module, cpu, "net.py")
    with pytest.raises(DagcError, match="--precision bf16 needs"):
        use_kernels("auto", module, cpu, "net.py", precision="bf16")


def test_train_and_eval_in_bf16_from_the_command_line(
    dagc, clean_error, compile_to, shared, tmp_path
):
    """bf16 storage end to end: the summary records it, `dagc eval` computes in it by
    default and reproduces the final accuracy; fp32 kernels other than the engine refuse
    it in one line."""
    import json

    from conftest import SHARED

    data = shared(SHARED / "data" / "mnist" / "train-images-idx3-ubyte.gz").parents[1]
    path = compile_to("hermaphrodite", "ws", 0, nodes=6, channels=2)[1]
    out = tmp_path / "run"
    result = dagc(
        "train", path, "--precision", "bf16", "--device", "cpu", "--iterations", 2,
        "--batch-size", 8, "--eval-every", 2, "--data-dir", data, "--out", out,
        "--quiet",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["kernels"], summary["precision"]) == ("engine", "bf16")
    result = dagc("eval", out, "--json", "--device", "cpu", "--data-dir", data)
    assert result.returncode == 0, result.stderr
    evaluated = json.loads(result.stdout)
    assert evaluated["precision"] == "bf16"
    assert evaluated["test_accuracy"] == summary["final_test_accuracy"]
    refused = dagc(
        "train", path, "--precision", "bf16", "--kernels", "cpp", "--device", "cpu",
        "--data-dir", data, "--out", tmp_path / "cpp-run",
    )  # fmt: skip
    clean_error(refused, "--precision bf16 needs dagc's CPU engine")
