"""Several frontend processes over one home: one owns the model containers, the others attach.

One serving event loop caps how many queries it can batch (about 4k queries/s for a linear
model), so several `serve` processes over one home can each be a frontend of it (each told which
by VELOXSERVE_WORKER_INDEX and VELOXSERVE_WORKERS), and under `serve --workers N` every worker is
one: worker 0 the owner, the readers attachers that never take over (`may_own=False`: admin and
the containers stay with the learner, which the supervisor restarts):

- The frontend that holds `<home>/clipper/OWNER.lock` (an flock, released by the kernel when its
  process dies, kill -9 included) starts the containers, runs every admin operation and publishes
  `<home>/clipper/serving.json`: each model's serving version and its containers' attach sockets
  (container.py), and each application's configuration.
- Every other frontend attaches to those containers (AttachedReplica) and batches its own
  queries adaptively, so the model, not one loop, bounds throughput. Its admin operations answer
  409 naming the owner. It follows serving.json (deploys, rollbacks, scaling, restarted
  containers, applications) within a poll interval.
- Each frontend writes its application feedback to its own fsynced file and tails the others'
  (FeedbackTail), so every frontend's policy learns from all acknowledged feedback.
- When the owner dies, its containers die with it (they exit with their parent); the first
  attacher to take the lock becomes the owner, restarts the containers and publishes them, and
  the others re-attach. Acknowledged feedback is in the files, so nothing acknowledged is lost.

With one frontend (the default) there is no lock and nothing to attach: the runtime is the owner.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from veloxserve.clipper.application import AppConfig
from veloxserve.clipper.deployment import ModelDeployment
from veloxserve.clipper.feedback_log import FeedbackTail
from veloxserve.config import ApproximateSettings
from veloxserve.errors import Conflict
from veloxserve.storage.atomic import replace_atomically

if TYPE_CHECKING:
    from veloxserve.clipper.runtime import ClipperRuntime

log = logging.getLogger(__name__)
POLL_S = 0.2  # how soon an attacher follows the owner, takes over, and learns others' feedback


@dataclass(frozen=True)
class Frontend:
    """Which of `workers` frontend processes over one home this one is (index 0 .. workers-1)."""

    index: int = 0
    workers: int = 1
    may_own: bool = True  # False: only ever attaches (a reader of `serve --workers N`: worker 0 owns)

    def __post_init__(self) -> None:
        if not 0 <= self.index < self.workers:
            raise ValueError(
                f"Frontend index {self.index} is not in [0, {self.workers}): set VELOXSERVE_WORKER_INDEX "
                "to an integer below VELOXSERVE_WORKERS."
            )

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Frontend:
        """From VELOXSERVE_WORKER_INDEX and VELOXSERVE_WORKERS (set per process by whoever starts the
        frontends); neither set: the one frontend."""
        env = os.environ if env is None else env
        values = []
        for name, default in (("VELOXSERVE_WORKER_INDEX", "0"), ("VELOXSERVE_WORKERS", "1")):
            text = env.get(name, default)
            if not text.isdigit():
                raise ValueError(f"{name} must be a non-negative integer; got {text!r}.")
            values.append(int(text))
        return cls(values[0], max(values[1], 1))

    @property
    def shared(self) -> bool:
        return self.workers > 1


class OwnerLock:
    """An exclusive, non-blocking flock on a file: held until released or the process dies."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None

    def try_acquire(self) -> bool:
        if self._fd is not None:
            return True
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        self._fd = fd
        return True

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor releases the flock
            self._fd = None


class Coordinator:
    """This frontend's part: owner or attacher, the serving.json it publishes or follows, and the
    other frontends' feedback it learns from. Runs on the runtime's loop."""

    def __init__(self, runtime: ClipperRuntime, frontend: Frontend) -> None:
        self.runtime = runtime
        self.frontend = frontend
        self.lock = OwnerLock(runtime.registry.root / "OWNER.lock")
        self.path = runtime.registry.root / "serving.json"
        self.owner = not frontend.shared
        self._published: dict[str, Any] | None = None  # what this owner last wrote
        self._applied: dict[str, Any] | None = None  # what this attacher serves
        self._task: asyncio.Task | None = None
        self._closing = asyncio.Event()

    async def start(self) -> None:
        """Own the containers if no live frontend does (start them), else attach to them."""
        self._closing = asyncio.Event()
        if self.frontend.shared:
            self.owner = self.frontend.may_own and self.lock.try_acquire()
        if self.owner:
            await self.runtime.restore_models()
            self.runtime.restore_apps()
        else:
            await self._follow(self._read() or {})
        self.learn_others()
        if self.frontend.shared:
            self.publish()
            self._task = asyncio.get_running_loop().create_task(self._watch())

    async def close(self) -> None:
        """Stop following, after the poll under way (a takeover half done would leak containers)."""
        self._closing.set()
        if self._task is not None:
            await self._task
            self._task = None
        self.lock.release()

    def check_admin(self, operation: str) -> None:
        """A 409 naming the owner when this frontend only attaches (admin runs where the containers are)."""
        if self.owner:
            return
        owner = (self._applied or {}).get("owner") or {}
        raise Conflict(
            f"Frontend {self.frontend.index} attaches to the containers of frontend {owner.get('frontend', '?')} "
            f"(pid {owner.get('pid', '?')}), which runs Clipper's admin operations; {operation} was not run. "
            "Send it to the owner's port: it runs there, and every "
            "frontend follows the change within a second."
        )

    # ---- the owner ---------------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        runtime = self.runtime
        return {
            "owner": {"frontend": self.frontend.index, "pid": os.getpid()},
            "models": {
                name: {"version": d.version, "containers": d.containers()} for name, d in runtime.deployments.items()
            },
            "apps": {name: app.config.to_json() for name, app in runtime.apps.items()},
        }

    def publish(self) -> None:
        """Write serving.json when what is served changed (atomically: a reader sees old or new)."""
        if not (self.owner and self.frontend.shared):
            return
        state = self.state()
        if state != self._published:
            body = orjson.dumps(state, option=orjson.OPT_INDENT_2)
            replace_atomically(self.path, lambda fh: fh.write(body))
            self._published = state

    async def _take_over(self) -> None:
        log.warning("frontend %d takes over Clipper's containers (the owner frontend died)", self.frontend.index)
        async with self.runtime.admin_lock():
            self.owner = True
            attached, self.runtime.deployments = self.runtime.deployments, {}
            await asyncio.gather(*(d.stop() for d in attached.values()))
            await self.runtime.restore_models()
            self.publish()

    # ---- an attacher -------------------------------------------------------------------------
    def _read(self) -> dict[str, Any] | None:
        try:
            return orjson.loads(self.path.read_bytes())
        except (FileNotFoundError, orjson.JSONDecodeError):
            return None

    async def _follow(self, state: dict[str, Any]) -> None:
        """Serve what the owner published: attach to new containers, drop what it no longer serves."""
        runtime = self.runtime
        models = state.get("models", {})
        for name, entry in models.items():
            current = runtime.deployments.get(name)
            if current is not None and (current.version, current.containers()) == (
                entry["version"],
                entry["containers"],
            ):
                continue
            runtime.deployments[name] = await self._attach(name, entry["version"], entry["containers"])
            if current is not None:
                await current.stop()
        for name in set(runtime.deployments) - set(models):
            await runtime.deployments.pop(name).stop()
        apps = state.get("apps", {})
        for name, config in apps.items():
            app = runtime.apps.get(name)
            if app is None or app.config.to_json() != config:
                if app is not None:
                    app.log.close()
                runtime.apps[name] = runtime.application(AppConfig.from_json(config))
        for name in set(runtime.apps) - set(apps):
            runtime.apps.pop(name).log.close()
        self._applied = state

    async def _attach(self, name: str, version: str, containers: list[dict[str, Any]]) -> ModelDeployment:
        runtime = self.runtime
        spec, batching = runtime.registry.spec(name, version)
        meta = runtime.registry.meta(name, version)
        deployment = ModelDeployment(name, version, spec, batching, runtime.cache, runtime.context)
        if meta.get("approximate") is not None:
            deployment.approximate = ApproximateSettings.from_json(meta["approximate"])
        deployment.input_shape, deployment.output_shape = meta.get("input_shape"), meta.get("output_shape")
        await deployment.attach(containers)
        return deployment

    # ---- everyone ----------------------------------------------------------------------------
    def learn_others(self) -> None:
        """Feed each application the feedback other frontends acknowledged since the last call."""
        for name, app in list(self.runtime.apps.items()):
            for index, path in self.runtime.registry.feedback_logs(name).items():
                if index != self.frontend.index and index not in app.tails:
                    app.tails[index] = FeedbackTail(path)
            for tail in app.tails.values():
                app.learn(tail.read())

    async def _watch(self) -> None:
        while not self._closing.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._closing.wait(), POLL_S)
                return
            try:
                if not self.owner and self.frontend.may_own and self.lock.try_acquire():
                    await self._take_over()
                if self.owner:
                    self.publish()
                else:
                    state = self._read()
                    if state is not None and state != self._applied:
                        async with self.runtime.admin_lock():
                            await self._follow(state)
                self.learn_others()
            except Exception:  # a bad poll must not stop the following ones
                log.exception("frontend %d: following the other frontends failed", self.frontend.index)
