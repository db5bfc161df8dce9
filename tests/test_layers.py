"""Layers import one way (docs/architecture.md, STYLE.md "Layers that import one way"), read from
the source: every import of every module under veloxserve/, function-level ones included.

    api → serving, clipper → learning, training → models, storage → errors, ids, config

Nothing imports api (but the entry points); models/ do no I/O and import nothing above them;
storage/ knows nothing of models; learning/ reaches stores only through their interface; api/ is
handed its stores and runtimes and keeps Clipper in its own modules. KNOWN lists the violations
that issue 12 is removing now; a violation not in it fails, and so does an entry no longer needed.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent / "veloxserve"
FOUNDATION = {
    "errors",
    "ids",
    "config",
    "backoff",
    "lru",
    "lsh",
    "approximate_cache",
}  # value types and small utilities every layer may use
# the `veloxserve` command, its Clipper commands and its pipeline commands
ENTRY_POINTS = {"veloxserve.cli", "veloxserve.clipper.cli", "veloxserve.pipelines.cli"}
FACADE = "veloxserve"  # the package __init__: re-exports the public API (Velox lazily)
# What each layer may import besides itself and FOUNDATION (None: anything but api and the entry points).
MAY_IMPORT: dict[str, set[str] | None] = {
    "foundation": set(),
    "storage": set(),
    "models": set(),
    "learning": {"models", "storage"},
    "training": {"models", "storage", "learning"},
    "serving": None,
    "clipper": None,
    "pipelines": None,  # InferLine's planning (pure) and pipeline serving, over clipper and serving
    # storage for types: what api builds is checked below
    "api": {"serving", "clipper", "models", "storage", "pipelines"},
    "client": set(),  # the HTTP client: the foundation only (its errors), nothing of the server's process
}
STORE_BACKENDS = {
    "veloxserve.storage.redis_store",
    "veloxserve.storage.redis_client",
    "veloxserve.storage.lmdb_store",
    "veloxserve.storage.sqlite_store",
}
DRIVERS = {"redis", "lmdb", "sqlite3"}
# api modules that join Clipper's routes to the rest (the app factory, the OpenAPI document); the
# others (the guard, metrics) know nothing of Clipper. A route table that composes them belongs here.
CLIPPER_COMPOSERS = {"veloxserve.api.app", "veloxserve.api.openapi", "veloxserve.api.factory"}
# The one place in api/ that builds what the app is handed (create_app; the CLI and tests call it).
APP_FACTORY = "veloxserve.api.factory"
# What the entry points build and hand to api/ (STYLE.md: concrete backends are chosen in one place).
BUILT_BY_ENTRY_POINTS = {
    "veloxserve.storage",
    "veloxserve.clipper.runtime",
    "veloxserve.clipper.sync",
    "veloxserve.pipelines.runtime",
}
# The version directory contract's arrays (docs/architecture.md): models and the trainer know them, stores do not.
VERSION_ARRAYS = {
    "item_ids",
    "item_factors",
    "item_bias",
    "user_ids",
    "user_weights",
    "user_gram",
    "user_rhs",
    "user_counts",
    "seen_indptr",
    "seen_items",
    "prior_mean",
    "prior_precision",
    "content_basis",
    "reference_item_rows",
    "reference_scores",
    "item_features",
}
IO_MODULES = {
    "pyarrow.parquet",
    "pyarrow.csv",
    "pyarrow.feather",
    "pyarrow.dataset",
    "pyarrow.ipc",
    "shutil",
    "tempfile",
    "socket",
    "subprocess",
    "sqlite3",
    "lmdb",
    "redis",
    "zmq",
    "urllib.request",
    "requests",
    "httpx",
    "pickle",
    "cloudpickle",
    "joblib",
    "glob",
}
IO_CALLS = {
    "open",
    "io.open",
    "os",
    "numpy.load",
    "numpy.save",
    "numpy.savez",
    "numpy.savez_compressed",
    "numpy.loadtxt",
    "numpy.savetxt",
    "numpy.genfromtxt",
    "numpy.fromfile",
    "numpy.memmap",
    "numpy.lib.format",
    "json.load",
    "json.dump",
    "pandas.read_csv",
    "pandas.read_parquet",
    "pandas.read_json",
    *IO_MODULES,
}
IO_METHODS = {
    "read_text",
    "read_bytes",
    "write_text",
    "write_bytes",
    "iterdir",
    "mkdir",
    "unlink",
    "rmdir",
    "touch",
    "glob",
    "rglob",
    "is_file",
    "is_dir",
    "exists",
    "tofile",
    "open",
}

# Known violations, being removed in issue 12 (the lead empties this list after merging):
KNOWN: set[tuple[str, str, str]] = set()  # issue 12 removed every violation it listed; keep it empty


@dataclass(frozen=True)
class Module:
    name: str
    tree: ast.Module
    is_package: bool = False

    @property
    def layer(self) -> str:
        """The package under veloxserve/ ("api", "models", ...), "foundation", "cli" or the facade."""
        parts = self.name.split(".")
        if len(parts) == 1:
            return FACADE
        return "foundation" if parts[1] in FOUNDATION else parts[1]


def _modules() -> list[Module]:
    found = []
    for path in sorted(ROOT.rglob("*.py")):
        parts = path.relative_to(ROOT.parent).with_suffix("").parts
        is_package = parts[-1] == "__init__"
        name = ".".join(parts[:-1] if is_package else parts)
        found.append(Module(name, ast.parse(path.read_text(), str(path)), is_package))
    return found


MODULES = _modules()
NAMES = {m.name for m in MODULES}


def _imports(module: Module) -> Iterator[tuple[str, str]]:
    """(what is imported, the local name it is bound to) for every import in the module, at any depth."""
    package = module.name if module.is_package else module.name.rpartition(".")[0]
    for node in ast.walk(module.tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, alias.asname or alias.name.partition(".")[0]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([node.module] if node.module else []))
            for alias in node.names:
                yield f"{base}.{alias.name}", alias.asname or alias.name


def _internal(name: str) -> str | None:
    """The veloxserve module that `name` (a module, or an object in one) lives in; None if external."""
    while name not in NAMES:
        if "." not in name:
            return None
        name = name.rpartition(".")[0]
    return name


def _layer_of(name: str) -> str:
    return next(m.layer for m in MODULES if m.name == name)


def _dotted(node: ast.expr) -> str | None:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        head = _dotted(node.value)
        return None if head is None else f"{head}.{node.attr}"
    return None


def _calls(module: Module) -> Iterator[tuple[str, ast.Call]]:
    """Every call with its callee resolved through the module's imports (pq.read_table: pyarrow.parquet.read_table)."""
    bound = {local: target for target, local in _imports(module)}
    for node in ast.walk(module.tree):
        if isinstance(node, ast.Call) and (name := _dotted(node.func)) is not None:
            head, dot, rest = name.partition(".")
            yield (bound[head] + dot + rest if head in bound else name), node


def _under(name: str, prefixes: set[str]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def violations() -> set[tuple[str, str, str]]:
    """(rule, module, what breaks it) over the whole package."""
    found: set[tuple[str, str, str]] = set()
    for module in MODULES:
        for imported, _ in _imports(module):
            target = _internal(imported)
            if target is not None:
                found |= _import_violations(module, target)
            elif module.layer == "models" and _under(imported, IO_MODULES):
                found.add(("models do no I/O", module.name, imported))
            elif module.layer == "learning" and _under(imported, DRIVERS):
                found.add(("learning reaches stores through their interface", module.name, imported))
        if module.layer == "models":
            for callee, node in _calls(module):
                if _under(callee, IO_CALLS):
                    found.add(("models do no I/O", module.name, callee))
                elif isinstance(node.func, ast.Attribute) and node.func.attr in IO_METHODS:
                    found.add(("models do no I/O", module.name, f".{node.func.attr}()"))
        if module.layer == "storage" and any(
            isinstance(node, ast.Constant)
            and isinstance(node.value, str)
            and node.value.removesuffix(".npy") in VERSION_ARRAYS
            for node in ast.walk(module.tree)
        ):
            found.add(("stores know nothing of models", module.name, "version arrays"))
        if module.layer == "api" and module.name != APP_FACTORY:
            for callee, _ in _calls(module):
                if _under(callee, BUILT_BY_ENTRY_POINTS):
                    found.add(("api is handed its stores and runtimes", module.name, callee))
    return found


def _import_violations(module: Module, target: str) -> set[tuple[str, str, str]]:
    found = set()
    layer, to = module.layer, _layer_of(target)
    if module.name in ENTRY_POINTS or layer == FACADE:
        return found
    if target in ENTRY_POINTS:
        found.add(("nothing imports the entry points", module.name, target))
    if to == "api" and layer != "api":
        found.add(("nothing imports api", module.name, target))
    allowed = MAY_IMPORT.get(layer)
    if allowed is not None and to not in allowed | {layer, "foundation"} and not (to == FACADE and layer == "api"):
        found.add((f"{layer} imports nothing above it", module.name, target))
    if layer == "learning" and target in STORE_BACKENDS:
        found.add(("learning reaches stores through their interface", module.name, target))
    if (
        layer == "api"
        and module.name not in CLIPPER_COMPOSERS
        and not module.name.startswith("veloxserve.api.clipper_")
        and _under(target, {"veloxserve.clipper"}) | target.startswith("veloxserve.api.clipper_")
    ):
        found.add(("Clipper stays in its api modules", module.name, target))
    return found


def test_no_new_layer_violation() -> None:
    new = violations() - KNOWN
    assert not new, "imports against the layers (docs/architecture.md):\n" + "\n".join(
        f"  {rule}: {module} -> {what}" for rule, module, what in sorted(new)
    )


def test_every_known_violation_still_exists() -> None:
    """An entry fixed is an entry to delete: the list only shrinks."""
    gone = KNOWN - violations()
    assert not gone, "fixed, remove from KNOWN in tests/test_layers.py:\n" + "\n".join(map(str, sorted(gone)))


@contextmanager
def _pretend(name: str, source: str) -> Iterator[None]:
    """A made-up module in the package for the length of a check."""
    MODULES.append(Module(name, ast.parse(source)))
    NAMES.add(name)
    try:
        yield
    finally:
        MODULES.pop()
        NAMES.discard(name)


M = "veloxserve.models.x"


@pytest.mark.parametrize(
    ("module", "source", "expected"),
    [
        (M, "from veloxserve.api.app import create_app", ("nothing imports api", M, "veloxserve.api.app")),
        (
            M,
            "def f():\n    from veloxserve.serving import velox",
            ("models imports nothing above it", M, "veloxserve.serving.velox"),
        ),
        (M, "import numpy as np\ndef f(p):\n    return np.load(p)", ("models do no I/O", M, "numpy.load")),
        (M, "def f(p):\n    return p.read_text()", ("models do no I/O", M, ".read_text()")),
        (M, "def f(p):\n    return open(p)", ("models do no I/O", M, "open")),
        (M, "from json import load\ndef f(fh):\n    return load(fh)", ("models do no I/O", M, "json.load")),
        (M, "import pyarrow.parquet as pq", ("models do no I/O", M, "pyarrow.parquet")),
        (
            "veloxserve.storage.x",
            "from veloxserve.models.version import ModelVersion",
            ("storage imports nothing above it", "veloxserve.storage.x", "veloxserve.models.version"),
        ),
        (
            "veloxserve.storage.x",
            "NAMES = ('user_gram.npy',)",
            ("stores know nothing of models", "veloxserve.storage.x", "version arrays"),
        ),
        (
            "veloxserve.learning.x",
            "from ..serving import velox",
            ("learning imports nothing above it", "veloxserve.learning.x", "veloxserve.serving.velox"),
        ),
        (
            "veloxserve.learning.x",
            "import redis",
            ("learning reaches stores through their interface", "veloxserve.learning.x", "redis"),
        ),
        (
            "veloxserve.training.x",
            "import veloxserve.serving.velox",
            ("training imports nothing above it", "veloxserve.training.x", "veloxserve.serving.velox"),
        ),
        (
            "veloxserve.clipper.x",
            "from veloxserve.api import metrics",
            ("nothing imports api", "veloxserve.clipper.x", "veloxserve.api.metrics"),
        ),
        (
            "veloxserve.serving.x",
            "from veloxserve.cli import main",
            ("nothing imports the entry points", "veloxserve.serving.x", "veloxserve.cli"),
        ),
        (
            "veloxserve.api.x",
            "from veloxserve.storage import tokens\nstore = tokens.TokenStore('t')",
            ("api is handed its stores and runtimes", "veloxserve.api.x", "veloxserve.storage.tokens.TokenStore"),
        ),
        (
            "veloxserve.api.x",
            "from veloxserve.learning.user_table import UserTable",
            ("api imports nothing above it", "veloxserve.api.x", "veloxserve.learning.user_table"),
        ),
    ],
)
def test_the_rules_catch_what_they_describe(module: str, source: str, expected: tuple[str, str, str]) -> None:
    """Each rule against a made-up module, so that a rule broken in this file cannot pass silently."""
    with _pretend(module, source):
        assert expected in violations()


def test_json_dumps_pure_numpy_and_a_path_value_are_not_io() -> None:
    source = (
        "import json\nfrom pathlib import Path\nimport numpy as np\n"
        "def f(a):\n    return json.dumps(np.asarray(a).tolist()), Path('x').suffix"
    )
    with _pretend(M, source):
        assert not {v for v in violations() if v[1] == M}
