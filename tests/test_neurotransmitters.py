"""The Wang et al. 2024 neurotransmitter atlas, read onto Cook 2019 cell names."""

from __future__ import annotations

from pathlib import Path

import pytest

from dagc.compiler.errors import DagcError
from dagc.compiler.loaders.neurotransmitters import (
    TRANSMITTER_ORDER,
    cook_name,
    normalise_label,
    read_neurotransmitters,
)

from conftest import RAW, SI5

SUPP2 = RAW / "elife-95402-supp2-v1.xlsx"
SUPP3 = RAW / "elife-95402-supp3-v1.xlsx"
SI4 = RAW / "SI 4 Cell lists.xlsx"

# The 15 sex-shared somatic neurons the atlas calls "unknown (orphan ...)" (PVW's serotonin is
# male-only, so it is dropped from the one shared dict).
ORPHANS = {
    "AVHL", "AVHR", "AVKL", "AVKR", "BDUL", "BDUR", "PVM", "PVQL", "PVQR",
    "PVT", "PVWL", "PVWR", "RID", "RMGL", "RMGR",
}  # fmt: skip


@pytest.fixture(scope="module")
def labels(shared) -> dict[str, str]:
    shared(SUPP2, SUPP3)
    return read_neurotransmitters(SUPP2, SUPP3)


@pytest.fixture(scope="module")
def cook(shared) -> dict[str, list[str]]:
    """Cook neuron names per sex, grouped by SI 4 type (read once: the sheets are large)."""
    shared(SI5, SI4)
    from dagc.compiler.loaders.cook import read_si4_cell_types, read_si5_chemical

    types = read_si4_cell_types(SI4)
    groups: dict[str, list[str]] = {}
    for sex in ("hermaphrodite", "male"):
        names, _ = read_si5_chemical(SI5, sex)
        for name in names:
            groups.setdefault(f"{sex}:{types.get(name, 'unknown')}", []).append(name)
    return groups


def somatic(cook: dict[str, list[str]], sex: str) -> list[str]:
    return [
        name
        for kind in ("sensory", "interneuron", "motor")
        for name in cook[f"{sex}:{kind}"]
    ]


# --- pure unit tests (no data files) ---------------------------------------------------------


@pytest.mark.parametrize(
    "atlas, expected",
    [
        ("DA9", "DA09"),
        ("VC4", "VC04"),
        ("AS1", "AS01"),
        ("AS11", "AS11"),
        ("VD13", "VD13"),
        ("CP0", "CP00"),
        ("CA7", "CA07"),
        ("DX1", "DX1"),  # Cook does not pad DX, EF, I, M, IL or R names
        ("EF3", "EF3"),
        ("I1L", "I1L"),
        ("M1", "M1"),
        ("IL1DL", "IL1DL"),
        ("R1AL", "R1AL"),
        ("ASHL", "ASHL"),
    ],
)
def test_cook_name_pads_only_cook_padded_classes(atlas: str, expected: str) -> None:
    assert cook_name(atlas) == expected


@pytest.mark.parametrize(
    "entries, expected",
    [
        (["Glu", "ACh - NEW", ""], "ACh+Glu"),
        (["*betaine (uptake) - NEW", "", ""], "Betaine"),
        (["*GABA ", "", ""], "GABA"),
        (["GABA (uptake)", "", ""], "GABA"),
        (["unknown (orphan, unc-47 expression)", "", ""], ""),
        (["Unknown (orphan, unc-47 expression)", "", ""], ""),
        (["ACh", "unknown monoamine? - NEW", ""], "ACh"),
        (["*bas-1-depen unknown monoamine? (new)", "", ""], ""),
        (
            [
                "unknown (orphan, unc-46 expression)",
                "male - 5-HT (alternative ...?)",
                "",
            ],
            "",
        ),
        (
            ["*ACh (new)", "GABA", "5-HTP (synthesis) and 5-HT (uptake) (new)"],
            "ACh+GABA+5-HT+5-HTP",
        ),
        (["octopamine", "Glu ", ""], "Glu+Oct"),
        (["DA", "tyramine (new)", ""], "DA+Tyr"),
        (["ACh (new)", "*5-HT (new)", "PEOH? (new)"], "ACh+5-HT+PEOH"),
        (["", "", ""], ""),
    ],
)
def test_normalise_label_drops_markers_and_orders(
    entries: list[str], expected: str
) -> None:
    assert normalise_label(entries) == expected


def test_normalise_label_rejects_unknown_wording() -> None:
    with pytest.raises(DagcError, match="histamine"):
        normalise_label(["histamine"])


def test_unreadable_file_is_a_dagc_error(tmp_path: Path) -> None:
    bogus = tmp_path / "supp2.xlsx"
    bogus.write_text("not a workbook")
    with pytest.raises(DagcError, match="readable"):
        read_neurotransmitters(bogus, bogus)


# --- facts from the atlas sheets -------------------------------------------------------------


def test_labels_use_only_the_fixed_vocabulary_in_order(labels: dict[str, str]) -> None:
    for label in set(labels.values()) - {""}:
        parts = label.split("+")
        assert all(part in TRANSMITTER_ORDER for part in parts), label
        assert parts == sorted(parts, key=TRANSMITTER_ORDER.index), label


def test_gabaergic_neurons(labels: dict[str, str]) -> None:
    gabaergic = [f"DD{i:02d}" for i in range(1, 7)] + [
        f"VD{i:02d}" for i in range(1, 14)
    ]
    gabaergic += ["RMEL", "RMER", "RMED", "RMEV", "AVL", "DVB", "RIS", "RIBL", "RIBR"]
    for name in gabaergic:
        assert "GABA" in labels[name].split("+"), name


def test_known_single_identities(labels: dict[str, str]) -> None:
    assert labels["AVAL"] == labels["AVAR"] == "ACh"
    assert labels["AVBL"] == "ACh"
    assert labels["ASHL"] == labels["ASHR"] == "Glu"
    assert labels["ADEL"] == labels["ADER"] == "DA"
    assert labels["CEPDL"] == labels["CEPVR"] == "DA"
    assert labels["PDEL"] == "Glu+DA"  # PDE: dopamine plus newly found eat-4
    assert labels["AFDL"] == "ACh+Glu"  # '- NEW' cholinergic identity kept
    assert labels["RICL"] == "Glu+Oct"
    assert labels["RIML"] == "Glu+Tyr+Betaine"
    assert labels["NSML"] == "5-HT+Betaine"  # pharyngeal, but in the table
    assert labels["HSNL"] == labels["HSNR"] == "ACh+5-HT"
    assert labels["ASIL"] == "Betaine"  # '*betaine (uptake) - NEW' only
    assert labels["CANL"] == labels["CANR"] == "Betaine"


def test_padded_motor_neurons(labels: dict[str, str]) -> None:
    assert labels["DA09"] == "ACh+Betaine"
    assert labels["VC04"] == labels["VC05"] == "ACh+5-HT"
    assert labels["VC01"] == "ACh"
    assert all(labels[f"AS{i:02d}"] == "ACh" for i in range(1, 12))
    assert not any(name in labels for name in ("DA9", "VC4", "AS1"))


def test_ambiguous_pairs_share_a_consensus_label(labels: dict[str, str]) -> None:
    # 'DB1/3' and 'DB3/1' are both ACh, so DB01 and DB03 both get it.
    assert labels["DB01"] == labels["DB03"] == "ACh"
    assert labels["DX1"] == labels["DX2"] == labels["DX3"] == "ACh"
    assert labels["EF1"] == labels["EF2"] == labels["EF3"] == "GABA"
    assert not any("/" in name for name in labels)


def test_orphans_are_empty(labels: dict[str, str]) -> None:
    for name in ORPHANS | {"MCML", "MCMR", "SPDL", "SPDR", "DVE", "DVF"}:
        assert labels[name] == "", name


def test_male_specific_entries(labels: dict[str, str]) -> None:
    assert labels["CEMDL"] == labels["CEMVR"] == "ACh+5-HTP"
    assert labels["CA01"] == "ACh+Glu"  # '*Glu (new)': dim, kept
    assert labels["CA05"] == "ACh"
    assert labels["CP00"] == "Glu"
    assert labels["CP09"] == "GABA"
    assert labels["R5AL"] == "Glu+DA"
    assert labels["R8BL"] == "ACh+Oct"
    assert labels["R9BR"] == "ACh+GABA+5-HT+5-HTP"
    assert labels["HOA"] == "Glu+Tyr"
    assert labels["SPVL"] == "ACh"


# --- against Cook 2019's cell names ----------------------------------------------------------


def test_every_cook_neuron_has_an_entry(
    labels: dict[str, str], cook: dict[str, list[str]]
) -> None:
    for sex in ("hermaphrodite", "male"):
        for kind in (
            "sensory",
            "interneuron",
            "motor",
            "other",
            "sex-specific",
            "pharyngeal",
        ):
            neurons = [name for name in cook[f"{sex}:{kind}"] if not name[0].islower()]
            assert neurons, (sex, kind)
            assert not [name for name in neurons if name not in labels], (sex, kind)


def test_only_unreconstructed_atlas_neurons_are_outside_cook(
    labels: dict[str, str], cook: dict[str, list[str]]
) -> None:
    cook_names = {name for names in cook.values() for name in names}
    # Cook reconstructed DX1-3 and EF1-3 only; CP00 is in SI 4 but not on the SI 5 sheet.
    assert set(labels) - cook_names == {"DX4", "EF4", "CP00"}


def test_somatic_coverage(labels: dict[str, str], cook: dict[str, list[str]]) -> None:
    # 257 of the 272 sex-shared somatic neurons (94.5 %) get a label; the 15 others are the
    # atlas's orphans. The same 272 neurons appear in the male sheet with the same labels.
    for sex in ("hermaphrodite", "male"):
        neurons = somatic(cook, sex)
        assert len(neurons) == 272
        unlabelled = {name for name in neurons if not labels[name]}
        assert unlabelled == ORPHANS
        assert (len(neurons) - len(unlabelled)) / len(neurons) > 0.94


def test_sex_specific_coverage(
    labels: dict[str, str], cook: dict[str, list[str]]
) -> None:
    hermaphrodite = cook["hermaphrodite:sex-specific"]  # HSNL/R, VC01-06
    assert len(hermaphrodite) == 8 and all(labels[name] for name in hermaphrodite)
    male = cook["male:sex-specific"]
    unlabelled = {name for name in male if not labels[name]}
    assert len(male) == 90
    assert unlabelled == {"MCML", "MCMR", "SPDL", "SPDR", "DVE", "DVF"}
