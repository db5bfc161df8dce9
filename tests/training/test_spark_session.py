"""Starting Spark on a spark:// master is bounded: an absent master fails at once, one that never
answers fails at the deadline, each naming the master and what to do (run for real: Java 17, pyspark)."""

from __future__ import annotations

import socket
import subprocess
import sys
import time

import pytest

from veloxserve.errors import TrainingFailed
from veloxserve.training.spark_session import check_reachable, master_addresses


def test_master_addresses_are_each_host_and_port_of_the_url() -> None:
    assert master_addresses("spark://h1:7077") == [("h1", 7077)]
    assert master_addresses("spark://a.b:7077,c-d:7078") == [("a.b", 7077), ("c-d", 7078)]


def test_one_reachable_master_of_several_is_enough_and_none_fails_naming_each() -> None:
    with socket.socket() as refused, socket.socket() as listening:
        refused.bind(("127.0.0.1", 0))  # bound, not listening: connections to it are refused
        listening.bind(("127.0.0.1", 0))
        listening.listen()
        down, up = refused.getsockname()[1], listening.getsockname()[1]
        check_reachable(f"spark://127.0.0.1:{down},127.0.0.1:{up}", time.monotonic() + 5)
        with pytest.raises(TrainingFailed) as caught:
            check_reachable(f"spark://127.0.0.1:{down},localhost:{down}", time.monotonic() + 5)
    message = caught.value.message
    assert message.startswith(f"Cannot reach the Spark master spark://127.0.0.1:{down},localhost:{down} (")
    assert f"127.0.0.1:{down}: Connection refused" in message and f"localhost:{down}: " in message
    assert "engine local" in message


@pytest.mark.slow
def test_a_master_that_never_answers_fails_at_the_deadline_naming_it_and_the_process_ends() -> None:
    """A port that accepts connections and never answers (a hung or foreign service, to the driver):
    Spark alone would wait ~65 s; the start gives up at its deadline, saying at which stage, and the
    process ends though the abandoned start is still blocked in the JVM (run in a child process, as
    the retrain worker runs it: the session builder's lock stays held until Spark gives up)."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()  # the kernel completes the handshake; nobody ever reads or writes
        master = f"spark://127.0.0.1:{silent.getsockname()[1]}"
        code = (
            "import sys\n"
            "from veloxserve.errors import TrainingFailed\n"
            "from veloxserve.training.spark_session import spark_session\n"
            "try:\n"
            f"    spark_session({master!r}, start_timeout=8)\n"
            "except TrainingFailed as exc:\n"
            "    print(exc.message)\n"
            "    sys.exit(3)\n"
        )
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 3, done.stderr[-2000:]
    message = done.stdout.strip().splitlines()[-1]
    # The JVM may start after the port check passed, slowly on a loaded machine: the stage is registering.
    assert message.startswith(f"The Spark master {master} did not accept this application (register it) within 8 s")
    assert "spark_start_timeout" in message and "free cores" in message and "engine local" in message
