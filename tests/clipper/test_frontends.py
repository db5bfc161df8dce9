"""Several frontend processes over one home (veloxserve/clipper/frontends.py), each a real process
(tests/clipper/frontend_process.py) over real container processes: an attacher serves through
the owner's containers, feedback from every frontend reaches every policy, admin on an attacher
is refused naming the owner, and kill -9 of the owner hands the containers to an attacher."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest

from tests.clipper.conftest import write_callable
from tests.helpers import eventually
from veloxserve.clipper.feedback_log import FeedbackLog
from veloxserve.clipper.frontends import Frontend

ETA = 0.5


def _doubled_sum() -> Any:
    def predict(batch: Any) -> Any:  # nested: cloudpickle takes it by value
        import numpy as np

        return np.asarray(batch, dtype=float).sum(axis=1) * 2.0

    return predict


def _constant(value: float) -> Any:
    def predict(batch: Any) -> Any:
        import numpy as np

        return np.full(len(batch), value)

    return predict


class FrontendProcess:
    def __init__(self, home: Path, index: int, workers: int, model_dir: Path) -> None:
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tests.clipper.frontend_process",
                str(home),
                str(index),
                str(workers),
                str(model_dir),
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        ready = self._read()
        assert ready["ready"], ready
        self.started_as_owner = ready["owner"]

    def _read(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"frontend exited with {self.proc.wait(30)}")
        return orjson.loads(line)

    def call(self, op: str, **args: Any) -> dict[str, Any]:
        """{"ok": result} or {"error": {"status", "message"}}."""
        assert self.proc.stdin is not None
        self.proc.stdin.write(orjson.dumps({"op": op, "args": args}, option=orjson.OPT_SERIALIZE_NUMPY).decode() + "\n")
        self.proc.stdin.flush()
        return self._read()

    def ok(self, op: str, **args: Any) -> Any:
        answer = self.call(op, **args)
        assert "ok" in answer, answer
        return answer["ok"]

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(30)

    def stop(self) -> None:
        if self.proc.poll() is None:
            assert self.proc.stdin is not None
            self.proc.stdin.write("\n")
            self.proc.stdin.flush()
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:  # a hung shutdown must fail the test, not leak the process
                self.kill()
                raise


@pytest.fixture
def start(tmp_path: Path) -> Iterator[Any]:
    started: list[FrontendProcess] = []

    def frontend(index: int, home: Path = tmp_path / "home") -> FrontendProcess:
        started.append(FrontendProcess(home, index, 2, tmp_path))
        return started[-1]

    yield frontend
    for process in reversed(started):  # attachers first: no takeover on the way out
        process.stop()


def _models(tmp_path: Path) -> dict[str, Path]:
    return {
        "doubler": write_callable(tmp_path / "doubler.pkl", _doubled_sum()),
        "zero": write_callable(tmp_path / "zero.pkl", _constant(0.0)),
        "one": write_callable(tmp_path / "one.pkl", _constant(1.0)),
    }


def _pids(frontend: FrontendProcess, model: str) -> list[int]:
    return [r["pid"] for r in frontend.ok("describe_model", name=model)["replicas"]]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_a_second_frontend_serves_through_the_owners_containers_and_admin_there_is_refused(
    start: Any, tmp_path: Path
) -> None:
    models = _models(tmp_path)
    owner = start(0)
    assert owner.started_as_owner
    owner.ok("deploy", name="doubler", framework="callable", model=str(models["doubler"]), replicas=2)
    owner.ok("create_app", name="double", models=["doubler"], objective_ms=5000)
    attacher = start(1)
    assert not attacher.started_as_owner
    assert eventually(lambda: "doubler" in {m["model"] for m in attacher.ok("list_models")})
    assert sorted(_pids(attacher, "doubler")) == sorted(_pids(owner, "doubler"))  # the same containers
    rng = np.random.default_rng(0)
    for x in rng.normal(size=(20, 3)):
        answer = attacher.ok("predict", app="double", user="u", value=x.tolist())
        assert not answer["default"]
        assert answer["output"] == pytest.approx(2 * x.sum())
    served = attacher.ok("describe_model", name="doubler")["replicas"]
    assert sum(r["queries"] for r in served) == 20  # batched by the attacher's own queues

    refused = attacher.call("deploy", name="other", framework="callable", model=str(models["one"]))
    assert refused["error"]["status"] == 409
    assert "frontend 0" in refused["error"]["message"] and f"pid {owner.proc.pid}" in refused["error"]["message"]
    assert attacher.call("scale", name="doubler", replicas=1)["error"]["status"] == 409
    assert [m["model"] for m in owner.ok("list_models")] == ["doubler"]  # nothing deployed or scaled
    assert len(_pids(owner, "doubler")) == 2

    owner.ok("scale", name="doubler", replicas=1)  # the attacher follows the owner's admin
    assert eventually(lambda: _pids(attacher, "doubler") == _pids(owner, "doubler"))
    assert attacher.ok("predict", app="double", user="u", value=[1.0, 2.0, 3.0])["output"] == pytest.approx(12.0)


def test_feedback_from_both_frontends_reaches_the_ensemble_weights_of_both(start: Any, tmp_path: Path) -> None:
    models = _models(tmp_path)
    owner = start(0)
    for name in ("zero", "one"):
        owner.ok("deploy", name=name, framework="callable", model=str(models[name]))
    owner.ok("create_app", name="vote", models=["zero", "one"], policy="exp4", params={"eta": ETA}, objective_ms=5000)
    attacher = start(1)
    assert eventually(lambda: _has_app(attacher))
    labels = {owner: [1, 1, 0], attacher: [1, 1, 1, 1, 0]}  # model "one" is right on label 1, "zero" on 0
    for frontend, ys in labels.items():
        for y in ys:
            frontend.ok("observe", app="vote", user="u", value=[0.5], label=y)
    everything = [y for ys in labels.values() for y in ys]
    # Exp4: log w_i = -eta * sum of model i's zero-one losses, whatever order they were learned in
    log_w = -ETA * np.array([sum(y != 0 for y in everything), sum(y != 1 for y in everything)], dtype=float)
    expected = np.exp(log_w - log_w.max()) / np.exp(log_w - log_w.max()).sum()
    for frontend in (owner, attacher):
        assert eventually(lambda f=frontend: f.ok("describe_app", name="vote")["observed"] == len(everything))
        assert frontend.ok("describe_app", name="vote")["state"]["weights"] == pytest.approx(expected)
        output = frontend.ok("predict", app="vote", user="u", value=[0.5])["output"]
        assert output == pytest.approx(expected @ [0.0, 1.0])
    # each frontend's feedback is in its own file, durable
    apps = tmp_path / "home" / "clipper" / "apps"
    assert len(list(FeedbackLog(apps / "vote.feedback").replay())) == 3
    assert len(list(FeedbackLog(apps / "vote.feedback-1").replay())) == 5


def _has_app(frontend: FrontendProcess) -> bool:
    return "ok" in frontend.call("describe_app", name="vote")


def test_kill_9_of_the_owner_hands_the_containers_to_the_attacher_and_loses_no_feedback(
    start: Any, tmp_path: Path
) -> None:
    models = _models(tmp_path)
    owner = start(0)
    owner.ok("deploy", name="doubler", framework="callable", model=str(models["doubler"]))
    owner.ok("create_app", name="double", models=["doubler"], objective_ms=5000, loss="squared")
    attacher = start(1)
    assert eventually(lambda: _has_doubler(attacher))
    for _ in range(4):
        owner.ok("observe", app="double", user="u", value=[1.0], label=2.0)  # acknowledged
    before = _pids(owner, "doubler")
    owner.kill()
    assert eventually(lambda: not any(_alive(pid) for pid in before))  # containers die with their owner
    assert eventually(lambda: attacher.ok("owner"))
    assert eventually(lambda: _has_doubler(attacher) and not set(_pids(attacher, "doubler")) & set(before))
    answer = attacher.ok("predict", app="double", user="u", value=[1.5, 2.0])
    assert not answer["default"] and answer["output"] == pytest.approx(7.0)
    assert eventually(lambda: attacher.ok("describe_app", name="double")["observed"] == 4)  # the dead owner's
    attacher.ok("deploy", name="one", framework="callable", model=str(models["one"]))  # admin runs here now
    # the old owner comes back: it attaches to what the new owner serves
    back = start(0)
    assert not back.started_as_owner
    assert eventually(lambda: _has_doubler(back) and _pids(back, "doubler") == _pids(attacher, "doubler"))
    assert back.ok("predict", app="double", user="u", value=[3.0])["output"] == pytest.approx(6.0)


def _has_doubler(frontend: FrontendProcess) -> bool:
    return any(m["model"] == "doubler" and m["replicas"] for m in frontend.ok("list_models"))


@pytest.mark.parametrize(
    ("env", "expected"),
    [({}, Frontend(0, 1)), ({"VELOXSERVE_WORKER_INDEX": "2", "VELOXSERVE_WORKERS": "3"}, Frontend(2, 3))],
)
def test_the_frontend_comes_from_the_environment_serve_workers_sets(env: dict, expected: Frontend) -> None:
    assert Frontend.from_env(env) == expected
    assert Frontend.from_env(env).shared == (expected.workers > 1)


@pytest.mark.parametrize(
    "env",
    [
        {"VELOXSERVE_WORKER_INDEX": "-1", "VELOXSERVE_WORKERS": "2"},
        {"VELOXSERVE_WORKER_INDEX": "2", "VELOXSERVE_WORKERS": "2"},
        {"VELOXSERVE_WORKERS": "two"},
    ],
)
def test_a_bad_frontend_environment_says_what_to_set(env: dict) -> None:
    with pytest.raises(ValueError, match="VELOXSERVE_WORKER"):
        Frontend.from_env(env)
