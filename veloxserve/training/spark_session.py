"""A SparkSession for training that is ready within a bound, or a TrainingFailed saying why not.

Left to itself, Spark (4.x) turns a standalone master that is not there into a wait and an
unreadable error: the driver's StandaloneAppClient tries to register 3 times, 20 s apart (fixed
constants, no setting changes them), then gives up with "All masters are unresponsive!", and
pyspark raises "Cannot call methods on a stopped SparkContext" about 65 s after the JVM started
(measured with a refused port). A master that accepts the application but has no worker with free
cores and memory is worse: the session starts, and the first job waits for an executor for ever.

So for a `spark://` master, starting is bounded by one deadline, `start_timeout` seconds: each
master's port is tried first (a refused port fails at once, before any JVM starts), then the
session must start and the first executor register before the deadline. Local masters start no
cluster and are not bounded. The deadline covers starting only: a fit takes as long as it takes.
"""

from __future__ import annotations

import socket
import threading
import time
from typing import Any

from veloxserve.errors import TrainingFailed

DEFAULT_START_TIMEOUT = 60.0  # seconds: a healthy standalone cluster registers and launches in well under that
_LOCAL = (
    "or train with engine local instead (a retrain policy's `engine: local`: "
    "veloxserve policy --model NAME --engine local)."
)


def spark_session(master: str, app: str = "veloxserve-train", *, start_timeout: float = DEFAULT_START_TIMEOUT):
    """A SparkSession for training; quiet, no UI, few shuffle partitions (ALS data is small).
    On a `spark://` master, TrainingFailed naming it unless it is ready within `start_timeout` s."""
    try:
        from pyspark.sql import SparkSession
    except ImportError:
        raise TrainingFailed(
            "The Spark engine needs pyspark: pip install 'veloxserve[spark]' (make test installs it). "
            "Spark also needs Java 17 or newer on PATH."
        ) from None
    builder = (
        SparkSession.builder.master(master)
        .appName(app)
        .config("spark.ui.enabled", "false")
        .config("spark.ui.showConsoleProgress", "false")
        .config("spark.sql.shuffle.partitions", "8")
        .config("spark.driver.memory", "2g")
        .config("spark.sql.session.timeZone", "UTC")
        .config("spark.sql.execution.arrow.pyspark.enabled", "true")
    )
    if not master.startswith("spark://"):
        return _quiet(builder.getOrCreate())
    return _start_bounded(builder, master, start_timeout)


def _quiet(session: Any) -> Any:
    session.sparkContext.setLogLevel("ERROR")
    return session


def _start_bounded(builder: Any, master: str, start_timeout: float) -> Any:
    """Reach, register, get an executor, all within the deadline. The start runs in a daemon thread:
    a py4j call cannot be interrupted, so at the deadline it is abandoned (the worker process exits,
    and the JVM with it: it stops when its parent's pipe closes)."""
    deadline = time.monotonic() + start_timeout
    state: dict[str, Any] = {"stage": "answer on its port"}

    def start() -> None:
        try:
            check_reachable(master, deadline)
            state["stage"] = "accept this application (register it)"
            session = _quiet(builder.getOrCreate())
            state["stage"] = "give this application an executor"
            if _has_executor(session, deadline):
                state["session"] = session
            else:
                session.stop()  # unregisters the application: the master's queue is left as it was
        except BaseException as exc:  # handed to the caller's thread
            state["error"] = exc

    thread = threading.Thread(target=start, name="spark-start", daemon=True)
    thread.start()
    thread.join(max(0.0, deadline - time.monotonic()) + 1.0)  # the wait loop itself stops at the deadline
    if "session" in state:
        return state["session"]
    error = state.get("error")
    if isinstance(error, TrainingFailed):
        raise error
    if error is not None:  # e.g. Spark gave up registering by itself (a start_timeout over its own ~65 s)
        lines = [line.strip(" :.") for line in str(error).strip().splitlines() if line.strip(" :.")]
        raise TrainingFailed(
            f"Spark could not start on the master {master}: {'. '.join(lines[:2]) or type(error).__name__}. "
            f"Check that the master is running and that this machine can reach it, {_LOCAL}"
        )
    raise TrainingFailed(
        f"The Spark master {master} did not {state['stage']} within {start_timeout:g} s (spark_start_timeout). "
        "Check that the master is running and has live workers with free cores and memory (its web UI lists "
        f"them), raise the policy's spark_start_timeout if the cluster is only slow to start, {_LOCAL}"
    )


def master_addresses(master: str) -> list[tuple[str, int]]:
    """The (host, port) of each master in spark://h1:p1[,h2:p2] (standby masters of an HA cluster)."""
    out = []
    for part in master.removeprefix("spark://").split(","):
        host, _, port = part.rpartition(":")
        out.append((host, int(port)))
    return out


def check_reachable(master: str, deadline: float) -> None:
    """TrainingFailed naming the master unless at least one of its masters accepts a TCP
    connection (each tried for its share of the time left): Spark would retry a refused port for ~65 s."""
    addresses = master_addresses(master)
    failures = []
    for host, port in addresses:
        timeout = max(0.1, (deadline - time.monotonic()) / len(addresses))
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            return
        except OSError as exc:
            failures.append(f"{host}:{port}: {exc.strerror or exc}")
    raise TrainingFailed(
        f"Cannot reach the Spark master {master} ({'; '.join(failures)}). Check that the master is running and "
        f"that this machine can reach it (the URL is the one its web UI shows, spark://HOST:7077 by default), {_LOCAL}"
    )


def _has_executor(session: Any, deadline: float) -> bool:
    """Whether an executor besides the driver (the tracker lists the driver too) registers before
    the deadline. With dynamic allocation none starts before the first job: nothing to wait for."""
    sc = session.sparkContext
    if sc.getConf().get("spark.dynamicAllocation.enabled", "false").lower() == "true":
        return True
    tracker = sc._jsc.sc().statusTracker()
    while len(tracker.getExecutorInfos()) < 2:
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.2)
    return True
