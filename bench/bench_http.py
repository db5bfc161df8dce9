"""HTTP benchmark: veloxserve against its stack's hello-world floor and against a peer, BentoML.

Servers, all started here and pinned to CPU 0 (wrk, the load generator, to CPU 1: this machine has
2 cores):
- veloxserve (raw ASGI on uvicorn + httptools + uvloop) serving a Catify model (rank 50, 2,000
  users × 1,000 songs): GET and POST predict, GET top_k, and POST observe (200 only once durable);
- the same stack's hello-world floor (a raw ASGI callable that parses the query and answers JSON);
- the peer: BentoML serving the same version's arrays with numpy (bench/peer_bentoml_service.py:
  POST predict = w_u · f(x), POST observe = the same Sherman–Morrison update, not durable), and
  BentoML's own hello-world floor. It runs in bench/.peer-venv, made here on first use from the
  pinned bench/peer-requirements.txt. Before any load the peer's scores are checked against
  veloxserve's (trained users, and a new user after five observations): the run stops if they differ;
- in a full run, the floors of the frameworks veloxserve's HTTP layer was chosen against
  (Starlette, Litestar, same uvicorn).

All servers run side by side and every repeat measures each of them in turn, so a change in the
machine's load (it is shared) hits a figure and its floor or peer alike; ratios are the median of
the per-repeat ratios. Each figure is the median of --repeats wrk runs (requests/s, p50, p99).

    .venv/bin/python bench/bench_http.py            # 3 repeats × 5 s, 1 and 32 connections
    .venv/bin/python bench/bench_http.py --quick    # 1 repeat × 2 s, no framework floors
    .venv/bin/python bench/bench_http.py --no-peer  # without BentoML

Needs wrk (Debian: `apt-get install wrk`). Prints one JSON document; progress goes to stderr.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import random
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

BENCH = Path(__file__).resolve().parent
PEER_VENV = BENCH / ".peer-venv"
PEER_REQUIREMENTS = BENCH / "peer-requirements.txt"
N_USERS, N_ITEMS = 2000, 1000

HELLO_STARLETTE = """
import orjson, uvicorn
from starlette.applications import Starlette
from starlette.responses import Response
from starlette.routing import Route
class JSON(Response):
    media_type = "application/json"
    def render(self, content): return orjson.dumps(content)
async def hello(request):
    return JSON({"user": request.query_params.get("user"), "score": 1.0})
uvicorn.run(Starlette(routes=[Route("/hello", hello)]), host="127.0.0.1", port=int(__import__("sys").argv[1]),
            access_log=False, log_level="warning", http="httptools", loop="uvloop", lifespan="off")
"""

HELLO_RAW_ASGI = """
import orjson, uvicorn
from urllib.parse import parse_qs
async def app(scope, receive, send):
    q = parse_qs(scope["query_string"].decode())
    body = orjson.dumps({"user": q.get("user", [None])[0], "score": 1.0})
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": body})
uvicorn.run(app, host="127.0.0.1", port=int(__import__("sys").argv[1]), access_log=False, log_level="warning",
            http="httptools", loop="uvloop", lifespan="off")
"""

HELLO_LITESTAR = """
import uvicorn
from litestar import Litestar, get
@get("/hello", sync_to_thread=False)
def hello(user: str | None = None) -> dict:
    return {"user": user, "score": 1.0}
uvicorn.run(Litestar([hello], openapi_config=None), host="127.0.0.1", port=int(__import__("sys").argv[1]),
            access_log=False, log_level="warning", http="httptools", loop="uvloop", lifespan="off")
"""

_USER, _ITEM = f"math.random(0, {N_USERS - 1})", f"math.random(0, {N_ITEMS - 1})"
_OBSERVATION = f"""'{{"user": ' .. {_USER} .. ', "item": ' .. {_ITEM} .. ', "score": 3.5}}'"""


def _get(path: str) -> str:
    return f'request = function() return wrk.format("GET", {path}) end'


def _post(path: str, body: str) -> str:
    return f'request = function() return wrk.format("POST", "{path}", {{["Content-Type"] = "application/json"}}, {body}) end'


# wrk Lua scripts: a random trained user (and song) per request.
LOADS = {
    "hello_get": _get(f'"/hello?user=" .. {_USER}'),
    "predict_get": _get(f'"/models/catify/predict?user=" .. {_USER} .. "&item=" .. {_ITEM}'),
    "predict_post": _post(
        "/models/catify/predict", f"""'{{"queries": [{{"user": ' .. {_USER} .. ', "item": ' .. {_ITEM} .. '}}]}}'"""
    ),
    "top_k_get": _get(f'"/models/catify/top_k?user=" .. {_USER} .. "&k=100"'),
    "observe": _post("/models/catify/observe", _OBSERVATION),
    "peer_hello": _post("/hello", f"""'{{"user": ' .. {_USER} .. '}}'"""),
    "peer_predict": _post("/predict", f"""'{{"user": ' .. {_USER} .. ', "item": ' .. {_ITEM} .. '}}'"""),
    "peer_observe": _post("/observe", _OBSERVATION),
}


@dataclass
class Server:
    """One server process: how to start it, when it is ready, and which loads it is measured under."""

    command: list[str]
    ready_path: str
    loads: dict[str, str]  # route label in the report -> key of LOADS
    env: dict[str, str] = field(default_factory=dict)
    port: int = 0
    proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pinned(cpu: int) -> list[str]:
    return ["taskset", "-c", str(cpu)] if shutil.which("taskset") else []


def wait_ready(url: str, proc: subprocess.Popen | None = None, timeout: float = 180) -> None:
    """Until `url` answers 200; fails at once if `proc` (the server) has exited."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{proc.args} exited with {proc.returncode}")
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise TimeoutError(url)


def start(server: Server, timeout: float = 180) -> None:
    server.port = free_port()
    server.proc = subprocess.Popen(
        [*pinned(0), *server.command, str(server.port)],
        env={**os.environ, **server.env},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # its own process group
    )
    wait_ready(server.url + server.ready_path, server.proc, timeout)


def signal_all(servers: list[Server], signum: int) -> None:
    for server in servers:
        if server.proc is not None and server.proc.poll() is None:
            os.killpg(server.proc.pid, signum)


def stop(server: Server) -> None:
    if server.proc is None or server.proc.poll() is not None:
        return
    os.killpg(server.proc.pid, signal.SIGTERM)  # the group this script started (BentoML has workers)
    try:
        server.proc.wait(60)
    except subprocess.TimeoutExpired:
        os.killpg(server.proc.pid, signal.SIGKILL)
        server.proc.wait()


def _ms(text: str) -> float:
    value, unit = re.fullmatch(r"([\d.]+)(us|ms|s|m|h)", text).groups()
    return float(value) * {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 6e4, "h": 3.6e6}[unit]


def run_wrk(url: str, script: Path, connections: int, duration: int, output: bool = False) -> Any:
    """wrk's figures (and, with `output`, its whole output: what the script's done() printed)."""
    out = subprocess.run(
        [*pinned(1), "wrk", "-t1", f"-c{connections}", f"-d{duration}s", "--latency", "-s", str(script), url],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    pct = dict(re.findall(r"^\s+(50|99)(?:\.000)?%\s+(\S+)\s*$", out, re.M))
    if set(pct) != {"50", "99"}:
        raise RuntimeError(f"wrk's output has no p50/p99:\n{out}")
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    socket_errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    stats = {
        "requests_per_s": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),
        "p50_ms": _ms(pct["50"]),
        "p99_ms": _ms(pct["99"]),
        "non_2xx": int(errors.group(1)) if errors else 0,
        # wrk leaves requests that time out (2 s) out of its latencies: count them beside p99
        "socket_errors": sum(map(int, socket_errors.groups())) if socket_errors else 0,
    }
    return (stats, out) if output else stats


def ensure_peer_venv() -> Path:
    """bench/.peer-venv with exactly bench/peer-requirements.txt; (re)made when the pins change."""
    stamp = PEER_VENV / "requirements.txt"
    wanted = PEER_REQUIREMENTS.read_text()
    if not (stamp.exists() and stamp.read_text() == wanted):
        print(f"making {PEER_VENV} (BentoML, pinned) ...", file=sys.stderr)
        shutil.rmtree(PEER_VENV, ignore_errors=True)
        subprocess.run([sys.executable, "-m", "venv", str(PEER_VENV)], check=True)
        subprocess.run(
            [str(PEER_VENV / "bin" / "python"), "-m", "pip", "install", "--quiet", "-r", str(PEER_REQUIREMENTS)],
            check=True,
        )
        stamp.write_text(wanted)
    return PEER_VENV / "bin" / "bentoml"


def train(home: Path, iterations: int) -> str:
    """Train the Catify model into `home` and activate it; returns the version id."""
    code = (
        "from pathlib import Path; from veloxserve.config import HomeLayout;"
        "from veloxserve.storage.pointer import write_pointer;"
        "from veloxserve.training.als import ALSConfig;"
        "from veloxserve.training.catify import generate_catify;"
        "from veloxserve.training.trainer import train_version;"
        f"layout = HomeLayout(Path({str(home)!r}));"
        f"m = train_version(layout, 'catify', generate_catify({N_USERS}, {N_ITEMS}, n_ratings=100000).ratings,"
        f" ALSConfig(rank=50, reg=1.0, prior_precision=1.0, iterations={iterations}));"
        "write_pointer(layout.active_file('catify'), m['version']); print(m['version'])"
    )
    return subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout.split()[-1]


def check_peer(veloxserve: Server, peer: Server, n_pairs: int = 50) -> dict[str, float]:
    """The peer must serve the same scores: trained users, and a new user after five observations.

    Runs before any load, so both start from the version's trained state."""
    rng = random.Random(0)
    pairs = [(rng.randrange(N_USERS), rng.randrange(N_ITEMS)) for _ in range(n_pairs)]
    observations = [("peer-check", rng.randrange(N_ITEMS), rng.choice([1.0, 3.0, 5.0])) for _ in range(5)]
    pairs += [("peer-check", item) for _, item, _ in observations]
    with httpx.Client(timeout=10) as http:

        def ours(user: object, item: int) -> float:
            answer = http.get(f"{veloxserve.url}/models/catify/predict", params={"user": user, "item": item})
            return answer.raise_for_status().json()["score"]

        def theirs(user: object, item: int) -> float:
            return (
                http.post(f"{peer.url}/predict", json={"user": user, "item": item}).raise_for_status().json()["score"]
            )

        for user, item, score in observations:
            http.post(
                f"{veloxserve.url}/models/catify/observe", json={"user": user, "item": item, "score": score}
            ).raise_for_status()
            http.post(f"{peer.url}/observe", json={"user": user, "item": item, "score": score}).raise_for_status()
        diff = max(abs(ours(u, i) - theirs(u, i)) for u, i in pairs)
    if diff > 1e-8:
        sys.exit(f"the peer's scores differ from veloxserve's by up to {diff}: not the same model")
    return {"queries": len(pairs), "observations": len(observations), "max_abs_score_difference": diff}


def summary(runs: list[dict[str, float]]) -> dict[str, object]:
    out: dict[str, object] = {key: round(statistics.median(r[key] for r in runs), 3) for key in runs[0]}
    out["non_2xx"] = sum(r["non_2xx"] for r in runs)
    out["socket_errors"] = sum(r["socket_errors"] for r in runs)
    out["requests_per_s_runs"] = [round(r["requests_per_s"]) for r in runs]
    return out


def paired_ratio(runs: dict, a: tuple[str, str], b: tuple[str, str], c: int) -> float:
    """Median over repeats of a's requests/s over b's (measured seconds apart in each repeat)."""
    ra, rb = runs[a][c], runs[b][c]
    return round(statistics.median(x["requests_per_s"] / y["requests_per_s"] for x, y in zip(ra, rb)), 3)


RATIOS = {  # name -> (numerator, denominator)
    "veloxserve_predict_get_to_floor": (("veloxserve", "predict_get"), ("veloxserve", "hello_floor")),
    "veloxserve_predict_post_to_floor": (("veloxserve", "predict_post"), ("veloxserve", "hello_floor")),
    "veloxserve_top_k_to_floor": (("veloxserve", "top_k_get"), ("veloxserve", "hello_floor")),
    "veloxserve_observe_to_floor": (("veloxserve", "observe_durable"), ("veloxserve", "hello_floor")),
    "bentoml_predict_to_its_floor": (("bentoml", "predict_post"), ("bentoml", "hello_floor")),
    "bentoml_observe_to_its_floor": (("bentoml", "observe_not_durable"), ("bentoml", "hello_floor")),
    "veloxserve_predict_get_to_bentoml_predict": (("veloxserve", "predict_get"), ("bentoml", "predict_post")),
    "veloxserve_predict_post_to_bentoml_predict": (("veloxserve", "predict_post"), ("bentoml", "predict_post")),
    "veloxserve_observe_to_bentoml_observe": (("veloxserve", "observe_durable"), ("bentoml", "observe_not_durable")),
    "veloxserve_floor_to_bentoml_floor": (("veloxserve", "hello_floor"), ("bentoml", "hello_floor")),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=int, default=5, help="seconds per wrk run")
    parser.add_argument("--connections", type=int, nargs="+", default=[1, 32])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="1 repeat × 2 s, no framework floors")
    parser.add_argument("--no-peer", action="store_true", help="skip BentoML")
    args = parser.parse_args()
    if args.quick:
        args.duration, args.repeats = 2, 1
    if not shutil.which("wrk"):
        sys.exit("wrk not found: apt-get install wrk")
    python = sys.executable
    report: dict[str, object] = {
        "machine": {"cpus": os.cpu_count(), "load_average_at_start": os.getloadavg()[0]},
        "settings": {
            "duration_s": args.duration,
            "repeats": args.repeats,
            "connections": args.connections,
            "model": f"Catify rank 50, {N_USERS} users x {N_ITEMS} songs",
            "server_cpu": 0,
            "wrk_cpu": 1,
        },
    }
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp) / "home"
        version = train(home, iterations=2 if args.quick else 5)
        scripts = {}
        for name, lua in LOADS.items():
            scripts[name] = Path(tmp) / f"{name}.lua"
            scripts[name].write_text(lua)
        servers = {
            "veloxserve": Server(
                [python, "-m", "veloxserve.cli", "serve", "--home", str(home), "--port"],
                "/healthz",
                {
                    "predict_get": "predict_get",
                    "predict_post": "predict_post",
                    "top_k_get": "top_k_get",
                    "observe_durable": "observe",
                },
            ),
            "veloxserve_floor": Server([python, "-c", HELLO_RAW_ASGI], "/hello?user=1", {"hello_floor": "hello_get"}),
        }
        if not args.no_peer:
            servers["bentoml"] = Server(
                [
                    str(ensure_peer_venv()),
                    "serve",
                    "peer_bentoml_service:SplitModel",
                    "--working-dir",
                    str(BENCH),
                    "--host",
                    "127.0.0.1",
                    "--port",
                ],
                "/readyz",
                {"hello_floor": "peer_hello", "predict_post": "peer_predict", "observe_not_durable": "peer_observe"},
                env={
                    "VELOX_PEER_VERSION_DIR": str(home / "models" / "catify" / "versions" / version),
                    "BENTOML_HOME": str(Path(tmp) / "bentoml"),
                    "BENTOML_DO_NOT_TRACK": "True",
                },
            )
        frameworks = {} if args.quick else {"starlette": HELLO_STARLETTE, "litestar": HELLO_LITESTAR}
        for framework, app in frameworks.items():
            if importlib.util.find_spec(framework) is None:  # litestar is in no extra: install it by hand
                report.setdefault("skipped", []).append(f"{framework} floor: not installed")
                continue
            servers[framework] = Server([python, "-c", app], "/hello?user=1", {"hello_floor": "hello_get"})
        runs: dict[tuple[str, str], dict[int, list[dict[str, float]]]] = {}
        try:
            for server in servers.values():
                start(server)
            if "bentoml" in servers:
                report["peer_check"] = check_peer(servers["veloxserve"], servers["bentoml"])
            for repeat in range(args.repeats):
                for c in args.connections:
                    for label, server in servers.items():
                        # The others are paused while one is measured: idle servers still run timers
                        # (BentoML's metrics and tracing took ~30% of the shared core) on CPU 0.
                        others = [s for s in servers.values() if s is not server]
                        signal_all(others, signal.SIGSTOP)
                        try:
                            for route, load in server.loads.items():
                                stats = run_wrk(server.url, scripts[load], c, args.duration)
                                runs.setdefault((label.removesuffix("_floor"), route), {}).setdefault(c, []).append(
                                    stats
                                )
                                print(f"[{repeat + 1}/{args.repeats}] {label} {route} c={c}: {stats}", file=sys.stderr)
                        finally:
                            signal_all(others, signal.SIGCONT)
        finally:
            for server in servers.values():
                stop(server)
    results: dict[str, dict[str, dict[str, object]]] = {}
    for (label, route), by_c in runs.items():
        results.setdefault(label, {})[route] = {f"c{c}": summary(r) for c, r in by_c.items()}
    report["results"] = results
    report["ratios"] = {
        f"c{c}": {name: paired_ratio(runs, a, b, c) for name, (a, b) in RATIOS.items() if a in runs and b in runs}
        for c in args.connections
    }
    if 32 in args.connections:
        predict = results["veloxserve"]["predict_get"]["c32"]
        report["targets_c32"] = {
            "predict_get_requests_per_s_ge_15000": predict["requests_per_s"] >= 15000,
            "predict_get_p99_le_5ms": predict["p99_ms"] <= 5.0,
            "predict_get_ge_60pct_of_floor": report["ratios"]["c32"]["veloxserve_predict_get_to_floor"] >= 0.6,
        }
    report["machine"]["load_average_at_end"] = os.getloadavg()[0]
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
