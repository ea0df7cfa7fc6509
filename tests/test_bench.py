"""`dagc bench` (a tiny smoke run: speed targets live in docs, not in tests), the layout
re-rendering it relies on, the step floor's arithmetic and the CUDA-graph options' errors.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_bad_input import assert_clean_error, dagc

from dagc.runtime.bench import BenchConfig, bench, format_table, step_floor_counts
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


def test_floor_counts_every_node_and_edge():
    module = load_generated(HERMAPHRODITE)
    counts = step_floor_counts(module, channels=78, batch=100)
    assert counts["activation_bytes"] == 4 * 100 * 78 * 14 * 14  # 6.1 MB
    assert counts["activation_passes"] == 18 * 282 + 4 * 2260
    assert counts["bytes"] == counts["activation_bytes"] * counts["activation_passes"]


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
    for _name, result in saved["modes"].items():
        assert result["ok"], result
        assert result["train_images_per_s"] > 0 and result["infer_images_per_s"] > 0
        assert result["peak_memory_bytes"] > 0
    assert saved["modes"]["interpreter"]["train_vs_interpreter"] == 1.0
    assert saved["floor"]["activation_passes"] == 18 * 12 + 4 * len(
        load_generated(model).EDGES
    )
    assert saved["machine"]["torch"] and saved["machine_measured"]
    table = format_table(report)
    assert "interpreter" in table and "levels" in table and "floor:" in table


@pytest.mark.parametrize(
    "args, needle",
    [
        (["--modes", "warp-drive"], "unknown mode"),
        (["--steps", "0"], "--steps"),
    ],
)
def test_bench_bad_options_are_one_line(args, needle):
    assert_clean_error(dagc("bench", HERMAPHRODITE, "--device", "cpu", *args), needle)


def test_bench_of_a_file_that_is_not_a_model_is_one_line():
    assert_clean_error(dagc("bench", "/etc/hostname", "--device", "cpu"), "hostname")


def test_cuda_graphs_on_the_cpu_is_one_line(tmp_path):
    result = dagc(
        "train", HERMAPHRODITE, "--device", "cpu", "--cuda-graphs",
        "--out", tmp_path / "run", "--data-dir", tmp_path,
    )  # fmt: skip
    assert_clean_error(result, "--cuda-graphs")


def test_every_default_mode_exists():
    from dagc.runtime.bench import DEFAULT_MODES, MODES, resolve_modes

    for device, names in DEFAULT_MODES.items():
        assert set(names) <= set(MODES), device
        assert resolve_modes((), device)[0].name == "interpreter"
    assert all(not m.cuda_graph for m in resolve_modes(("all",), "cpu"))
