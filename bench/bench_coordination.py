"""How long a version switch and a forget take to be applied and acknowledged by two processes.

    PYTHONPATH=$PWD .venv/bin/python bench/bench_coordination.py [--rounds 200] [--heartbeat 0.5]
    PYTHONPATH=$PWD .venv/bin/python bench/bench_coordination.py --quick   # 20 rounds: checks it runs

Starts its own redis-server (tests/helpers.RedisServer) and a second Python process running a
Coordinator (serving/coordination.py) whose apply does nothing: this measures the protocol
(announce, the follower's wake-up or poll, its acknowledgement, the announcer's polling of
acks), not a real swap's build of a version. The announcer is this process; each round is one
`announce_and_wait`. Prints one JSON document: per kind, median and p99 in ms.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests.helpers import RedisServer  # noqa: E402
from veloxserve.serving.coordination import Coordinator  # noqa: E402
from veloxserve.storage.redis_lifecycle import FORGET, SWITCH, RedisLifecycle  # noqa: E402
from veloxserve.storage.redis_store import RedisUserStore  # noqa: E402

_FOLLOWER = """
import sys, time
from veloxserve.serving.coordination import Coordinator
from veloxserve.storage.redis_lifecycle import RedisLifecycle
from veloxserve.storage.redis_store import RedisUserStore
store = RedisUserStore(sys.argv[1])
Coordinator(RedisLifecycle(store, "m"), "b", lambda a: None, lambda v: None, heartbeat=float(sys.argv[2])).start()
print("ready", flush=True)
sys.stdin.read()
"""


def _figures(seconds: list[float]) -> dict:
    ms = sorted(s * 1000 for s in seconds)
    return {
        "n": len(ms),
        "median_ms": round(statistics.median(ms), 2),
        "p99_ms": round(ms[min(len(ms) - 1, int(0.99 * len(ms)))], 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=200)
    parser.add_argument("--heartbeat", type=float, default=0.5)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    rounds = 20 if args.quick else args.rounds
    with tempfile.TemporaryDirectory() as tmp:
        redis_server = RedisServer(Path(tmp) / "redis").start()
        url = f"{redis_server.url}?prefix=bench"
        follower = subprocess.Popen(
            [sys.executable, "-c", _FOLLOWER, url, str(args.heartbeat)], stdin=subprocess.PIPE, stdout=subprocess.PIPE
        )
        store = RedisUserStore(url)
        coordinator = Coordinator(RedisLifecycle(store, "m"), "a", lambda a: None, lambda v: None, heartbeat=0.05)
        try:
            assert follower.stdout is not None and follower.stdout.readline().strip() == b"ready"
            coordinator.start()
            timings: dict[str, list[float]] = {SWITCH: [], FORGET: []}
            for n in range(rounds):
                for kind in (SWITCH, FORGET):
                    start = time.perf_counter()
                    coordinator.announce_and_wait(kind, f"x{n}", timeout=30)
                    timings[kind].append(time.perf_counter() - start)
        finally:
            coordinator.close()
            store.close()
            follower.kill()
            follower.wait()
            redis_server.stop()
    print(
        json.dumps(
            {"rounds": rounds, "follower_heartbeat_s": args.heartbeat, **{k: _figures(v) for k, v in timings.items()}},
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
