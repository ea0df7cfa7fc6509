"""The Triton kernels of dagc.runtime.kernels.triton against the pure-torch primitives.

Runs under Triton's CPU interpreter (`TRITON_INTERPRET=1 python -m pytest -q -k triton`) on
tiny shapes, or on CUDA when a GPU is present; otherwise the module skips (the interpreter has
to be chosen before triton is imported, so this file does not set it for the whole session).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import types

import pytest
import torch

INTERPRET = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")
if not INTERPRET and not torch.cuda.is_available():
    pytest.skip(
        "Triton kernels need CUDA or TRITON_INTERPRET=1 (run: TRITON_INTERPRET=1 python -m pytest -q -k triton)",
        allow_module_level=True,
    )
pytest.importorskip("triton")

from dagc.runtime import kernels as dispatch  # noqa: E402
from dagc.runtime.kernels import triton as kernels  # noqa: E402

DEVICE = torch.device("cpu" if INTERPRET else "cuda")
SHAPE = (2, 3, 6, 6)  # batch 2, 3 channels: 216 elements (not a multiple of any block)
needs_cuda = pytest.mark.skipif(
    INTERPRET or not torch.cuda.is_available(),
    reason="needs CUDA (not the interpreter)",
)


# --- pure-torch references, as the generated module writes them ----------------------------


def torch_weighted_relu(w, *inputs):
    out = inputs[0] * w[0]
    for j in range(1, len(inputs)):
        out.addcmul_(inputs[j], w[j])
    return out.relu_()


def torch_gather(w, *grads):
    out = grads[0] * w[0]
    for j in range(1, len(grads)):
        out.addcmul_(grads[j], w[j])
    return out


def torch_dots(h, *inputs):
    return torch.stack([torch.dot(h.flatten(), x.flatten()) for x in inputs])


def exact_sum(w, inputs):
    """float64 sum_j w[j] * inputs[j] of the stored values."""
    return sum(float(w[j]) * x.double() for j, x in enumerate(inputs))


def exact_dots(h, inputs):
    return torch.stack([(h.double() * x.double()).sum() for x in inputs])


def make_inputs(k, dtype=torch.float32, shape=SHAPE, offset=0, seed=0):
    """k tensors of `shape`; with offset > 0 they are views into one buffer, `offset`
    elements past 16-byte alignment (the kernels' unaligned variant)."""
    g = torch.Generator().manual_seed(seed)
    n = torch.Size(shape).numel()
    buf = torch.randn(k * n + offset, generator=g).to(dtype).to(DEVICE)
    return [buf[offset + j * n : offset + (j + 1) * n].view(shape) for j in range(k)]


def make_w(k, strided=False, seed=1):
    """A float32 weight vector of length k that is a view of a larger tensor."""
    g = torch.Generator().manual_seed(seed)
    big = torch.randn(3 * k + 5, generator=g).to(DEVICE)
    return big[3 : 3 + 2 * k : 2] if strided else big[5 : 5 + k]


@pytest.fixture
def small_blocks(monkeypatch):
    """Blocks far below the inputs' size: many programs, masked tails, a multi-step reduce."""
    for key, value in {"wsum_block": 64, "dots_block": 32, "reduce_block": 2}.items():
        monkeypatch.setitem(kernels.CONFIG, key, value)


KS = [
    1,
    2,
    5,
    37,
]  # 37: three table fills (16 slots each), a tail after the unrolled fours


# --- float32: tight agreement with the torch primitives ----------------------------------


@pytest.mark.parametrize("k", KS)
@pytest.mark.parametrize("strided", [False, True])
def test_triton_weighted_relu_float32(k, strided):
    xs, w = make_inputs(k), make_w(k, strided)
    out = kernels.weighted_relu(w, *xs)
    assert out.shape == SHAPE and out.dtype == torch.float32 and out.device == DEVICE
    torch.testing.assert_close(out, torch_weighted_relu(w, *xs), rtol=1e-5, atol=1e-6)
    assert (out >= 0).all() and (out == 0).any()


@pytest.mark.parametrize("k", KS)
def test_triton_gather_float32(k):
    xs, w = make_inputs(k), make_w(k, strided=True)
    out = kernels.gather(w, *xs)
    torch.testing.assert_close(out, torch_gather(w, *xs), rtol=1e-5, atol=1e-6)
    assert (out < 0).any()  # no ReLU


@pytest.mark.parametrize("k", KS)
def test_triton_dots_float32(k):
    xs = make_inputs(k)
    h = make_inputs(1, seed=7)[0]
    d = kernels.dots(h, *xs)
    assert d.shape == (k,) and d.dtype == torch.float32
    torch.testing.assert_close(d, torch_dots(h, *xs), rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(d.double(), exact_dots(h, xs), rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("k", [1, 5, 37])
def test_triton_relu_mask_dots_float32(k):
    xs = make_inputs(k)
    gp, p = make_inputs(2, seed=9)
    h, d = kernels.relu_mask_dots(gp, p, *xs)
    h_ref, d_ref = kernels.reference_relu_mask_dots(gp, p, *xs)
    assert torch.equal(h, h_ref) and (h == 0).any()
    torch.testing.assert_close(d, d_ref, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(d, torch_dots(h_ref, *xs), rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("k", [1, 6, 37])
def test_triton_many_blocks_and_tails(small_blocks, k):
    xs, w = make_inputs(k, shape=(2, 2, 7, 7)), make_w(k, strided=True)  # 196 elements
    h, p = make_inputs(2, shape=(2, 2, 7, 7), seed=3)
    torch.testing.assert_close(
        kernels.weighted_relu(w, *xs), torch_weighted_relu(w, *xs), rtol=1e-5, atol=1e-6
    )
    torch.testing.assert_close(
        kernels.gather(w, *xs), torch_gather(w, *xs), rtol=1e-5, atol=1e-6
    )
    torch.testing.assert_close(
        kernels.dots(h, *xs), torch_dots(h, *xs), rtol=1e-5, atol=1e-4
    )
    hm, d = kernels.relu_mask_dots(h, p, *xs)
    h_ref, d_ref = kernels.reference_relu_mask_dots(h, p, *xs)
    assert torch.equal(hm, h_ref)
    torch.testing.assert_close(d, d_ref, rtol=1e-5, atol=1e-4)


def test_triton_unaligned_views(small_blocks):
    """Inputs at an address 4 bytes past alignment take the variant without alignment hints."""
    k = 5
    xs, w = make_inputs(k, offset=1), make_w(k)
    assert any(x.data_ptr() % 16 for x in xs)
    torch.testing.assert_close(
        kernels.weighted_relu(w, *xs), torch_weighted_relu(w, *xs), rtol=1e-5, atol=1e-6
    )
    torch.testing.assert_close(
        kernels.dots(xs[0], *xs), torch_dots(xs[0], *xs), rtol=1e-5, atol=1e-4
    )
    assert any("unaligned" in key for key in kernels.compile_seconds)


def test_triton_dots_deterministic(small_blocks):
    xs = make_inputs(6, shape=(2, 4, 7, 7))  # 13 blocks of 32, reduced 2 at a time
    h = make_inputs(1, shape=(2, 4, 7, 7), seed=5)[0]
    first = kernels.dots(h, *xs)
    for _ in range(2):
        assert torch.equal(kernels.dots(h, *xs), first)


# --- bfloat16 storage, float32 accumulation ------------------------------------------------


@pytest.mark.parametrize("k", [1, 5, 37])
def test_triton_bf16_storage(k):
    xs, w = make_inputs(k, dtype=torch.bfloat16), make_w(k, strided=True)
    h, p = make_inputs(2, dtype=torch.bfloat16, seed=4)
    out = kernels.weighted_relu(w, *xs)
    grad = kernels.gather(w, *xs)
    assert out.dtype == grad.dtype == torch.bfloat16
    exact = exact_sum(w, xs)
    # float32 accumulation then one rounding to bf16: within bf16's half ulp (2^-9 relative)
    torch.testing.assert_close(out.double(), exact.relu(), rtol=2**-8, atol=1e-5)
    torch.testing.assert_close(grad.double(), exact, rtol=2**-8, atol=1e-5)
    # one product: the kernel rounds to nearest even exactly as torch does
    assert torch.equal(kernels.gather(w[:1], xs[0]), (xs[0].float() * w[0]).bfloat16())
    d = kernels.dots(h, *xs)
    assert d.dtype == torch.float32
    torch.testing.assert_close(d.double(), exact_dots(h, xs), rtol=1e-5, atol=1e-4)
    hm, dm = kernels.relu_mask_dots(h, p, *xs)
    assert hm.dtype == torch.bfloat16
    assert torch.equal(hm, torch.where(p > 0, h, torch.zeros_like(h)))
    torch.testing.assert_close(dm.double(), exact_dots(hm, xs), rtol=1e-5, atol=1e-4)
    # and loosely against the float32 primitives fed the float32 originals
    xs32 = [x.float() for x in xs]
    torch.testing.assert_close(
        out.float(), torch_weighted_relu(w, *xs32), rtol=2e-2, atol=2e-2
    )


def test_triton_bf16_accumulates_in_float32():
    """256 + 32 x 1.0: a bf16 accumulator stays at 256 (257 rounds back to 256); float32
    gives 288, which bf16 stores exactly. The same for a 256-element dot product."""
    shape = (2, 2, 8, 8)
    k = 33
    xs = [torch.ones(shape, dtype=torch.bfloat16, device=DEVICE) for _ in range(k)]
    xs[0] = xs[0] * 256
    w = torch.ones(k, device=DEVICE)
    bf16_acc = torch_gather(w.bfloat16(), *xs)
    assert (bf16_acc == 256).all()  # what bf16 accumulation does
    assert (kernels.gather(w, *xs) == 288).all()
    assert (kernels.weighted_relu(w, *xs) == 288).all()
    x = torch.ones(shape, dtype=torch.bfloat16, device=DEVICE)
    x.view(-1)[0] = 256
    h = torch.ones_like(x)
    assert torch.dot(h.flatten(), x.flatten()).item() != 511  # bf16 dot, for contrast
    assert kernels.dots(h, x, h).tolist() == [511.0, 256.0]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_triton_relu_keeps_nan_and_inf(dtype):
    """A diverging run stays visible: NaN and inf pass the ReLU as in torch.relu."""
    x = make_inputs(1, dtype=dtype)[0]
    x.view(-1)[:3] = torch.tensor(
        [float("nan"), float("inf"), -float("inf")], dtype=dtype
    )
    w = torch.ones(1, device=DEVICE)
    out = kernels.weighted_relu(w, x)
    torch.testing.assert_close(out, torch.relu(x), equal_nan=True, rtol=0, atol=0)


# --- install() into a generated-like module ---------------------------------------------


def fake_generated_module(calls):
    module = types.ModuleType("fake_generated_net")

    def weighted_relu(w, *inputs):
        calls.append("weighted_relu")
        return torch_weighted_relu(w, *inputs)

    def gather(w, *grads):
        calls.append("gather")
        return torch_gather(w, *grads)

    def dots(h, *inputs):
        calls.append("dots")
        return torch_dots(h, *inputs)

    def relu_mask_dots(gp, p, *inputs):
        calls.append("relu_mask_dots")
        return kernels.reference_relu_mask_dots(gp, p, *inputs)

    module.weighted_relu, module.gather, module.dots = weighted_relu, gather, dots
    module.relu_mask_dots = relu_mask_dots
    return module


def test_triton_install_dispatch_and_fallback():
    calls = []
    module = fake_generated_module(calls)
    originals = (module.weighted_relu, module.gather, module.dots)
    dispatch.install(module, "triton", force=True)
    dispatch.install(module, "triton", force=True)  # twice: still wraps the originals
    assert module.weighted_relu.__wrapped__ is originals[0]
    xs, w = make_inputs(3), make_w(3, strided=True)
    torch.testing.assert_close(
        module.weighted_relu(w, *xs), torch_weighted_relu(w, *xs)
    )
    torch.testing.assert_close(module.gather(w, *xs), torch_gather(w, *xs))
    torch.testing.assert_close(
        module.dots(xs[0], *xs), torch_dots(xs[0], *xs), rtol=1e-5, atol=1e-4
    )
    h, d = module.relu_mask_dots(xs[0], xs[1], *xs)
    h_ref, d_ref = kernels.reference_relu_mask_dots(xs[0], xs[1], *xs)
    assert torch.equal(h, h_ref)
    torch.testing.assert_close(d, d_ref, rtol=1e-5, atol=1e-4)
    assert calls == []  # all four took the Triton path
    # fallbacks: float64, non-contiguous inputs
    module.weighted_relu(w.double(), *[x.double() for x in xs])
    module.gather(w, xs[0].transpose(2, 3), xs[1], xs[2])
    module.dots(xs[0].transpose(2, 3), xs[1].transpose(2, 3))
    assert calls == ["weighted_relu", "gather", "dots"]
    # tensors that need autograd go to torch while grad mode is on, to Triton under no_grad
    calls.clear()
    wg = w.clone().requires_grad_()
    assert module.gather(wg, *xs).requires_grad
    with torch.no_grad():
        module.gather(wg, *xs)
    assert calls == ["gather"]
    dispatch.uninstall(module)
    assert (module.weighted_relu, module.gather, module.dots) == originals
    with pytest.raises(AttributeError, match="defines no gather, dots"):
        dispatch.install(
            types.SimpleNamespace(__name__="old_net", weighted_relu=len), "triton"
        )


def test_triton_pointer_table_cache():
    kernels.clear_table_cache()
    xs = make_inputs(20)
    table = kernels._pointer_table(xs)
    assert table.dtype == torch.int64 and table.numel() == 32  # two fills of 16 slots
    assert table[:20].tolist() == [x.data_ptr() for x in xs]
    assert kernels._pointer_table(xs) is table  # eager calls reuse it
    assert kernels._pointer_table(xs[::-1])[:20].tolist() == [
        x.data_ptr() for x in xs[::-1]
    ]
    kernels.clear_table_cache()
    assert kernels._pointer_table(xs) is not table


@pytest.mark.skipif(
    not INTERPRET, reason="CPU tensors reach Triton only under the interpreter"
)
def test_triton_install_cpu_needs_force():
    calls = []
    module = dispatch.install(fake_generated_module(calls), "triton")
    xs, w = make_inputs(2), make_w(2)
    module.weighted_relu(w, *xs)
    assert calls == ["weighted_relu"]


def test_triton_available_is_a_bool():
    assert kernels.available() is torch.cuda.is_available()
    assert kernels.interpreting() is INTERPRET


# --- compiled for a GPU without one ---------------------------------------------------------


def test_triton_sm90_loads_are_vectorized():
    """Compiled for an H100/H200 (sm_90) in a process without the interpreter: table inputs
    are read with 16-byte vector loads (the alignment hint reaches the compiler); the only
    scalar loads are the wsum kernel's weights (one per unrolled input, 4 + 1 tail)."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    code = "import json; from dagc.runtime.kernels.triton_ptx import ptx_report; print(json.dumps(ptx_report(90)))"
    run = subprocess.run(
        [sys.executable, "-c", code],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    if run.returncode and any(
        s in run.stderr for s in ("ImportError", "ptxas", "GPUTarget")
    ):
        pytest.skip(f"this Triton cannot compile for sm_90 here: {run.stderr[-300:]}")
    assert run.returncode == 0, run.stderr[-2000:]
    report = json.loads(run.stdout.strip().splitlines()[-1])
    assert {"fill_table", "dots_reduce"} <= report.keys()
    for dtype in ("fp32", "bf16"):
        assert report[f"wsum[{dtype}]"]["scalar_loads"] == 5, report
        assert report[f"wsum[{dtype}]"]["vector_loads"] > 0, report
        assert report[f"relu_mask_dots[{dtype}]"]["scalar_loads"] == 0, report
        assert report[f"relu_mask_dots[{dtype}]"]["vector_loads"] > 0, report


# --- CUDA only -----------------------------------------------------------------------------


@needs_cuda
def test_triton_cuda_graph_capture():
    """The table fill and the kernels are plain launches: a CUDA graph captures and replays them."""
    xs, w = make_inputs(5), make_w(5, strided=True)
    h = make_inputs(1, seed=2)[0]
    kernels.weighted_relu(w, *xs), kernels.dots(h, *xs)  # compile outside the capture
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = kernels.weighted_relu(w, *xs)
        d = kernels.dots(h, *xs)
    for x in xs:
        x.normal_()
    graph.replay()
    torch.cuda.synchronize()
    torch.testing.assert_close(out, torch_weighted_relu(w, *xs), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(d, torch_dots(h, *xs), rtol=1e-5, atol=1e-4)


@needs_cuda
def test_triton_no_recompile_per_k():
    caches = getattr(kernels._wsum_kernel, "device_caches", None)
    if caches is None:
        pytest.skip("this Triton keeps its kernel cache elsewhere")
    kernels.gather(make_w(1), *make_inputs(1))
    compiled = caches[torch.cuda.current_device()][0]
    before = len(compiled)
    for k in (2, 3, 7, 16, 17, 40):
        kernels.gather(make_w(k), *make_inputs(k))
    assert len(compiled) == before


# --- the kernels inside a generated module ---------------------------------------------------


def test_triton_installed_in_a_generated_module_matches_torch(compile_to):
    """A small generated network (generated reverse pass) with the kernels installed gives
    the outputs, gradients and running statistics of its own pure-torch primitives."""
    from dagc.runtime.loading import build_model, load_generated

    path = compile_to("hermaphrodite", "ws", 0, nodes=8, channels=2)[1]
    module = load_generated(path)
    assert module.BACKWARD == "generated"
    torch.manual_seed(0)
    x = torch.randn(2, 1, 28, 28)
    results = []
    for installed in (False, True):
        torch.manual_seed(0)  # the same initial weights both times
        model = build_model(module)
        with torch.no_grad():
            model.edge_weight.normal_(0, 1, generator=torch.Generator().manual_seed(1))
        if installed:
            dispatch.install(module, "triton", force=True)
        try:
            out = model(x)
            (out * torch.linspace(-1, 1, 10)).sum().backward()
        finally:
            dispatch.uninstall(module)
        grads = {n: p.grad.clone() for n, p in model.named_parameters()}
        results.append((out.detach(), grads, model.node_bn_mean.clone()))
    (out0, grads0, mean0), (out1, grads1, mean1) = results
    assert torch.allclose(out0, out1, rtol=1e-5, atol=1e-6)
    assert torch.allclose(mean0, mean1, rtol=1e-5, atol=1e-7)
    # stem_bn.weight's gradient is zero in exact arithmetic (every path from it meets a
    # train-mode BatchNorm): its rounding noise is measured against the largest gradient.
    largest = max(grad.abs().max() for grad in grads0.values())
    for name, grad in grads0.items():
        floor = largest if name == "stem_bn.weight" else 1e-12
        scale = grad.abs().max().clamp_min(floor)
        assert ((grad - grads1[name]).abs().max() / scale).item() < 1e-4, name
