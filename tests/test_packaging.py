"""`pip install .` is a working server with runtime dependencies only: the wheel builds from a copy of the
source, installs into a fresh venv (the pip cache and the machine's wheel directory serve the dependencies),
`veloxserve demo --help` runs, every module imports with what that venv holds, and a framework left to an
extra says which extra to install."""

from __future__ import annotations

import ast
import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# Run inside the fresh venv: what imports there, what is absent, and the version's one source.
PROBE = """
import importlib, importlib.metadata, importlib.util, json, pkgutil
from pathlib import Path
import veloxserve
modules = [m.name for m in pkgutil.walk_packages(veloxserve.__path__, "veloxserve.")]
for name in modules:
    importlib.import_module(name)
from veloxserve.clipper.adapters import Framework, load_model
errors = {}
for framework in (Framework.TORCH, Framework.ONNX):
    try:
        load_model(framework, Path("absent.model"))
    except ImportError as exc:
        errors[framework.value] = str(exc)
print(json.dumps({
    "modules": modules,
    "absent": [p for p in ("torch", "onnxruntime", "onnx", "pyspark", "pytest", "hypothesis", "mkdocs", "river")
               if importlib.util.find_spec(p) is None],
    "metadata_version": importlib.metadata.version("veloxserve"),
    "version": veloxserve.__version__,
    "location": veloxserve.__file__,
    "framework_errors": errors,
}))
"""


def _source_version() -> str:
    tree = ast.parse((ROOT / "veloxserve" / "__init__.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "__version__" for t in node.targets):
            return ast.literal_eval(node.value)
    raise AssertionError("veloxserve/__init__.py sets no __version__")


def _run(argv: list[str], cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    done = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{' '.join(argv)}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done


@pytest.mark.slow
def test_the_wheel_installs_alone_into_a_fresh_venv_and_serves(tmp_path: Path) -> None:
    source = tmp_path / "source"  # a copy: building in the checkout would leave build/ and egg-info behind
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    shutil.copytree(ROOT / "veloxserve", source / "veloxserve", ignore=shutil.ignore_patterns("__pycache__"))
    # --no-isolation: this environment's setuptools (the test extra holds it; build checks [build-system]'s
    # requirement) instead of a fresh one per run
    _run([sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(tmp_path / "dist")], cwd=source)
    (wheel,) = (tmp_path / "dist").glob("veloxserve-*.whl")
    assert wheel.name.startswith(f"veloxserve-{_source_version()}-")
    names = zipfile.ZipFile(wheel).namelist()
    assert all(n.startswith(("veloxserve/", "veloxserve-")) for n in names), "only the package goes in the wheel"
    assert "veloxserve/api/routes.py" in names and not any(n.startswith(("tests/", "bench/", "docs/")) for n in names)

    venv = tmp_path / "venv"
    # A venv without pip of its own, filled by this environment's pip (--python); --no-compile leaves the
    # byte-compiling of every dependency to the imports below: both save CPU, neither changes what is installed.
    _run([sys.executable, "-m", "venv", "--without-pip", str(venv)], cwd=tmp_path)
    install = ["-m", "pip", "--python", str(venv / "bin" / "python"), "install", "--quiet", "--no-compile"]
    _run([sys.executable, *install, str(wheel)], cwd=tmp_path)

    demo = _run([str(venv / "bin" / "veloxserve"), "demo", "--help"], cwd=tmp_path)
    assert "usage: veloxserve demo" in demo.stdout and "--port" in demo.stdout

    probe = json.loads(_run([str(venv / "bin" / "python"), "-c", PROBE], cwd=tmp_path).stdout)
    assert Path(probe["location"]).is_relative_to(venv), "the venv's own copy was imported, not the checkout"
    expected = {
        f"veloxserve.{p.relative_to(ROOT / 'veloxserve').with_suffix('').as_posix().replace('/', '.')}"
        for p in (ROOT / "veloxserve").rglob("*.py")
        if p.name != "__init__.py"
    }
    assert expected <= set(probe["modules"])  # every module imported with runtime dependencies only
    assert probe["absent"] == ["torch", "onnxruntime", "onnx", "pyspark", "pytest", "hypothesis", "mkdocs", "river"]
    assert probe["metadata_version"] == probe["version"] == _source_version()
    assert "pip install 'veloxserve[torch]'" in probe["framework_errors"]["torch"]
    assert "pip install 'veloxserve[onnx]'" in probe["framework_errors"]["onnx"]
