"""Overhead: a no-op model through the whole path vs calling it in-process, and the RPC alone.

    .venv/bin/python -m bench.bench_clipper_overhead [--n 2000]

1. in-process: the no-op function called on a batch of one;
2. ZeroMQ RPC alone, per batch: this process's ROUTER socket to a real container process (DEALER),
   the wire protocol of veloxserve/clipper/protocol.py, batches of 1 and 64 rows x 8 floats;
3. the runtime in-process: Application -> cache -> AIMD queue -> ZeroMQ -> container and back
   (one client, distinct inputs so the cache never answers);
4. the whole path over HTTP: POST /apps/noop/predict to a real `veloxserve serve` (one client,
   httpx, keep-alive).
Prints one JSON document (also bench/results/clipper_overhead.json).
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cloudpickle
import httpx
import numpy as np
import orjson
import zmq

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `python bench/x.py` as well as `-m bench.x`

from bench.clipper_load import run, summary, write_report  # noqa: E402
from tests.helpers import ServerProcess  # noqa: E402
from veloxserve.clipper import ClipperRuntime, protocol  # noqa: E402


def noop(batch):
    import numpy as np

    return np.zeros(len(batch))


def in_process(n: int) -> dict:
    x = np.zeros((1, 8))
    times = []
    for _ in range(n):
        started = time.perf_counter()
        noop(x)
        times.append(time.perf_counter() - started)
    return summary(times)


def rpc_alone(model: Path, n: int) -> dict:
    context = zmq.Context()
    socket = context.socket(zmq.ROUTER)
    port = socket.bind_to_random_port("tcp://127.0.0.1")
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "veloxserve.cli",
            "container",
            "--framework",
            "callable",
            "--model",
            str(model),
            "--connect",
            f"tcp://127.0.0.1:{port}",
        ]
    )
    try:
        peer, kind, hello = socket.recv_multipart()
        assert kind == protocol.HELLO, orjson.loads(hello)
        out = {}
        for rows in (1, 64):
            batch = np.zeros((rows, 8))
            times = []
            for i in range(n):
                started = time.perf_counter()
                socket.send_multipart([peer, protocol.PREDICT, protocol.pack_id(i), *protocol.encode_batch(batch)])
                frames = socket.recv_multipart()
                protocol.decode_batch(frames[3:6])
                times.append(time.perf_counter() - started)
            out[f"batch_{rows}"] = summary(times)
        return out
    finally:
        process.kill()
        process.wait()
        socket.close(0)
        context.term()


async def runtime_path(home: Path, model: Path, n: int) -> dict:
    runtime = ClipperRuntime(home, model_dirs=[model.parent])
    await runtime.start()
    try:
        await runtime.deploy("noop", "callable", model)
        await runtime.create_app("noop", ["noop"], objective_ms=10_000)
        inputs = np.random.default_rng(0).normal(size=(n + 100, 8))
        times = []
        for i, x in enumerate(inputs):
            started = time.perf_counter()
            await runtime.predict("noop", "u", x)
            if i >= 100:
                times.append(time.perf_counter() - started)
        return summary(times)
    finally:
        await runtime.close()


def http_path(home: Path, model: Path, n: int) -> dict:
    # a local benchmark: no token on the admin routes
    server = ServerProcess(home, "--no-auth", "--model-dir", str(model.parent))
    try:
        server.wait_ready()
        with httpx.Client(base_url=server.url, timeout=30) as client:
            deploy = {"name": "noop", "framework": "callable", "model": str(model)}
            client.post("/containers", json=deploy).raise_for_status()
            client.post("/apps", json={"name": "noop", "models": ["noop"], "objective_ms": 10_000}).raise_for_status()
            inputs = np.random.default_rng(1).normal(size=(n + 100, 8)).tolist()
            times = []
            for i, x in enumerate(inputs):
                started = time.perf_counter()
                client.post("/apps/noop/predict", json={"user": "u", "input": x}).raise_for_status()
                if i >= 100:
                    times.append(time.perf_counter() - started)
        return summary(times)
    finally:
        server.stop()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument(
        "--quick",
        action="store_true",
        help="the smallest setting, for tests/test_bench_scripts.py: its figures mean nothing",
    )
    args = parser.parse_args()
    if args.quick:
        args.n = 20
    tmp = Path(tempfile.mkdtemp(prefix="clipper-overhead-"))
    model = tmp / "noop.pkl"
    model.write_bytes(cloudpickle.dumps(noop))
    report = {
        "in_process_call": in_process(args.n),
        "zeromq_rpc_per_batch": rpc_alone(model, args.n),
        "runtime_in_process": run(runtime_path(tmp / "home-runtime", model, args.n)),
        "http_whole_path": http_path(tmp / "home-http", model, args.n),
    }
    shutil.rmtree(tmp, ignore_errors=True)
    write_report("clipper_overhead", report, keep=not args.quick)


if __name__ == "__main__":
    main()
