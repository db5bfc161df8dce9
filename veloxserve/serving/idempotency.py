"""Exactly-once observations: a window of idempotency keys already logged, and their LSNs.

A client that got no answer, a timeout or a 503 cannot know whether its observations reached the
log (a 503 after a full disk or a Redis outage may still be learned later), so it retries. With an
`id` per observation the retry is answered like the original (its LSN, `duplicate`) instead of
being learned twice. The window maps a key to the LSN of the record that carries it; records keep
the key (observation_log's `id` field), so the window is rebuilt from the log tail at start and
survives restarts. A key is claimed under the model's lock before its record is appended, so a
retry racing its original finds the claim and waits for the same LSN; a key whose record never
reached the log (the log failed, or the append was refused) is released, so its retry is learned.

Keys are remembered for `idempotency_seconds` and at most `idempotency_keys` of them (the newest):
a retry later than that is learned again. With several processes over Redis see RedisWindow.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from veloxserve.errors import invalid_parameter
from veloxserve.storage.observation_log import ObservationLog, _segments, read_log
from veloxserve.storage.redis_claims import RedisKeyClaims
from veloxserve.storage.redis_store import RedisUserStore

MAX_ID = 128  # characters of an idempotency key


def check_key(key: object, field: str, where: str = "observe") -> str | None:
    """The key of one observation (None when it has none); 400 naming the field otherwise."""
    if key is None:
        return None
    if not isinstance(key, str) or not 0 < len(key) <= MAX_ID:
        raise invalid_parameter(
            field,
            where,
            f"an idempotency key: a string of 1-{MAX_ID} characters, the same on "
            "every retry of this observation (or leave it out)",
            key,
        )
    return key


@dataclass(frozen=True, slots=True)
class Original:
    """Where the first observation with a key went: which instance's log, at which LSN, for which user."""

    instance: str
    lsn: int
    user: str


class IdempotencyWindow(Protocol):
    """The keys of one model already logged: LocalWindow (one process) or RedisWindow (several)."""

    instance: str  # whose log the keys claimed here go to

    def claim(self, keys: Sequence[str | None], users: Sequence[str], next_lsn: int) -> list[Original | None]: ...

    def release(self, keys: Sequence[str]) -> None: ...


class LocalWindow:
    """The window of one model served by one process, in memory, rebuilt from its log at start."""

    def __init__(self, *, seconds: float, max_keys: int, instance: str = "main") -> None:
        self.seconds = seconds
        self.max_keys = max_keys
        self.instance = instance
        self._keys: OrderedDict[str, tuple[int, str]] = OrderedDict()  # LSN order: oldest first
        self._times: deque[tuple[float, int]] = deque()  # (second, last LSN claimed in it), for expiry
        self._lock = threading.Lock()  # claims come under the model lock; failures from the log's writer

    def __len__(self) -> int:
        return len(self._keys)

    @classmethod
    def from_log(
        cls, log_dir: Path, *, seconds: float, max_keys: int, instance: str = "main", now: float | None = None
    ) -> LocalWindow:
        """The window as the log's tail says: every key logged in the last `seconds`, the newest `max_keys`."""
        window = cls(seconds=seconds, max_keys=max_keys, instance=instance)
        if max_keys == 0:
            return window
        cutoff = (time.time() if now is None else now) - seconds
        found: list[list[tuple[float, int, str, str]]] = []
        count = 0
        segments = _segments(Path(log_dir)) if Path(log_dir).is_dir() else []
        for index in range(len(segments) - 1, -1, -1):  # newest segment first; stop once past the window
            first = segments[index][0]
            upto = segments[index + 1][0] - 1 if index + 1 < len(segments) else None
            keyed, oldest = [], None
            for record in read_log(Path(log_dir), first - 1, upto):
                oldest = record.timestamp if oldest is None else oldest
                if record.id is not None and record.timestamp >= cutoff:
                    keyed.append((record.timestamp, record.lsn, record.id, record.user))
            found.append(keyed)
            count += len(keyed)
            if count >= max_keys or (oldest is not None and oldest < cutoff):
                break
        for keyed in reversed(found):  # oldest first, so the newest win and stay
            for ts, lsn, key, user in keyed:
                window._keys.pop(key, None)
                window._keys[key] = (lsn, user)
                window._stamp(ts, lsn)
        while len(window._keys) > max_keys:
            window._keys.popitem(last=False)
        window._evict(time.time() if now is None else now)
        return window

    def claim(self, keys: Sequence[str | None], users: Sequence[str], next_lsn: int) -> list[Original | None]:
        """Claim a batch's keys in order, as if its rows were appended from `next_lsn` on.

        Per row: None if it is to be appended (no key, or a key claimed now, for the LSN it will
        get), else the Original it repeats: a key already in the window, or one earlier in the batch.
        Called under the model's lock, right before the append, so the LSNs are the ones it assigns."""
        now = time.time()
        out: list[Original | None] = []
        lsn = next_lsn - 1
        with self._lock:
            self._evict(now)
            entries = self._keys
            for key, user in zip(keys, users):
                known = None if key is None else entries.get(key)
                if known is not None:
                    out.append(Original(self.instance, known[0], known[1]))
                    continue
                lsn += 1
                if key is not None:
                    entries[key] = (lsn, user)
                out.append(None)
            if lsn >= next_lsn:
                self._stamp(now, lsn)
            while len(entries) > self.max_keys:
                entries.popitem(last=False)
        return out

    def release(self, keys: Sequence[str]) -> None:
        """Forget keys whose records were not appended after all (the append failed)."""
        with self._lock:
            for key in keys:
                self._keys.pop(key, None)

    def forget_range(self, first: int, last: int | None = None) -> None:
        """Forget keys claimed for LSNs in [first, last] (open-ended without `last`): the log refused
        those records, so this process will not learn them and their retries must be."""
        with self._lock:
            doomed = []
            for key in reversed(self._keys):  # LSN order: the refused ones are at the end
                lsn = self._keys[key][0]
                if lsn < first:
                    break
                if last is None or lsn <= last:
                    doomed.append(key)
            for key in doomed:
                del self._keys[key]

    def attach(self, obs_log: ObservationLog) -> LocalWindow:
        """Release the claims of records `obs_log` refuses."""
        _on_refused(obs_log, self.forget_range)
        return self

    def _stamp(self, ts: float, lsn: int) -> None:
        """Note that LSNs up to `lsn` were claimed by the end of the second holding `ts`: one entry
        per second, so a day of traffic costs 86,400 entries, and keys expire at most a second late."""
        second = float(int(ts) + 1)
        if self._times and self._times[-1][0] >= second:
            self._times[-1] = (self._times[-1][0], lsn)
        else:
            self._times.append((second, lsn))

    def _evict(self, now: float) -> None:
        cutoff, boundary = now - self.seconds, None
        while self._times and self._times[0][0] < cutoff:
            boundary = self._times.popleft()[1]
        if boundary is None:
            return
        keys = self._keys
        while keys:
            key = next(iter(keys))
            if keys[key][0] > boundary:
                break
            keys.popitem(last=False)


def _on_refused(obs_log: ObservationLog, forget: Callable[[int, int | None], None]) -> None:
    """Call `forget(first, last)` with the LSNs of each batch the log refuses. A log with commit
    hooks names the batch; one without fails for good, so everything not yet durable is refused."""
    hooks = getattr(obs_log, "add_commit_hook", None)
    if hooks is not None:
        hooks(lambda lsn: None, forget)
    else:
        obs_log.subscribe(lambda lsn: forget(obs_log.durable_lsn + 1, None) if lsn < 0 else None)


class RedisWindow:
    """The window of one model served by several processes over one Redis (storage/redis_claims.py).

    A retry may reach another process than its original, so the keys live in Redis: one string
    per key, `SET` with a TTL of `seconds` (Redis bounds them by time, not count), claimed for a
    whole batch by one Lua script, so two processes racing with the same key cannot both learn it.
    The value names the instance and LSN of the original; a process that finds another instance's
    key waits until Redis shows it learned (Receipt.foreign). Claims not yet durable are also kept
    in a sorted set per instance: a failed log releases them, and an instance restarting after a
    crash releases those beyond its recovered log (their records never reached it), and every claim
    releases those of an earlier call that failed before its append, so their retries are learned.
    A crashed instance that never restarts leaves such keys until their TTL: retries of them are
    refused (503) meanwhile, never acknowledged without being learned.
    """

    def __init__(
        self, store: RedisUserStore, model: str, *, seconds: float, instance: str, obs_log: ObservationLog
    ) -> None:
        self.instance = instance
        self._claims = RedisKeyClaims(store, f"{model}/idempotency", instance)
        self._ttl = max(1, int(seconds + 0.999))
        self._log = obs_log
        self.forget_range(obs_log.last_lsn + 1)  # claims a crash left beyond what the log recovered
        _on_refused(obs_log, self.forget_range)

    def attach(self, obs_log: ObservationLog) -> RedisWindow:
        return self  # subscribed in __init__

    def claim(self, keys: Sequence[str | None], users: Sequence[str], next_lsn: int) -> list[Original | None]:
        """As LocalWindow.claim, atomically in Redis (StoreUnavailable, 503, if Redis fails)."""
        found = self._claims.claim(keys, users, next_lsn, ttl=self._ttl, durable_lsn=self._log.durable_lsn)
        return [None if claimed is None else Original(*claimed) for claimed in found]

    def release(self, keys: Sequence[str]) -> None:
        """Forget keys whose records were not appended (best effort: the next claim releases them
        anyway, as every claim releases this instance's claims for LSNs the log has not used)."""
        try:
            self._claims.release(keys)
        except Exception:  # Redis is failing: the next claim releases them
            pass

    def forget_range(self, first: int, last: int | None = None) -> None:
        """Release this instance's claims for LSNs in [first, last]: their records are not in its log."""
        try:
            self._claims.release_range(first, last)
        except Exception:  # Redis is failing too: the next claim (or start) of this instance releases them
            pass
