"""The retraining process: `python -m veloxserve.training.worker '<json spec>'`.

Training runs in its own process so serving and online learning keep their cores' worth of
Python and their latency while θ is fitted, and so a trainer that crashes (or is killed, or runs
out of memory) takes nothing down with it. The process only reads the base data and the log and
fills the version id reserved for it; the server decides what to do with the result. Its last
stdout line is the version's meta as JSON, or, when training failed for a reason veloxserve names
(a VeloxError: a bad parameter, an unreachable Spark master), {"error": message} with exit status
1: the server shows that message, not whatever the JVM or a traceback printed last on stderr.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from veloxserve.config import HomeLayout
from veloxserve.errors import VeloxError


def main(argv: list[str] | None = None) -> int:
    spec = json.loads((argv if argv is not None else sys.argv[1:])[0])
    layout = HomeLayout(Path(spec["home"]))
    from veloxserve.training.trainer import retrain_version  # after argument parsing: numba loads slowly

    try:
        meta = retrain_version(
            layout,
            spec["model"],
            spec["version"],
            parent=spec["parent"],
            upto_lsn=int(spec["upto_lsn"]),
            reason=spec["reason"],
            engine=spec.get("engine") or "local",
            spark_master=spec.get("spark_master"),
            spark_start_timeout=spec.get("spark_start_timeout"),
            overrides=spec.get("overrides") or {},
        )
    except VeloxError as exc:
        print(json.dumps({"error": exc.message, "type": type(exc).__name__}), flush=True)
        return 1
    print(json.dumps(meta, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
