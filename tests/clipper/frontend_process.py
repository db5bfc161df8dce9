"""One Clipper frontend in its own process, driven over stdin/stdout, for tests/clipper/test_frontends.py.

    python -m tests.clipper.frontend_process HOME INDEX WORKERS MODEL_DIR

It starts a ClipperRuntime as frontend INDEX of WORKERS over HOME, prints {"ready": ...}, then
answers one JSON request per line ({"op": runtime method, "args": {...}}) with {"ok": result} or
{"error": {"status", "message"}}; `owner` and `describe_app` read state. An empty line stops it.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import Any

import orjson

from veloxserve.clipper.frontends import Frontend
from veloxserve.clipper.runtime import ClipperRuntime
from veloxserve.errors import VeloxError

_OPS = {"deploy", "create_app", "predict", "observe", "describe_model", "list_models", "scale", "remove_app"}


async def _serve(home: Path, index: int, workers: int, model_dir: Path) -> None:
    runtime = ClipperRuntime(home, model_dirs=[model_dir], frontend=Frontend(index, workers))
    await runtime.start()
    loop = asyncio.get_running_loop()
    _say({"ready": True, "owner": runtime.owner})
    try:
        while line := await loop.run_in_executor(None, sys.stdin.readline):
            if not line.strip():
                break
            request = orjson.loads(line)
            op, args = request["op"], request.get("args", {})
            try:
                if op == "owner":
                    result: Any = runtime.owner
                elif op == "describe_app":
                    result = runtime.app(args["name"]).describe()
                elif op in _OPS:
                    result = getattr(runtime, op)(**args)
                    if asyncio.iscoroutine(result):
                        result = await result
                else:
                    raise ValueError(f"unknown op {op!r}")
                _say({"ok": result})
            except VeloxError as exc:
                _say({"error": {"status": exc.status, "message": exc.message}})
    finally:
        await runtime.close()


def _say(message: dict[str, Any]) -> None:
    sys.stdout.write(orjson.dumps(message, option=orjson.OPT_SERIALIZE_NUMPY).decode() + "\n")
    sys.stdout.flush()


if __name__ == "__main__":
    home, index, workers, model_dir = sys.argv[1:5]
    asyncio.run(_serve(Path(home), int(index), int(workers), Path(model_dir)))
