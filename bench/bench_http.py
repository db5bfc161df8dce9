"""HTTP benchmark: predict, top-k and durable observe against the same stack's hello-world floor.

It also measures the floors of the candidate stacks (Starlette, Litestar, a raw ASGI callable, all
on uvicorn with httptools + uvloop): the numbers behind the choice of Starlette in docs/http.md.

    .venv/bin/python bench/bench_http.py [--duration 10] [--connections 1 32]

Needs wrk (Debian: `apt-get install wrk`). The server is pinned to CPU 0 and wrk to CPU 1 (this
machine has 2 cores), so the load generator does not steal the server's core. Each figure is the
median of --repeats runs; latency p50/p99 are wrk's. Prints one JSON document.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

HELLO_APP = '''
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
'''

RAW_ASGI_APP = '''
import orjson, uvicorn
from urllib.parse import parse_qs
async def app(scope, receive, send):
    q = parse_qs(scope["query_string"].decode())
    body = orjson.dumps({"user": q.get("user", [None])[0], "score": 1.0})
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": body})
uvicorn.run(app, host="127.0.0.1", port=int(__import__("sys").argv[1]), access_log=False, log_level="warning",
            http="httptools", loop="uvloop", lifespan="off")
'''

LITESTAR_APP = '''
import uvicorn
from litestar import Litestar, get
@get("/hello", sync_to_thread=False)
def hello(user: str | None = None) -> dict:
    return {"user": user, "score": 1.0}
uvicorn.run(Litestar([hello], openapi_config=None), host="127.0.0.1", port=int(__import__("sys").argv[1]),
            access_log=False, log_level="warning", http="httptools", loop="uvloop", lifespan="off")
'''

LUA = {
    "hello": 'request = function() return wrk.format("GET", "/hello?user=" .. math.random(0, 1999)) end',
    "predict": 'request = function() return wrk.format("GET", "/models/catify/predict?user=" .. math.random(0, 1999)'
               ' .. "&item=" .. math.random(0, 999)) end',
    "top_k": 'request = function() return wrk.format("GET", "/models/catify/top_k?user=" .. math.random(0, 1999)'
             ' .. "&k=100") end',
    "observe": 'request = function() return wrk.format("POST", "/models/catify/observe", '
               '{["Content-Type"] = "application/json"}, \'{"user": \' .. math.random(0, 1999) .. '
               '\', "item": \' .. math.random(0, 999) .. \', "score": 3.5}\') end',
}


def pinned(cpu: int) -> list[str]:
    return ["taskset", "-c", str(cpu)] if shutil.which("taskset") else []


def wait_ready(url: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            httpx.get(url, timeout=1)
            return
        except httpx.HTTPError:
            time.sleep(0.2)
    raise TimeoutError(url)


def _ms(value: str, unit: str) -> float:
    return float(value) * {"us": 1e-3, "ms": 1.0, "s": 1e3}[unit]


def run_wrk(url: str, script: Path, connections: int, duration: int) -> dict[str, float]:
    out = subprocess.run(
        [*pinned(1), "wrk", "-t1", f"-c{connections}", f"-d{duration}s", "--latency", "-s", str(script), url],
        capture_output=True, text=True, check=True,
    ).stdout
    pct = dict(re.findall(r"^\s+(50|99)(?:\.000)?%\s+([\d.]+(?:us|ms|s))$", out, re.M))
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    result = {"requests_per_s": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))}
    for key, text in pct.items():
        value, unit = re.fullmatch(r"([\d.]+)(us|ms|s)", text).groups()
        result[f"p{key}_ms"] = _ms(value, unit)
    result["non_2xx"] = int(errors.group(1)) if errors else 0
    return result


def median_runs(runs: list[dict[str, float]]) -> dict[str, float]:
    return {key: round(statistics.median(r[key] for r in runs), 3) for key in runs[0]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=int, default=10)
    parser.add_argument("--connections", type=int, nargs="+", default=[1, 32])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    if not shutil.which("wrk"):
        sys.exit("wrk not found: apt-get install wrk")
    python = sys.executable
    report: dict[str, object] = {"machine": {"cpus": os.cpu_count()}, "stack": "raw ASGI+uvicorn(httptools,uvloop)+orjson"}
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp) / "home"
        subprocess.run([python, "-c", (
            "from pathlib import Path; from veloxserve.config import HomeLayout;"
            "from veloxserve.storage.pointer import write_pointer;"
            "from veloxserve.training.als import ALSConfig;"
            "from veloxserve.training.catify import generate_catify;"
            "from veloxserve.training.trainer import train_version;"
            f"layout = HomeLayout(Path({str(home)!r}));"
            "m = train_version(layout, 'catify', generate_catify(2000, 1000, n_ratings=100000).ratings,"
            " ALSConfig(rank=50, reg=1.0, prior_precision=1.0, iterations=5));"
            "write_pointer(layout.active_file('catify'), m['version'])")], check=True)
        scripts = {}
        for name, lua in LUA.items():
            scripts[name] = Path(tmp) / f"{name}.lua"
            scripts[name].write_text(lua)
        servers = {
            "hello_starlette": [*pinned(0), python, "-c", HELLO_APP, "18731"],
            "hello_raw_asgi": [*pinned(0), python, "-c", RAW_ASGI_APP, "18733"],
            "hello_litestar": [*pinned(0), python, "-c", LITESTAR_APP, "18734"],
            "veloxserve": [*pinned(0), python, "-m", "veloxserve.cli", "serve", "--home", str(home), "--port", "18732"],
        }
        for label, command in servers.items():
            proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            port = command[-1]
            try:
                hello = label.startswith("hello")
                wait_ready(f"http://127.0.0.1:{port}/hello" if hello else f"http://127.0.0.1:{port}/healthz")
                for route in ["hello"] if hello else ["predict", "top_k", "observe"]:
                    name = label if hello else route
                    for c in args.connections:
                        runs = [run_wrk(f"http://127.0.0.1:{port}", scripts[route], c, args.duration)
                                for _ in range(args.repeats)]
                        report[f"{name}_c{c}"] = median_runs(runs)
                        print(f"{name} c={c}: {report[f'{name}_c{c}']}", file=sys.stderr)
            finally:
                proc.terminate()
                proc.wait(60)
    for route in ("predict", "top_k", "observe"):
        for c in args.connections:
            report[f"{route}_c{c}"]["ratio_to_raw_asgi_floor"] = round(  # the stack veloxserve uses
                report[f"{route}_c{c}"]["requests_per_s"] / report[f"hello_raw_asgi_c{c}"]["requests_per_s"], 3)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
