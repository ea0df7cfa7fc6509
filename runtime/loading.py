"""Import a generated module file by path (it needs only torch, not dagc)."""

from __future__ import annotations

import hashlib
import importlib.util
import sys
from pathlib import Path
from types import ModuleType

from dagc.compiler.errors import DagcError

REQUIRED_NAMES = (
    "NODES",
    "EDGES",
    "INPUT_NODES",
    "OUTPUT_NODES",
    "LEVELS",
    "MODEL_CLASS",
)


def load_generated(path: str | Path) -> ModuleType:
    """Import a file written by `dagc compile`; a clear DagcError when it is not one."""
    path = Path(path)
    if not path.is_file():
        raise DagcError("model file not found", path)
    # A name unique to the file's content, so two different files never collide in sys.modules.
    digest = hashlib.sha256(path.read_bytes()).hexdigest()[:12]
    module_name = f"dagc_generated_{path.stem.replace('-', '_')}_{digest}"
    if module_name in sys.modules:
        return sys.modules[module_name]
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise DagcError("cannot be imported as a Python module", path)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except SyntaxError as exc:
        raise DagcError(
            f"not valid Python ({exc.msg}, line {exc.lineno})", path
        ) from None
    missing = [name for name in REQUIRED_NAMES if not hasattr(module, name)]
    if missing:
        raise DagcError(
            f"not a dagc-generated model (missing {', '.join(missing)}); create one with "
            "`dagc compile`",
            path,
        )
    sys.modules[module_name] = module
    return module


def build_model(module: ModuleType, **overrides):
    """Instantiate the module's model class with its compiled defaults unless overridden."""
    return getattr(module, module.MODEL_CLASS)(**overrides)
