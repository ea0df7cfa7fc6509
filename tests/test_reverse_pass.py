"""The generated reverse pass: straight-line, equal to autograd through the reference
interpreter, one opaque op for torch.compile, and safe for any neuron name."""

from __future__ import annotations

import ast
import builtins
import keyword
import random
import warnings

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dagc.compiler.connectome import Edge
from dagc.compiler.dag import Dag
from dagc.compiler.plan import build_plan
from dagc.compiler.render import CompileOptions, render_module, template_names
from dagc.runtime.equivalence import (
    against_interpreter,
    output_and_gradients,
    randomise,
)
from dagc.runtime.loading import build_model, load_generated


def functions_of(source: str) -> dict[str, ast.FunctionDef]:
    tree = ast.parse(source)
    found = {f.name: f for f in tree.body if isinstance(f, ast.FunctionDef)}
    for cls in (c for c in tree.body if isinstance(c, ast.ClassDef)):
        for f in cls.body:
            if isinstance(f, ast.FunctionDef):
                found[f"{cls.name}.{f.name}"] = f
    return found


def loops_in(function: ast.FunctionDef) -> list[ast.AST]:
    return [
        n
        for n in ast.walk(function)
        if isinstance(n, (ast.For, ast.While, ast.comprehension))
    ]


def test_forward_and_reverse_pass_are_straight_line_code(compile_to):
    front, path = compile_to("hermaphrodite", channels=2)
    source = path.read_text()
    functions = functions_of(source)
    forward, backward = functions["dag_forward"], functions["dag_backward"]
    model_forward = functions["HermaphroditeNet.forward"]
    for function in (forward, backward, model_forward):
        assert loops_in(function) == []
    # One statement group per neuron, named after it: 282 node calls each way.
    calls = [
        n
        for n in ast.walk(backward)
        if isinstance(n, ast.Call) and getattr(n.func, "id", "") == "node"
    ]
    assert len(calls) == 282
    plan = front.plan
    aval = next(i for i, node in enumerate(plan.nodes) if node.name == "AVAL")
    consumers = [
        plan.nodes[post].name for pre, post in sorted(plan.edges) if pre == aval
    ]
    assert f"# AVAL -> {', '.join(consumers[:3])}," in source
    assert "AVAL_grad = node(" in source and "dots(\n        AVAL_grad" in source
    # Each neuron's output gradient is one gather over its consumers, not k adds.
    gathers = [
        n
        for n in ast.walk(backward)
        if isinstance(n, ast.Call) and getattr(n.func, "id", "") == "gather"
    ]
    outputs = 24
    assert len(gathers) == 282 - outputs


def deletions_by_node(function: ast.FunctionDef) -> dict[str, int]:
    """value -> index of the node whose statement group deletes it (the group of node i
    starts at the statement that calls `node(i, ...)`)."""
    current, deleted = None, {}
    for statement in function.body:
        for call in ast.walk(statement):
            if isinstance(call, ast.Call) and getattr(call.func, "id", "") == "node":
                current = call.args[0].value
        if isinstance(statement, ast.Delete):
            for target in statement.targets:
                for value in getattr(target, "elts", [target]):
                    assert value.id not in deleted, f"{value.id} deleted twice"
                    deleted[value.id] = current
    return deleted


def test_lifetimes_come_from_the_plan(compile_to):
    """Each value is deleted once, in the group of its last reader, computed here from the
    plan: forward, an activation dies at its highest-indexed consumer (outputs live on to
    the sink); reverse, a node's gradient dies at its lowest-indexed predecessor (the last
    to gather it) and an activation at its lowest-indexed consumer (the last to dot it)."""
    front, path = compile_to("hermaphrodite", channels=2)
    plan = front.plan
    functions = functions_of(path.read_text())
    names = {i: node.name for i, node in enumerate(plan.nodes)}
    consumers: dict[int, list[int]] = {}
    for pre, post in plan.edges:
        consumers.setdefault(pre, []).append(post)
    forward = {names[i]: max(c) for i, c in consumers.items()}
    reverse = {names[i]: min(c) for i, c in consumers.items()}
    reverse.update(
        {f"{node.name}_grad": min(node.preds) for node in plan.nodes if node.preds}
    )
    reverse["sink_grad"] = min(plan.outputs)
    assert deletions_by_node(functions["dag_forward"]) == forward
    assert deletions_by_node(functions["dag_backward"]) == reverse


def releases_by_node(function: ast.FunctionDef) -> dict[str, int]:
    """value -> index of the node whose statement group passes it to `node.release`."""
    current, released = None, {}
    for statement in function.body:
        for call in ast.walk(statement):
            if not isinstance(call, ast.Call):
                continue
            if getattr(call.func, "id", "") == "node":
                current = call.args[0].value
            elif getattr(call.func, "attr", "") == "release":
                for value in call.args:
                    assert value.id not in released, f"{value.id} released twice"
                    released[value.id] = current
    return released


def test_every_saved_activation_is_released_where_it_dies(compile_to):
    """Under torch.compile the op's saved tensors stay referenced until dag_backward
    returns, so the reverse pass empties each one's storage after its last use: every
    activation a consumer reads is released exactly in the group that deletes it, and no
    gradient (those die with their name) is."""
    front, path = compile_to("hermaphrodite", channels=2)
    backward = functions_of(path.read_text())["dag_backward"]
    read = {front.plan.nodes[pre].name for pre, _ in front.plan.edges}
    deleted = deletions_by_node(backward)
    assert releases_by_node(backward) == {name: deleted[name] for name in read}


def test_a_second_backward_through_one_graph_is_a_clear_error(compile_to):
    """The reverse pass frees what it saved as it goes, eagerly and compiled alike."""
    module = load_generated(compile_to("hermaphrodite", channels=2)[1])
    torch.manual_seed(0)
    model = build_model(module)
    x = torch.randn(3, 1, 28, 28)
    for runner in (model, torch.compile(model, fullgraph=True, backend="aot_eager")):
        loss = runner(x).sum()
        loss.backward(retain_graph=True)
        with pytest.raises(RuntimeError, match="second backward"):
            loss.backward()
    torch._dynamo.reset()


def test_channels_last_activations_come_back_unscrambled(compile_to):
    """The saved tensors leave the op flattened; channels-last activations (a channels-last
    source makes every conv and BatchNorm output channels-last) must come back through the
    reverse pass in the right order."""
    module = load_generated(compile_to("hermaphrodite", channels=2)[1])
    torch.manual_seed(0)
    model = build_model(module)
    source = torch.randn(3, 2, 14, 14).relu()
    results = []
    for layout in (torch.contiguous_format, torch.channels_last):
        leaf = source.contiguous(memory_format=layout).requires_grad_()
        parameters = [model.node_conv, model.node_bn_weight, model.node_bn_bias]
        out = module.connectome_dag(
            leaf, model.edge_weights(), *parameters, model.node_bn_mean.clone(),
            model.node_bn_var.clone(), True, 0.1, 1e-5,
        )  # fmt: skip
        grads = torch.autograd.grad((out * out).sum(), [leaf, *parameters])
        results.append((out, grads))
    (expected, expected_grads), (out, grads) = results
    for reference, value in zip((expected, *expected_grads), (out, *grads)):
        # float32, summed in another order: 1e-5 of the largest entry
        assert (reference - value).abs().max() <= 1e-5 * reference.abs().max()


def test_release_empties_a_cpu_tensor_storage(compile_to):
    module = load_generated(compile_to("hermaphrodite", channels=2)[1])
    tensor, other = torch.ones(4, 5), torch.ones(3)
    view = tensor.view(-1)
    module.NeuronBackward.release(view, other)
    assert (
        tensor.untyped_storage().nbytes() == 0 and other.untyped_storage().nbytes() == 0
    )


def compare_with_interpreter(module, train: bool, dtype, seed: int = 0) -> None:
    """Outputs, every gradient and the running statistics against autograd through the
    reference interpreter (dagc.runtime.equivalence): float64 within 1e-10 relative,
    float32 within 1e-5."""
    tolerance = 1e-10 if dtype == torch.float64 else 1e-5
    found = against_interpreter(module, train, dtype, seed=seed)
    assert "gradient edge_weight" in found and "buffer node_bn_var" in found
    too_far = {key: value for key, value in found.items() if not value < tolerance}
    assert not too_far, too_far


NETWORKS = [
    ("hermaphrodite", "constrained", 0),
    ("male", "constrained", 0),
    ("hermaphrodite", "random", 5),
    ("hermaphrodite", "ws", 1),
    ("male", "er", 3),
    ("male", "ba", 2),
]


@pytest.mark.slow  # full-network equivalence: the fast tier has the float32 and random DAGs
@pytest.mark.parametrize("spec, kind, seed", NETWORKS)
@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
def test_generated_backward_equals_the_interpreter_in_float64(
    compile_to, spec, kind, seed, train
):
    module = load_generated(compile_to(spec, kind, seed, channels=2)[1])
    assert module.BACKWARD == "generated"
    compare_with_interpreter(module, train, torch.float64, seed)


@pytest.mark.parametrize("edge_weights", ["sigmoid", "free", "dale"])
@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
def test_generated_backward_in_float32_and_every_edge_mode(
    compile_to, edge_weights, train
):
    path = compile_to("hermaphrodite", channels=3, edge_weights=edge_weights)[1]
    compare_with_interpreter(load_generated(path), train, torch.float32)


def random_dag(rng: random.Random, size: int, names: list[str]) -> Dag:
    """A random DAG over `names` in which node 0 feeds many nodes, some nodes feed only
    the sink, and some source-fed (input) nodes also feed other nodes."""
    inputs = max(1, size // 4)
    edges = []
    for post in range(inputs, size):
        preds = {rng.randrange(post)} | {0}
        preds |= {p for p in range(post) if rng.random() < 0.3}
        edges += [
            Edge(names[p], names[post], rng.choice([1.0, 2.0, 5.0])) for p in preds
        ]
    return Dag(
        name="random-test",
        kind="random",
        seed=0,
        nodes=tuple(names),
        types={
            name: "sensory" if i < inputs else "interneuron"
            for i, name in enumerate(names)
        },
        transmitters={
            name: "GABA" if i % 3 == 0 else "ACh" for i, name in enumerate(names)
        },
        edges=tuple(edges),
        layers=(),
        inputs=tuple(names[:inputs]),
    )


def compile_dag(dag: Dag, tmp_path, edge_weights="sigmoid", tag="net"):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        plan = build_plan(dag)
    header = {"command": "test", "source": "test", "sha256": "-"}
    if edge_weights == "dale":
        header["edge_signs"] = [
            -1 if plan.nodes[pre].transmitter == "GABA" else 1 for pre, _ in plan.edges
        ]
    options = CompileOptions(channels=2, edge_weights=edge_weights)
    path = tmp_path / f"{tag}.py"
    path.write_text(render_module(plan, options, header), encoding="utf-8")
    return plan, load_generated(path)


@settings(
    max_examples=12,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    seed=st.integers(0, 10_000),
    size=st.integers(2, 14),
    edge_weights=st.sampled_from(["sigmoid", "free", "dale"]),
    train=st.booleans(),
)
def test_random_small_dags_match_the_interpreter(
    tmp_path, seed, size, edge_weights, train
):
    rng = random.Random(seed)
    names = [f"N{i}" for i in range(size)]
    plan, module = compile_dag(
        random_dag(rng, size, names), tmp_path, edge_weights, f"net{seed}_{size}"
    )
    assert plan.inputs and plan.outputs
    compare_with_interpreter(module, train, torch.float64, seed)


def awkward_names(rng: random.Random, count: int) -> list[str]:
    """Cell names that are keywords, builtins, the template's own names, names that
    collide once made legal, and non-ASCII names."""
    template = sorted(template_names(CompileOptions(), _templates()))
    pools = [
        list(keyword.kwlist) + list(keyword.softkwlist),
        [name for name in dir(builtins) if not name.startswith("__")],
        template,
        ["AVA-L", "AVA L", "AVA_L", "AVA.L", "1AVA", "n_1AVA", "x", "w", "self"],
        ["ÄVAL", "神经元", "AVAL·R", "naïve", "µ1"],
    ]
    chosen: list[str] = []
    while len(chosen) < count:
        name = rng.choice(rng.choice(pools))
        if name not in chosen:
            chosen.append(name)
    return chosen


def _templates() -> str:
    from importlib.resources import files

    return str(files("dagc.templates"))


@settings(
    max_examples=10,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(seed=st.integers(0, 10_000), backward=st.sampled_from(["generated", "autograd"]))
def test_any_cell_names_give_a_module_that_runs(tmp_path, seed, backward):
    rng = random.Random(seed)
    names = awkward_names(rng, 10)
    dag = random_dag(rng, len(names), names)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        plan = build_plan(dag)
    header = {"command": "test", "source": "test", "sha256": "-"}
    path = tmp_path / f"names{seed}{backward}.py"
    options = CompileOptions(channels=2, backward=backward)
    path.write_text(render_module(plan, options, header), encoding="utf-8")
    model = build_model(load_generated(path))
    out = model(torch.randn(2, 1, 28, 28))
    out.sum().backward()
    assert out.shape == (2, 10) and model.edge_weight.grad is not None


def test_a_cell_named_after_a_template_global_trains(tmp_path):
    """Found by a user: a cell named weighted_relu shadowed the template's function."""
    names = ["weighted_relu", "gather", "dots", "node", "source", "AVAL", "F", "torch"]
    dag = random_dag(random.Random(0), len(names), names)
    for backward in ("generated", "autograd"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            plan = build_plan(dag)
        path = tmp_path / f"{backward}.py"
        options = CompileOptions(channels=2, backward=backward)
        path.write_text(
            render_module(
                plan, options, {"command": "-", "source": "-", "sha256": "-"}
            ),
            encoding="utf-8",
        )
        model = build_model(load_generated(path))
        optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
        x, y = torch.randn(4, 1, 28, 28), torch.tensor([0, 1, 2, 3])
        losses = []
        for _ in range(5):
            optimizer.zero_grad()
            loss = torch.nn.functional.nll_loss(model(x), y)
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
        assert losses[-1] < losses[0]


def test_two_networks_and_the_same_network_twice_share_one_process(
    tmp_path, compile_to
):
    herm = compile_to("hermaphrodite", channels=2)[1]
    male = compile_to("male", channels=2)[1]
    copy = tmp_path / "copy_of_hermaphrodite.py"
    copy.write_text(herm.read_text(), encoding="utf-8")  # another module, same ops
    modules = [load_generated(path) for path in (herm, male, copy)]
    assert modules[0].OPS != modules[1].OPS and modules[0].OPS == modules[2].OPS
    assert modules[0] is not modules[2]
    for module in modules:
        model = build_model(module)
        model(torch.randn(2, 1, 28, 28)).sum().backward()
        assert model.node_conv.grad.abs().sum() > 0


def test_inference_without_grad_saves_nothing_and_matches(compile_to):
    module = load_generated(compile_to("male", channels=2)[1])
    torch.manual_seed(0)
    model = build_model(module).eval()
    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        out = model(x)
    assert torch.equal(out, model(x).detach())
    source = torch.randn(2, 2, 14, 14)
    w = torch.rand(len(module.EDGES))
    args = (source, w, model.node_conv, model.node_bn_weight, model.node_bn_bias)
    stats = (model.node_bn_mean, model.node_bn_var)
    with torch.no_grad():
        results = module.dag_forward(*args, *stats, False, 1e-5, False)
    assert len(results) == 3  # the sink's input and two empty statistics: nothing saved


def test_custom_ops_have_consistent_fake_implementations(compile_to):
    """torch.library's own checks (schema, fake tensors, autograd registration)."""
    module = load_generated(
        compile_to("hermaphrodite", "ws", 0, nodes=12, channels=2)[1]
    )
    model = build_model(module)
    source = torch.randn(2, 2, 14, 14)
    w = torch.rand(len(module.EDGES))
    for training in (True, False):
        args = (
            source,
            w,
            model.node_conv.detach(),
            model.node_bn_weight.detach(),
            model.node_bn_bias.detach(),
            model.node_bn_mean,
            model.node_bn_var,
            training,
            1e-5,
            True,
        )
        torch.library.opcheck(
            module.dag_forward_op, args, test_utils=("test_schema", "test_faketensor")
        )


def test_torch_compile_sees_one_opaque_op_and_matches_eager(compile_to):
    """fullgraph=True traces the stem, the DAG op and the sink; aot_eager runs the
    functionalised graph (Inductor itself is exercised by the slow test below)."""
    module = load_generated(compile_to("hermaphrodite", channels=2)[1])
    torch.manual_seed(0)
    model = build_model(module)
    state = randomise(model, 1)
    model.load_state_dict(state)
    x = torch.randn(3, 1, 28, 28)
    expected, expected_grads = output_and_gradients(model, x)
    model.load_state_dict(state)
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    out, grads = output_and_gradients(model, x, compiled)
    torch._dynamo.reset()
    assert torch.allclose(expected, out, rtol=1e-5, atol=1e-6)
    for name, grad in expected_grads.items():
        assert torch.allclose(grad, grads[name], rtol=1e-4, atol=1e-6), name


@pytest.mark.slow
def test_inductor_compiles_the_full_network_quickly(compile_to):
    """Real torch.compile (Inductor, CPU, fullgraph) of all 282 nodes: the DAG is one op."""
    import time

    module = load_generated(compile_to("hermaphrodite", channels=2)[1])
    torch.manual_seed(0)
    model = build_model(module)
    x = torch.randn(4, 1, 28, 28)
    # Train mode: the output depends on the weights and the batch, not the running stats.
    expected, expected_grads = output_and_gradients(model, x)
    compiled = torch.compile(model, fullgraph=True)
    start = time.perf_counter()
    out, grads = output_and_gradients(model, x, compiled)
    elapsed = time.perf_counter() - start
    torch._dynamo.reset()
    assert torch.allclose(expected, out, rtol=1e-4, atol=1e-5)
    for name, grad in expected_grads.items():
        assert torch.allclose(grad, grads[name], rtol=1e-3, atol=1e-5), name
    assert elapsed < 600, f"compile took {elapsed:.0f} s"


def test_compile_options_pick_a_backward_and_refuse_bad_pairs(
    dagc, clean_error, tmp_path
):
    out = tmp_path / "net.py"
    result = dagc("compile", "--connectome", "male", "--channels", "2", "-o", out)
    assert result.returncode == 0 and "generated backward" in result.stderr
    assert 'BACKWARD = "generated"' in out.read_text()
    result = dagc("compile", "-c", "male", "--layout", "levels", "-o", out)
    assert (
        result.returncode == 0 and "levels layout, autograd backward" in result.stderr
    )
    result = dagc(
        "compile",
        "-c",
        "male",
        "--layout",
        "levels",
        "--backward",
        "generated",
        "-o",
        out,
    )
    clean_error(result, "--backward generated renders the flat layout")


def test_triton_kernels_on_a_cpu_are_one_clear_line(
    dagc, clean_error, compile_to, shared
):
    from conftest import SHARED

    data = shared(SHARED / "data" / "mnist" / "train-images-idx3-ubyte.gz").parents[1]
    path = compile_to("hermaphrodite", "ws", 0, nodes=6, channels=2)[1]
    result = dagc(
        "train", path, "--kernels", "triton", "--device", "cpu", "--data-dir", data,
        "--out", path.parent / "kernels-run",
    )  # fmt: skip
    clean_error(result, "--kernels triton needs a CUDA device")
