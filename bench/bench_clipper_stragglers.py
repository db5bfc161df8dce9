"""Straggler mitigation: an Exp4 ensemble of 8 containers, one of them slow, answered at a 20 ms
deadline (late models replaced by their mean output) vs waiting for all 8.

    .venv/bin/python -m bench.bench_clipper_stragglers [--seconds 5] [--concurrency 8]

Seven models answer in well under a millisecond; the straggler takes 10 ms, and 100 ms on one batch
in ten (a tail, as a GC pause or a noisy neighbour gives). Prints one JSON document (also written to
bench/results/clipper_stragglers.json).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

import cloudpickle
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `python bench/x.py` as well as `-m bench.x`

from bench.clipper_load import closed_loop, run, write_report  # noqa: E402
from veloxserve.clipper import ClipperRuntime  # noqa: E402


def fast(batch):
    import numpy as np

    return np.asarray(batch).sum(axis=1)


def straggler(batch):
    import time

    import numpy as np

    time.sleep(0.1 if np.random.random() < 0.1 else 0.01)
    return np.asarray(batch).sum(axis=1)


async def measure(tmp: Path, objective_ms: float, args: argparse.Namespace) -> dict:
    runtime = ClipperRuntime(tmp / f"home-{objective_ms:g}", model_dirs=[tmp])
    await runtime.start()
    try:
        names = []
        for i, function in enumerate([fast] * 7 + [straggler]):
            path = tmp / f"m{i}.pkl"
            path.write_bytes(cloudpickle.dumps(function))
            names.append(f"m{i}")
            await runtime.deploy(names[-1], "callable", path, objective_ms=20.0)
        await runtime.create_app("ensemble", names, policy="exp4", objective_ms=objective_ms)
        rng = np.random.default_rng(0)
        inputs = rng.normal(size=(1 << 16, 8))

        async def call(i: int) -> dict:
            return await runtime.predict("ensemble", "bench", inputs[i % len(inputs)])

        result = await closed_loop(call, args.concurrency, args.seconds)
        answers = result.pop("answers")
        result["answers_with_a_substituted_model"] = sum(any(m["status"] != "ok" for m in a["models"]) for a in answers)
        result["defaults"] = sum(a["default"] for a in answers)
        return result
    finally:
        await runtime.close()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument(
        "--quick",
        action="store_true",
        help="the smallest setting, for tests/test_bench_scripts.py: its figures mean nothing",
    )
    args = parser.parse_args()
    if args.quick:
        args.seconds, args.concurrency = 0.5, 4
    tmp = Path(tempfile.mkdtemp(prefix="clipper-stragglers-"))
    deadline = run(measure(tmp, 20.0, args))
    wait_all = run(measure(tmp, 60_000.0, args))
    report = {
        "models": 8,
        "slow_models": 1,
        "concurrency": args.concurrency,
        "seconds": args.seconds,
        "deadline_20ms": deadline,
        "wait_for_all": wait_all,
        "p99_ratio_wait_over_deadline": round(wait_all["p99_ms"] / deadline["p99_ms"], 2),
    }
    shutil.rmtree(tmp, ignore_errors=True)
    write_report("clipper_stragglers", report, keep=not args.quick)


if __name__ == "__main__":
    main()
