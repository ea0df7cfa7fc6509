"""The package's shape, read from the source: no import cycle anywhere, the runtime's wings
import one way (studies -> the training core -> kernels), imports inside a wing are relative
and across wings absolute, and no runtime module outgrows a reader (600 lines).

Every import statement counts, the ones inside functions too: a lazy import that closes a
cycle still ties two files together.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# Folder in the repository -> its import package once installed (pyproject.toml).
PACKAGES = {"dagc": "dagc", "compiler": "dagc.compiler", "runtime": "dagc.runtime"}
MAX_LINES = 600


def module_files() -> dict[str, Path]:
    """Import name -> file, for every Python module of the three packages."""
    modules = {}
    for folder, package in PACKAGES.items():
        for path in sorted((ROOT / folder).rglob("*.py")):
            parts = list(path.relative_to(ROOT / folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            modules[".".join([package, *parts])] = path
    return modules


MODULES = module_files()


def is_package(name: str) -> bool:
    return MODULES[name].name == "__init__.py"


def imports_of(name: str) -> list[tuple[str, bool]]:
    """The dagc modules `name` imports, each with whether the statement was relative."""
    tree = ast.parse(MODULES[name].read_text(), filename=str(MODULES[name]))
    here = name if is_package(name) else name.rpartition(".")[0]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(alias.name, False) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = here.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            for alias in node.names:
                # `from package import module` imports the module; else the name's home.
                target = f"{base}.{alias.name}"
                found.append((target if target in MODULES else base, node.level > 0))
    return [(target, relative) for target, relative in found if target in MODULES]


def wing(name: str) -> str:
    """root (dagc/__init__.py: the version, nothing else), compiler, cli, core (runtime's
    top level), kernels or studies."""
    if name == "dagc":
        return "root"
    if name.startswith("dagc.compiler"):
        return "compiler"
    for part in ("kernels", "studies"):
        if name.startswith(f"dagc.runtime.{part}"):
            return part
    return "core" if name.startswith("dagc.runtime") else "cli"


def test_the_walk_sees_the_layout():
    """A guard on the walker itself: it finds the wings and the edges between them."""
    assert {"dagc.runtime.kernels", "dagc.runtime.studies.scan"} <= set(MODULES)
    assert ("dagc.runtime.kernels", False) in imports_of("dagc.runtime.train")
    assert ("dagc.runtime.studies.lesion", True) in imports_of(
        "dagc.runtime.studies.analysis"
    )


def test_no_import_cycle():
    graph = {
        name: sorted({t for t, _ in imports_of(name)} - {name}) for name in MODULES
    }
    state: dict[str, str] = {}  # "open" on the current path, "done" after

    def visit(name: str, path: list[str]) -> None:
        state[name] = "open"
        for target in graph[name]:
            if state.get(target) == "open":
                cycle = path[path.index(target) :] + [target]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if target not in state:
                visit(target, path + [target])
        state[name] = "done"

    for name in graph:
        if name not in state:
            visit(name, [name])


# Which wings each wing may import (its own always; the version from anywhere).
ALLOWED = {
    "root": {"root"},
    "compiler": {"root", "compiler"},
    "kernels": {"root", "compiler", "kernels"},
    "core": {"root", "compiler", "kernels", "core"},
    "studies": {"root", "compiler", "kernels", "core", "studies"},
    "cli": {"root", "compiler", "kernels", "core", "studies", "cli"},
}


@pytest.mark.parametrize("name", sorted(MODULES))
def test_imports_run_one_way(name):
    upward = [t for t, _ in imports_of(name) if wing(t) not in ALLOWED[wing(name)]]
    assert not upward, f"{name} ({wing(name)}) imports {upward}"


@pytest.mark.parametrize("name", sorted(n for n in MODULES if wing(n) == "kernels"))
def test_kernel_backends_never_import_the_dispatch(name):
    if name != "dagc.runtime.kernels":
        assert "dagc.runtime.kernels" not in {t for t, _ in imports_of(name)}


@pytest.mark.parametrize("name", sorted(n for n in MODULES if n.startswith("dagc.run")))
def test_relative_inside_a_wing_absolute_across(name):
    for target, relative in imports_of(name):
        same = wing(target) == wing(name)
        assert relative == same, f"{name} imports {target} " + (
            "absolutely: inside a wing, import relatively" if same else "relatively"
        )


@pytest.mark.parametrize(
    "path",
    sorted((ROOT / "runtime").rglob("*.py")),
    ids=lambda path: str(path.relative_to(ROOT)),
)
def test_no_runtime_module_over_600_lines(path):
    assert len(path.read_text().splitlines()) <= MAX_LINES
