"""dagc's C++ kernels (dagc.runtime.kernels.cpu) against torch's ops and the interpreter.

The kernels are built with the machine's C++ compiler on first use. Without one the module
skips, except under CI, whose machine has one: there a missing compiler fails loudly.
"""

from __future__ import annotations

import json
import os
import types

import pytest
import torch
import torch.nn.functional as F

from dagc.runtime import kernels
from dagc.runtime.kernels import cpu as cpu_kernels

if not cpu_kernels.available():
    reason = f"C++ kernels unavailable: {cpu_kernels.unavailable_reason()}"
    if os.environ.get("CI"):
        raise RuntimeError(reason)
    pytest.skip(reason, allow_module_level=True)

# (B, C, H, W): one element, fewer than one 4,096-element block, several blocks with a
# ragged tail, a plane wider than tall, the paper's 14 x 14 planes.
SHAPES = [(1, 1, 1, 1), (2, 3, 5, 7), (3, 4, 21, 23), (2, 2, 3, 40), (4, 6, 14, 14)]


def generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def tensors(shape, k, seed, relu=False):
    g = generator(seed)
    xs = [torch.randn(shape, generator=g) for _ in range(k)]
    return [x.relu_() for x in xs] if relu else xs


def relative_error(expected: torch.Tensor, got: torch.Tensor) -> float:
    scale = expected.abs().max().clamp_min(1e-30)
    return ((expected.double() - got.double()).abs().max() / scale).item()


# --- each primitive against torch's ops -------------------------------------------------------


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("k", [1, 2, 7])
def test_weighted_sums_match_torch(shape, k):
    xs = tensors(shape, k, seed=k)
    w = torch.randn(k, generator=generator(100 + k))
    exact = sum(float(w[j]) * x.double() for j, x in enumerate(xs))
    gathered = cpu_kernels.gather(w, *xs)
    assert gathered.shape == xs[0].shape and gathered.dtype == torch.float32
    assert relative_error(exact, gathered) < 1e-6
    assert torch.equal(cpu_kernels.weighted_relu(w, *xs), gathered.relu())


def test_the_weighted_sum_keeps_nan_through_the_relu():
    x = torch.tensor([[[[float("nan"), -1.0, 2.0]]]])
    out = cpu_kernels.weighted_relu(torch.ones(1), x)
    assert out[0, 0, 0, 0].isnan() and out[0, 0, 0, 1:].tolist() == [0.0, 2.0]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("k", [1, 4])
def test_dots_match_a_float64_dot(shape, k):
    h, *xs = tensors(shape, k + 1, seed=3)
    exact = torch.stack([(h.double() * x.double()).sum() for x in xs])
    got = cpu_kernels.dots(h, *xs)
    assert got.dtype == torch.float32 and got.shape == (k,)
    assert relative_error(exact, got) < 1e-5


def node_parameters(channels: int, seed: int):
    """A node's conv weight and BatchNorm state, none of them trivial."""
    g = generator(seed)
    return (
        torch.randn(channels, 1, 3, 3, generator=g),
        torch.rand(channels, generator=g) + 0.5,
        torch.randn(channels, generator=g),
        torch.randn(channels, generator=g) * 0.1,
        torch.rand(channels, generator=g) + 0.5,
    )


def torch_conv_batch_norm(x, weight, bn_weight, bn_bias, bn_mean, bn_var, training):
    """The generated module's conv_batch_norm, in float64."""
    y = F.conv2d(x, weight, padding=1, groups=x.shape[1])
    out, mean, invstd = torch.ops.aten.native_batch_norm(
        y, bn_weight, bn_bias, None if training else bn_mean,
        None if training else bn_var, training, 0.0, 1e-5,
    )  # fmt: skip
    return y, out, mean, invstd


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_conv_batch_norm_matches_torch(shape, training):
    (x,) = tensors(shape, 1, seed=5)
    x = x * 3 + 1  # a mean far from zero: the variance must not cancel
    params = node_parameters(shape[1], seed=6)
    expected = torch_conv_batch_norm(
        x.double(), *(p.double() for p in params), training
    )
    got = cpu_kernels.conv_batch_norm(x, *params, training, 1e-5)
    assert relative_error(expected[0], got[0]) < 1e-6  # the conv's output
    if training and shape[0] * shape[2] * shape[3] == 1:
        return  # one value per channel: BatchNorm's output is bn_bias, its 1/std 1/sqrt(eps)
    assert relative_error(expected[1], got[1]) < 1e-5
    if training:
        assert relative_error(expected[2], got[2]) < 1e-5  # the batch mean
        assert relative_error(expected[3], got[3]) < 1e-5  # 1/std


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("relu_input", [True, False], ids=["relu-input", "source"])
def test_conv_batch_norm_backward_matches_autograd(shape, training, relu_input):
    grad, x = tensors(shape, 2, seed=7)
    if relu_input:  # a ReLU's output: exact zeros where the mask cuts
        x = x.relu()
    params = node_parameters(shape[1], seed=8)
    # The expected gradients: autograd through the float64 forward (and x's ReLU).
    leaves = [t.double().requires_grad_() for t in (x, *params[:3])]
    source = leaves[0].relu() if relu_input else leaves[0]
    y, out, mean, invstd = torch_conv_batch_norm(
        source, *leaves[1:], params[3].double(), params[4].double(), training
    )
    out.backward(grad.double())
    # The kernel's inputs: the float32 forward's saved tensors.
    y32, _, mean32, invstd32 = cpu_kernels.conv_batch_norm(x, *params, training, 1e-5)
    got = cpu_kernels.conv_batch_norm_backward(
        grad, x, y32, params[0], params[1], params[3], params[4], mean32, invstd32,
        training, 1e-5, relu_input,
    )  # fmt: skip
    for leaf, value in zip(leaves, got):
        assert value.shape == leaf.shape and value.dtype == torch.float32
        assert relative_error(leaf.grad, value) < 1e-4
    if relu_input:
        assert torch.all(got[0][x == 0] == 0)


def test_results_are_bitwise_the_same_for_any_thread_count():
    shape = (8, 5, 14, 14)  # 7,840 elements: two blocks, 40 planes
    xs = tensors(shape, 5, seed=9)
    w = torch.randn(5, generator=generator(10))
    params = node_parameters(5, seed=11)

    def everything():
        y, out, mean, invstd = cpu_kernels.conv_batch_norm(xs[0], *params, True, 1e-5)
        return [
            cpu_kernels.weighted_relu(w, *xs),
            cpu_kernels.gather(w, *xs),
            cpu_kernels.dots(xs[0], *xs[1:]),
            y, out, mean, invstd,
            *cpu_kernels.conv_batch_norm_backward(
                xs[1], xs[0], y, params[0], params[1], params[3], params[4], mean,
                invstd, True, 1e-5, True,
            ),
        ]  # fmt: skip

    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = everything()
        torch.set_num_threads(2)
        two = everything()
    finally:
        torch.set_num_threads(before)
    assert all(torch.equal(a, b) for a, b in zip(one, two))


# --- swapping them into a generated module ----------------------------------------------------


def fake_module() -> types.ModuleType:
    """A stand-in for a generated module whose primitives record that they ran."""
    module = types.ModuleType("fake_generated")
    module.calls = []

    def primitive(name):
        def torch_version(*args):
            module.calls.append(name)
            return name

        return torch_version

    for name in cpu_kernels.REQUIRED + cpu_kernels.OPTIONAL:
        setattr(module, name, primitive(name))
    return module


def test_calls_the_kernels_cannot_take_go_to_the_module_own_functions():
    module = kernels.install(fake_module(), "cpp")
    x = torch.randn(2, 3, 4, 4)
    w, params = torch.rand(2), node_parameters(3, seed=12)
    # Taken by the kernels: no call reaches the torch versions.
    module.gather(w, x, x)
    module.dots(x, x)
    y, _, mean, invstd = module.conv_batch_norm(x, *params, True, 1e-5)
    module.conv_batch_norm_backward(x, x, y, params[0], params[1], params[3], params[4],
                                    mean, invstd, True, 1e-5, True)  # fmt: skip
    module.conv_batch_norm(x, *params, False, 1e-5)
    assert module.calls == []
    # Not taken: float64, a non-contiguous input, mixed shapes, a weight count that does
    # not match, a 5x5 kernel, a BatchNorm of other width, and an input that needs autograd
    # while grad mode is on.
    assert module.gather(w.double(), x.double(), x.double()) == "gather"
    assert module.weighted_relu(w, x, x.transpose(2, 3)) == "weighted_relu"
    assert module.dots(x, x[:1]) == "dots"
    assert module.gather(torch.rand(3), x, x) == "gather"
    five = (torch.randn(3, 1, 5, 5), *params[1:])
    assert module.conv_batch_norm(x, *five, True, 1e-5) == "conv_batch_norm"
    narrow = (params[0], params[1][:2], *params[2:])
    assert module.conv_batch_norm(x, *narrow, True, 1e-5) == "conv_batch_norm"
    needs_grad = x.clone().requires_grad_()
    assert module.conv_batch_norm(needs_grad, *params, True, 1e-5) == "conv_batch_norm"
    with torch.no_grad():
        module.conv_batch_norm(needs_grad, *params, True, 1e-5)
    assert len(module.calls) == 7
    kernels.uninstall(module)
    assert module.gather(w, x, x) == "gather"  # the originals are back


def test_installing_twice_wraps_the_originals():
    module = kernels.install(fake_module(), "cpp")
    first = module.gather
    kernels.install(module, "cpp")
    assert module.gather is not first
    assert module.gather.__wrapped__ is first.__wrapped__


def test_the_triton_and_cpp_libraries_share_one_set_of_originals():
    module = fake_module()
    names = cpu_kernels.REQUIRED + cpu_kernels.OPTIONAL
    originals = {name: getattr(module, name) for name in names}
    kernels.install(module, "triton")  # the edge primitives only
    assert module.conv_batch_norm is originals["conv_batch_norm"]
    # then the C++ ones wrap the torch functions, not Triton's
    kernels.install(module, "cpp")
    assert all(getattr(module, name).__wrapped__ is originals[name] for name in names)
    kernels.uninstall(module)
    assert all(getattr(module, name) is originals[name] for name in names)


@pytest.mark.parametrize("edge_weights", ["sigmoid", "free", "dale"])
@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
def test_a_network_with_the_kernels_matches_the_interpreter(
    compile_to, edge_weights, train
):
    from test_reverse_pass import compare_with_interpreter

    from dagc.runtime.loading import load_generated

    path = compile_to("hermaphrodite", channels=3, edge_weights=edge_weights)[1]
    module = load_generated(path)
    kernels.install(module, "cpp")
    try:
        compare_with_interpreter(module, train, torch.float32)
    finally:
        kernels.uninstall(module)


def test_a_network_takes_every_kernel_and_never_falls_back(compile_to):
    from dagc.runtime.loading import build_model, load_generated

    module = load_generated(compile_to("male", channels=2)[1])
    names = cpu_kernels.REQUIRED + cpu_kernels.OPTIONAL
    calls = {"torch": [], "dispatch": []}

    def counting(kind, name, function):
        def counted(*args):
            calls[kind].append(name)
            return function(*args)

        return counted

    originals = {name: getattr(module, name) for name in names}
    for name in names:  # the torch versions count, then the dispatchers wrap them
        setattr(module, name, counting("torch", name, originals[name]))
    kernels.install(module, "cpp")
    for name in names:
        setattr(module, name, counting("dispatch", name, getattr(module, name)))
    try:
        model = build_model(module)
        model(torch.randn(2, *module.INPUT_SHAPE)).sum().backward()
    finally:
        kernels.uninstall(module)
        for name in names:
            setattr(module, name, originals[name])
    assert set(calls["dispatch"]) == set(names)
    assert calls["torch"] == []


# --- the command line ---------------------------------------------------------------------------


def mnist_folder(shared):
    from conftest import SHARED

    return shared(SHARED / "data" / "mnist" / "train-images-idx3-ubyte.gz").parents[1]


@pytest.mark.parametrize(
    "choice, expected", [("cpp", "cpp"), ("auto", "engine"), ("engine", "engine")]
)
def test_training_on_a_cpu_takes_the_kernels(
    dagc, compile_to, shared, tmp_path, choice, expected
):
    path = compile_to("hermaphrodite", "ws", 0, nodes=6, channels=2)[1]
    out = tmp_path / "run"
    result = dagc(
        "train", path, "--kernels", choice, "--device", "cpu", "--iterations", 2,
        "--batch-size", 8, "--eval-every", 2, "--data-dir", mnist_folder(shared),
        "--out", out, "--quiet",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["kernels"] == expected
    # dagc eval computes with the same kernels, so it gives the summary's accuracy.
    result = dagc(
        "eval", out, "--json", "--device", "cpu", "--data-dir", mnist_folder(shared)
    )
    assert result.returncode == 0, result.stderr
    evaluated = json.loads(result.stdout)
    assert evaluated["kernels"] == expected
    assert evaluated["test_accuracy"] == summary["final_test_accuracy"]


def test_choosing_torch_after_cpp_puts_the_torch_functions_back(compile_to):
    from dagc.runtime.kernels import use_kernels
    from dagc.runtime.loading import load_generated

    module = load_generated(compile_to("male", channels=2)[1])
    cpu = torch.device("cpu")
    original = module.conv_batch_norm
    assert use_kernels("cpp", module, cpu, "net.py") == "cpp"
    assert module.conv_batch_norm is not original
    assert use_kernels("torch", module, cpu, "net.py") == "torch"
    assert module.conv_batch_norm is original


def test_cpp_kernels_need_the_generated_backward(dagc, clean_error, compile_to, shared):
    path = compile_to(
        "hermaphrodite", "ws", 0, nodes=6, channels=2, backward="autograd"
    )[1]
    result = dagc(
        "train", path, "--kernels", "cpp", "--device", "cpu",
        "--data-dir", mnist_folder(shared), "--out", path.parent / "autograd-run",
    )  # fmt: skip
    clean_error(
        result, "--kernels cpp needs a module compiled with --backward generated"
    )
