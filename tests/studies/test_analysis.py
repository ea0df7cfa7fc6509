"""`dagc lesion` and `dagc analyze`: silencing, the lesion scan, the synapse statistics."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import SHARED, require_shared

DATA = SHARED / "data"


@pytest.fixture(scope="module")
def tiny_run(compile_to, tmp_path_factory, dagc_process):
    """A 12-node random graph at 4 channels (flat layout), trained to about 40 % (seconds)."""
    require_shared(DATA / "mnist" / "train-images-idx3-ubyte.gz")
    model = compile_to("hermaphrodite", "ws", 0, nodes=12, channels=4)[1]
    out = tmp_path_factory.mktemp("lesion") / "run"
    result = dagc_process(
        "train", model, "--dataset", "mnist", "--data-dir", DATA, "--iterations", 300,
        "--eval-every", 300, "--batch-size", 50, "--lr", 0.004, "--out", out, "--quiet", "--device", "cpu",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return out


@pytest.fixture(scope="module")
def loaded(tiny_run):
    from dagc.runtime.studies.lesion import load_run

    return load_run(tiny_run, None, "cpu")


@pytest.fixture(scope="module")
def test_set():
    from dagc.runtime.data import load_split

    return load_split("mnist", False, DATA)


@pytest.mark.slow
def test_silencing_nothing_reproduces_dagc_eval(
    tiny_run, loaded, test_set, dagc_process
):
    from dagc.runtime.studies.lesion import accuracy_on, silenced
    from dagc.runtime.studies.scan import lesion_scan

    result = dagc_process(
        "eval", tiny_run, "--data-dir", DATA, "--json", "--device", "cpu"
    )
    assert result.returncode == 0, result.stderr
    expected = json.loads(result.stdout)
    images, labels = test_set
    with silenced(loaded.net, []):
        mine = accuracy_on(loaded, images, labels)
    assert mine["accuracy"] == expected["test_accuracy"]
    assert dict(zip(loaded.info.class_names, mine["per_class"])) == pytest.approx(
        expected["per_class_accuracy"], abs=0
    )
    # The fast lesion scan's intact network is the same network, to the image.
    intact, _ = lesion_scan(loaded, images, labels, batch=1000, quiet=True)
    assert intact["fast_scan"]
    assert intact["accuracy"] == expected["test_accuracy"]
    # ...and training taught it something, or none of this would mean much.
    assert expected["test_accuracy"] > 0.3


def test_silencing_every_output_neuron_gives_a_constant_guess(loaded, test_set):
    from dagc.runtime.studies.lesion import accuracy_on, silenced

    images, labels = test_set
    module = loaded.module
    with silenced(loaded.net, module.OUTPUT_NODES):
        result = accuracy_on(loaded, images, labels)
    predicted = result["predicted"]
    assert (predicted == predicted[0]).all()
    frequency = (labels == predicted[0]).double().mean().item()
    assert result["accuracy"] == pytest.approx(frequency, abs=1e-12)
    assert result["accuracy"] < 0.2


def test_silencing_restores_the_network(loaded, test_set):
    from dagc.runtime.studies.lesion import silenced

    before = {k: v.clone() for k, v in loaded.net.state_dict().items()}
    with silenced(loaded.net, [0, 3, 5]):
        assert loaded.net.node_bn_weight[3].abs().sum() == 0
        assert loaded.net.node_bn_bias[5].abs().sum() == 0
    after = loaded.net.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


@pytest.mark.slow
def test_lesion_command_output(tiny_run, loaded, dagc_process):
    names = [loaded.module.NODES[i] for i in loaded.module.OUTPUT_NODES]
    result = dagc_process(
        "lesion", tiny_run, "--neurons", ",".join(n.lower() for n in names),
        "--data-dir", DATA, "--device", "cpu", "--json",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["silenced"] == sorted(names, key=loaded.module.NODES.index)
    assert report["silenced_outputs"] == report["output_nodes"] == len(names)
    assert report["lesioned"]["accuracy"] < report["intact"]["accuracy"]
    # Exactly one class is always guessed: 100 % for it, 0 % for every other one.
    assert sorted(report["lesioned"]["per_class"].values())[-2:] == [0.0, 1.0]
    text = dagc_process(
        "lesion", tiny_run, "--types", "other", "--data-dir", DATA, "--subset", 500
    )
    assert text.returncode == 0, text.stderr
    assert "silenced 12 neuron(s) (12 other)" in text.stdout
    assert "500 of 10000 images (seed 0)" in text.stdout
    assert text.stdout.splitlines()[3].startswith("all")


@pytest.mark.parametrize(
    "args, message",
    [
        (["--neurons", "n01,AVAX"], "no neuron 'AVAX' in this network"),
        (["--neurons", "n1"], "; close: n11, n10, n01"),
        (["--types", "inter"], "no neuron type 'inter'"),
        ([], "name the neurons to silence"),
    ],
)
def test_lesion_mistakes_are_one_line(tiny_run, args, message, dagc_process):
    result = dagc_process("lesion", tiny_run, *args, "--data-dir", DATA)
    assert result.returncode == 2
    assert message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert "Traceback" not in result.stderr


def test_lesion_of_a_folder_without_a_run(tmp_path, dagc_process):
    result = dagc_process("lesion", tmp_path, "--neurons", "AVAL")
    assert result.returncode == 2 and "no checkpoint" in result.stderr


def test_the_fast_scan_is_the_full_forward_pass(compile_to):
    """Recomputing only a neuron's descendants gives the full pass's output (hermaphrodite)."""
    from dagc.runtime.loading import build_model, load_generated
    from dagc.runtime.studies.lesion import silenced
    from dagc.runtime.studies.scan import IncrementalForward

    module = load_generated(compile_to("hermaphrodite", channels=2)[1])
    torch.manual_seed(0)
    net = build_model(module).eval()
    with torch.no_grad():  # BatchNorm statistics and weights that are not the defaults
        net.node_bn_weight.uniform_(0.5, 1.5)
        net.node_bn_bias.uniform_(-0.2, 0.2)
        net.node_bn_mean.uniform_(-0.1, 0.1)
        net.edge_weight.normal_()
    x = torch.randn(4, 1, 28, 28)
    forward = IncrementalForward(net, module)
    chosen = [
        0,
        40,
        module.NODES.index("AVAL"),
        module.OUTPUT_NODES[0],
        len(module.NODES) - 1,
    ]
    with torch.inference_mode():
        assert forward.matches(x)
        cache, intact = forward.intact(x)
        changed = 0
        for i in chosen:
            fast = forward.silenced(cache, i)
            with silenced(net, [i]):
                full = net(x)
            torch.testing.assert_close(fast, full, rtol=1e-5, atol=1e-6)
            changed += not torch.equal(fast, intact)
    assert changed == len(chosen)


def test_the_ranking_is_deterministic(loaded, test_set):
    from dagc.runtime.studies.lesion import test_subset
    from dagc.runtime.studies.scan import lesion_scan

    images, labels = test_set
    chosen = test_subset(labels, 300, seed=5)
    assert torch.equal(chosen, test_subset(labels, 300, seed=5))
    assert not torch.equal(chosen, test_subset(labels, 300, seed=6))
    assert len(set(chosen.tolist())) == 300
    first = lesion_scan(loaded, images[chosen], labels[chosen], quiet=True)[1]
    again = lesion_scan(loaded, images[chosen], labels[chosen], quiet=True)[1]
    assert first == again
    assert [row["rank"] for row in first] == list(range(1, len(first) + 1))
    drops = [row["drop"] for row in first]
    assert drops == sorted(drops, reverse=True)
    # Silencing every output node alone must cost something on a network that learned.
    assert max(drops) > 0


def test_spearman_with_a_permutation_p_value():
    from dagc.runtime.studies.statistics import spearman_permutation

    rng = np.random.default_rng(0)
    x = rng.integers(1, 30, 400).astype(float)
    same = spearman_permutation(x, np.log(x) + 1e-9 * rng.random(400), 999, seed=1)
    assert same["rho"] > 0.99 and same["p"] == pytest.approx(1 / 1000)
    noise = spearman_permutation(x, rng.random(400), 999, seed=1)
    assert abs(noise["rho"]) < 0.2 and noise["p"] > 0.01
    y = rng.random(400)
    assert spearman_permutation(x, y, 999, 7) == spearman_permutation(x, y, 999, 7)
    negative = spearman_permutation(x, -x, 999, seed=1)
    assert negative["rho"] == pytest.approx(-1.0)
    assert spearman_permutation(x, np.ones(400), 99, 1)["rho"] is None


def test_dale_weights_split_by_sign(compile_to):
    from dagc.runtime.data import dataset_info
    from dagc.runtime.loading import build_model, load_generated
    from dagc.runtime.studies.lesion import LoadedRun
    from dagc.runtime.studies.statistics import synapse_analysis

    module = load_generated(
        compile_to("hermaphrodite", channels=2, edge_weights="dale")[1]
    )
    net = build_model(module)
    signs = torch.tensor(module.EDGE_SIGNS, dtype=torch.float32)
    with torch.no_grad():  # inhibitory synapses learned large, excitatory ones small
        net.edge_weight.copy_(torch.where(signs < 0, 2.0, -2.0))
    run = LoadedRun(
        module, net, Path("w"), Path("m"), "mnist", dataset_info("mnist"), "cpu"
    )
    result = synapse_analysis(run, permutations=99, seed=0)
    dale = result["dale"]
    assert dale["excitatory"]["edges"] + dale["inhibitory"]["edges"] == len(
        module.EDGES
    )
    assert dale["inhibitory"]["edges"] > 0
    assert dale["inhibitory"]["median"] > dale["excitatory"]["median"]
    assert dale["p_inhibitory_larger"] == pytest.approx(1.0)
    pre_types = {module.NODE_TYPES[pre] for pre, _ in module.EDGES}
    assert set(result["by_presynaptic_type"]) == pre_types


@pytest.mark.slow
def test_analyze_writes_the_report(tiny_run, tmp_path, dagc_process):
    out = tmp_path / "report"
    result = dagc_process(
        "analyze", tiny_run, "--out", out, "--subset", 200, "--seed", 3,
        "--permutations", 200, "--data-dir", DATA, "--device", "cpu", "--quiet",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    report = json.loads((out / "analysis.json").read_text())
    assert len(report["neurons"]) == 12
    assert report["subset"] == {"images": 200, "seed": 3}
    text = (out / "ANALYSIS.md").read_text()
    for name in report["figures"]:
        assert (out / name).stat().st_size > 10_000
        assert f"({name})" in text
    assert "Not a Dale run" in text
    assert "wrote" in result.stdout and "top lesions" in result.stdout
    bad = dagc_process(
        "analyze", tiny_run, "--out", tmp_path / "no" / "such", "--data-dir", DATA
    )
    assert bad.returncode == 2 and "parent folder does not exist" in bad.stderr
