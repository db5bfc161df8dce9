"""Coordinator: one process's side of a model's lifecycle shared over Redis (storage/redis_lifecycle.py).

Each process runs per model a heartbeat thread (it is alive) and a thread that, every `heartbeat` seconds, reads
the announcements after the last one it applied, applies each in order (`apply`: swap to the
announced version and catch up from every instance's log, or forget the user) and only then
acknowledges it. A process that was down or partitioned longer than the stream keeps reads
nothing it can trust: it converges on the active-version pointer instead (`converge`). The
thread is the only one that talks to Redis for this; the event loop never waits on it (the
HTTP side calls `announce_and_wait` off the loop).

`announce_and_wait` announces, then waits until every live instance acknowledged, or raises
NotAcknowledged (504) naming those that did not within `timeout`: the announcement stays (the
pointer in Redis is the truth), so they apply it when they can, and the caller may retry.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from veloxserve.errors import NotAcknowledged, StoreUnavailable
from veloxserve.storage.redis_lifecycle import Announcement, Lease, RedisLifecycle

log = logging.getLogger(__name__)


class Coordinator:
    """Heartbeats, applies and acknowledges one model's announcements for instance `instance`."""

    def __init__(
        self,
        lifecycle: RedisLifecycle,
        instance: str,
        apply: Callable[[Announcement], None],
        converge: Callable[[str | None], None],
        *,
        heartbeat: float = 0.5,
    ) -> None:
        """`apply(announcement)` applies one announcement in this process; `converge(version)` makes
        it serve the active version after it missed announcements (None: no switch announced yet)."""
        self.lifecycle = lifecycle
        self.instance = instance
        self._apply = apply
        self._converge = converge
        self._heartbeat = heartbeat
        self._after = "0-0"
        self._fresh = True  # nothing applied yet: converge on the pointer first
        self.applied = 0  # the last announcement applied here
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"lifecycle-{lifecycle.model}", daemon=True)
        # Its own thread: a process busy building a version for a swap is alive, and is waited for.
        self._beat = threading.Thread(target=self._beating, name=f"heartbeat-{lifecycle.model}", daemon=True)

    def start(self) -> Coordinator:
        """Join the live instances, converge on what Redis says, and start following it."""
        self.lifecycle.heartbeat(self.instance, self._heartbeat * 3)
        self._catch_up()
        self._thread.start()
        self._beat.start()
        return self

    def announce_and_wait(self, kind: str, what: str, timeout: float, lease: Lease | None = None) -> int:
        """Announce (refused, FencedOut, for a stale `lease`), apply it here, and wait for every
        live instance's acknowledgement; its sequence number, or NotAcknowledged naming who did not."""
        seq = self.lifecycle.announce(kind, what, lease)
        end = time.monotonic() + timeout
        while pending := self.lifecycle.pending(seq):
            if time.monotonic() >= end:
                raise NotAcknowledged(
                    f"The {kind} of {what!r} ({self.lifecycle.model!r}, announcement {seq}) is recorded in Redis, but "
                    f"instances {', '.join(pending)} did not apply it within {timeout} s. They apply it once they "
                    "answer (or drop out of the live instances when their heartbeats stop); check their /healthz."
                )
            time.sleep(min(0.02, self._heartbeat / 4))
        return seq

    def _catch_up(self, block: float = 0.0) -> None:
        """Apply what was announced since the last round, in order, and acknowledge it."""
        read = self.lifecycle.read(self._after, block=0.0 if self._fresh else block)
        if self._fresh or (read and read[0].seq > self.applied + 1):  # first start, or trimmed off the stream
            version, _ = self.lifecycle.active()  # read after the stream: at least as new as what was read
            self._converge(version)
            for announcement in read:
                if announcement.kind != "switch":
                    self._apply(announcement)  # forgets (trimmed ones are in the forgotten set Redis keeps)
            self._fresh = False
            if read:  # acknowledge only what was read and applied: a newer one is applied next round
                self._mark(read[-1].entry, read[-1].seq)
            return
        for announcement in read:
            self._apply(announcement)
            self._mark(announcement.entry, announcement.seq)

    def _mark(self, entry: str, seq: int) -> None:
        self._after, self.applied = entry, seq
        self.lifecycle.acknowledge(self.instance, seq)

    def _run(self) -> None:
        # Blocks on the stream (XREAD BLOCK) for a short while, under the socket timeout, so a
        # follower applies an announcement as it is made rather than at its next poll.
        block = min(self._heartbeat, self.lifecycle.socket_timeout / 2)
        while not self._stop.is_set():
            try:
                self._catch_up(block)
            except StoreUnavailable as exc:  # Redis failed: the next round tries again
                log.error("following the lifecycle of %s failed: %s", self.lifecycle.model, exc.message)
                self._stop.wait(self._heartbeat)
            except Exception:  # the thread must outlive anything one round does
                log.exception("applying a lifecycle announcement of %s failed", self.lifecycle.model)
                self._stop.wait(self._heartbeat)

    def _beating(self) -> None:
        while not self._stop.wait(self._heartbeat):
            try:
                self.lifecycle.heartbeat(self.instance, self._heartbeat * 3)
            except StoreUnavailable as exc:  # missed beats: others stop waiting for this process
                log.error("the heartbeat of %s failed: %s", self.lifecycle.model, exc.message)

    def close(self) -> None:
        """Stop following and leave the live instances (nobody waits for this process any more)."""
        self._stop.set()
        for thread in (self._thread, self._beat):
            if thread.is_alive():
                thread.join(5.0)
        try:
            self.lifecycle.leave(self.instance)
        except StoreUnavailable:
            pass  # its heartbeat expires by itself


class HeldLease:
    """A training lease taken by this process, renewed every third of its expiry until released.
    A renewal that finds it expired or taken stops renewing: the promotion with it is then refused
    (FencedOut) by the script that would move the pointer, so the version stays ready, not active."""

    def __init__(self, lifecycle: RedisLifecycle, holder: str, seconds: float) -> None:
        self.lifecycle = lifecycle
        self.lease: Lease = lifecycle.acquire(holder, seconds)  # Conflict naming who holds it
        self._seconds = seconds
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._renewing, name=f"lease-{lifecycle.model}", daemon=True)
        self._thread.start()

    def _renewing(self) -> None:
        while not self._stop.wait(self._seconds / 3):
            try:
                if not self.lifecycle.renew(self.lease, self._seconds):
                    log.error(
                        "the training lease of %s (token %d) expired or was taken over: its retrain will not be "
                        "promoted",
                        self.lifecycle.model,
                        self.lease.token,
                    )
                    return
            except StoreUnavailable as exc:  # the next round tries again, while the lease lasts
                log.error("renewing the training lease of %s failed: %s", self.lifecycle.model, exc.message)

    def release(self) -> None:
        self._stop.set()
        self._thread.join(5.0)
        try:
            self.lifecycle.release(self.lease)
        except StoreUnavailable:
            pass  # it expires by itself
