"""Every benchmark script still runs: each with --quick, its smallest setting, must print one JSON
document. A figure in docs/benchmarks.md comes from a script; if the script cannot run, the figure cannot
be checked. Nothing here asserts speed: figures belong to bench/ and docs/benchmarks.md, not to tests."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "bench"
HELPERS = {  # modules in bench/ that are not benchmarks themselves
    "clipper_load.py": "the Clipper benchmarks' load generator",
    "peer_bentoml_service.py": "BentoML's service, started by bench_http.py from its own venv",
    "scaleout_measure.py": "bench_scaleout.py's measurements (wrk, CPU from /proc, freshness)",
    "scaleout_model.py": "bench_scaleout.py's model of a deployment (tests/test_scaleout_model.py)",
}
EXTRA_ARGS = {
    "bench_http.py": ["--no-peer"],  # the peer's venv is pip-installed on first use: not in CI
    "bench_scaleout.py": ["--require-all"],  # every configuration of the table runs, none reported unavailable
}
NEEDS = {
    "bench_http.py": ["wrk"],
    "bench_workers.py": ["wrk"],
    "bench_scaleout.py": ["wrk", "redis-server", "redis-cli"],
    "bench_redis_hang.py": ["redis-server"],
    "bench_redis_cluster.py": ["redis-server", "redis-cli"],
    "bench_redis_cache.py": ["wrk", "redis-server"],
}


def _scripts() -> list[str]:
    return sorted(p.name for p in BENCH.glob("*.py") if p.name not in HELPERS)


def _results() -> dict[str, float]:
    return {str(p): p.stat().st_mtime for p in (BENCH / "results").glob("**/*") if p.is_file()}


def test_every_bench_script_has_a_quick_setting() -> None:
    """A new script joins the smoke run below by having --quick (or is named a helper above)."""
    assert [s for s in _scripts() if '"--quick"' not in (BENCH / s).read_text()] == []
    assert set(HELPERS) <= {p.name for p in BENCH.glob("*.py")}


@pytest.mark.slow
@pytest.mark.timeout(900)
@pytest.mark.parametrize("script", _scripts())
def test_bench_script_runs_with_its_quickest_setting_and_prints_json(script: str, tmp_path: Path) -> None:
    missing = [tool for tool in NEEDS.get(script, []) if shutil.which(tool) is None]
    if missing:
        message = f"bench/{script} needs {', '.join(missing)} (Debian: apt-get install {' '.join(missing)})"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    before = _results()
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    done = subprocess.run(
        [sys.executable, str(BENCH / script), "--quick", *EXTRA_ARGS.get(script, [])],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": path},
        capture_output=True,
        text=True,
        timeout=840,
    )
    assert done.returncode == 0, f"bench/{script} --quick exited {done.returncode}:\n{done.stderr[-4000:]}"
    try:
        report = json.loads(done.stdout)
    except json.JSONDecodeError as exc:
        pytest.fail(f"bench/{script} --quick printed no single JSON document ({exc}):\n{done.stdout[-2000:]}")
    assert isinstance(report, dict) and report
    assert _results() == before, "a --quick run must not replace the figures in bench/results/"
