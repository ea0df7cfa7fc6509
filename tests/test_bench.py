"""`dagc bench` (a tiny smoke run: speed targets live in docs, not in tests), the layout
re-rendering it relies on, the step floor's arithmetic and the CUDA-graph options' errors.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from dagc.runtime.bench import BenchConfig, add_ratios, bench, format_table
from dagc.runtime.floor import step_floor, step_floor_counts
from dagc.runtime.loading import load_generated
from dagc.runtime.variants import render_layout

ROOT = Path(__file__).resolve().parents[1]
HERMAPHRODITE = ROOT / "generated" / "hermaphrodite_net.py"


def body(source: str) -> list[str]:
    """The file without its first lines (the regenerate command and the source's hash)."""
    return source.splitlines()[4:]


def test_rerendering_a_module_gives_back_the_same_file():
    module = load_generated(HERMAPHRODITE)
    assert body(render_layout(module, "flat")) == body(HERMAPHRODITE.read_text())


def test_rerendered_levels_layout_equals_compiling_with_levels(compile_to):
    module = load_generated(HERMAPHRODITE)
    _, compiled = compile_to("hermaphrodite", layout="levels")
    assert body(render_layout(module, "levels")) == body(compiled.read_text())


# A network small enough to count by hand: two sensory neurons, two interneurons, one motor
# neuron, five synapses, all forward (so the constrained DAG keeps every one of them).
TINY_NODES = (
    "name,type\nS1,sensory\nS2,sensory\nI1,interneuron\nI2,interneuron\nM,motor\n"
)
TINY_EDGES = "pre,post,weight\nS1,I1,1\nS2,I1,1\nS1,I2,1\nI1,M,1\nI2,M,1\n"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, compile_to):
    folder = tmp_path_factory.mktemp("tiny")
    (folder / "tiny.nodes.csv").write_text(TINY_NODES)
    (folder / "tiny.edges.csv").write_text(TINY_EDGES)
    return load_generated(compile_to(str(folder / "tiny.edges.csv"), channels=3)[1])


def test_floor_of_a_network_counted_by_hand(tiny):
    assert (len(tiny.NODES), len(tiny.EDGES)) == (5, 5)
    counts = step_floor_counts(tiny, channels=3, batch=2)
    # One activation: 2 images x 3 channels x 14 x 14 (28 / 2 after the stem) floats of 4 bytes.
    assert counts["activation_bytes"] == 4704
    # Passes per node, 18 + 4 per input edge: S1 18, S2 18, I1 26, I2 22, M 26.
    assert counts["activation_passes"] == 110
    assert counts["bytes"] == 517_440
    # FLOPs per activation element: 64 per node (3x3 conv forward and two backward, 10 for
    # BatchNorm and ReLU) and 6 per edge: 5 x 64 + 5 x 6 = 350, times 1,176 elements.
    assert counts["flops"] == 411_600


def test_floor_rounds_an_odd_input_up_after_the_stride_2_stem():
    odd = SimpleNamespace(INPUT_SHAPE=(1, 27, 27), NODES=("a",), EDGES=())
    # 27 -> 14 (stride 2, padding 1): 1 x 1 x 196 floats; one node with no input edge: 18.
    assert step_floor_counts(odd, channels=1, batch=1)["bytes"] == 4 * 196 * 18


def test_floor_time_is_the_slower_of_memory_and_arithmetic(tiny):
    memory_bound = step_floor(
        tiny, 3, 2, {"copy_bandwidth_bytes_per_s": 1e6, "fp32_matmul_flops_per_s": 1e12}
    )
    assert memory_bound["step_s"] == pytest.approx(0.51744)  # 517,440 B at 1 MB/s
    compute_bound = step_floor(
        tiny, 3, 2, {"copy_bandwidth_bytes_per_s": 1e12, "fp32_matmul_flops_per_s": 1e5}
    )
    assert compute_bound["step_s"] == pytest.approx(
        4.116
    )  # 411,600 FLOP at 0.1 MFLOP/s


def test_ratios_from_synthetic_timings():
    report = {
        "modes": {
            "interpreter": {"ok": True, "train_images_per_s": 40.0,
                            "infer_images_per_s": 100.0},
            "flat": {"ok": True, "train_images_per_s": 164.0,
                     "infer_images_per_s": 250.0},
            "levels": {"ok": True, "train_images_per_s": 90.0,
                       "infer_images_per_s": 420.0},
            "compile": {"ok": False, "error": "timed out after 300 s"},
        }
    }  # fmt: skip
    add_ratios(report)
    modes = report["modes"]
    assert modes["flat"]["train_vs_interpreter"] == pytest.approx(4.1)
    assert modes["levels"]["train_vs_interpreter"] == pytest.approx(2.25)
    assert modes["levels"]["infer_vs_interpreter"] == pytest.approx(4.2)
    assert modes["flat"]["infer_vs_interpreter"] == pytest.approx(2.5)
    assert "train_vs_interpreter" not in modes["compile"]
    assert report["best_train_mode"] == "flat"
    assert report["best_train_vs_interpreter"] == pytest.approx(4.1)


def test_no_ratios_without_a_working_interpreter():
    report = {
        "modes": {
            "interpreter": {"ok": False, "error": "exit 1: boom"},
            "flat": {"ok": True, "train_images_per_s": 164.0,
                     "infer_images_per_s": 250.0},
        }
    }  # fmt: skip
    add_ratios(report)
    assert "train_vs_interpreter" not in report["modes"]["flat"]
    assert "best_train_mode" not in report


@pytest.mark.slow
def test_bench_smoke_run_reports_every_mode_against_the_interpreter(
    compile_to, tmp_path
):
    _, model = compile_to("hermaphrodite", kind="er", seed=3, nodes=12, channels=2)
    out = tmp_path / "bench.json"
    config = BenchConfig(
        model=str(model),
        device="cpu",
        batch_size=4,
        steps=1,
        warmup=1,
        modes=("flat", "levels"),
        json_out=str(out),
        mode_timeout=300,
    )
    report = bench(config, echo=lambda line: None)
    saved = json.loads(out.read_text())
    assert list(saved["modes"]) == ["interpreter", "flat", "levels"]
    base = saved["modes"]["interpreter"]
    for result in saved["modes"].values():
        assert result["ok"], result
        assert result["train_images_per_s"] > 0 and result["infer_images_per_s"] > 0
        assert result["peak_memory_bytes"] > 0
        assert result["train_vs_interpreter"] == pytest.approx(
            result["train_images_per_s"] / base["train_images_per_s"]
        )
        assert result["step_vs_floor"] == pytest.approx(
            result["step_median_s"] / saved["floor"]["step_s"]
        )
    # 12 nodes at 2 channels, batch 4: 4 x 2 x 14 x 14 floats of 4 bytes per activation.
    assert saved["floor"]["activation_bytes"] == 6272
    # compile_to asks the Erdos-Renyi generator for 12 nodes and twice as many edges.
    assert saved["network"] == {
        "connectome": "er12", "dag": "er", "nodes": 12, "edges": 24,
        "levels": saved["network"]["levels"], "channels": 2,
    }  # fmt: skip
    assert saved["machine"]["torch"] and saved["machine_measured"]
    table = format_table(report)
    assert "interpreter" in table and "levels" in table and "floor:" in table


@pytest.mark.parametrize(
    "args, needle",
    [
        (["--modes", "warp-drive"], "unknown mode(s) warp-drive"),
        # asked for by name, a mode the device cannot run is refused, not dropped
        (["--modes", "flat,flat+cudagraph"], "mode(s) flat+cudagraph need CUDA"),
        (["--steps", "0"], "--steps"),
    ],
)
def test_bench_bad_options_are_one_line(args, needle, dagc, clean_error):
    clean_error(dagc("bench", HERMAPHRODITE, "--device", "cpu", *args), needle)


def test_bench_of_a_file_that_is_not_a_model_is_one_line(tmp_path, dagc, clean_error):
    not_a_model = tmp_path / "notes.txt"
    not_a_model.write_text("hello\n")
    clean_error(dagc("bench", not_a_model, "--device", "cpu"), str(not_a_model))


def test_cuda_graphs_on_the_cpu_is_one_line(tmp_path, dagc, clean_error):
    result = dagc(
        "train", HERMAPHRODITE, "--device", "cpu", "--cuda-graphs",
        "--out", tmp_path / "run", "--data-dir", tmp_path,
    )  # fmt: skip
    clean_error(result, "--cuda-graphs")


def test_every_default_mode_exists():
    from dagc.runtime.bench import DEFAULT_MODES, MODES, resolve_modes

    for device, names in DEFAULT_MODES.items():
        assert set(names) <= set(MODES), device
        assert resolve_modes((), device)[0].name == "interpreter"
    assert all(not m.cuda_graph for m in resolve_modes(("all",), "cpu"))
