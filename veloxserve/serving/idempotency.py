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
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from veloxserve.errors import invalid_parameter
from veloxserve.storage.observation_log import ObservationLog, _segments, read_log

MAX_ID = 128  # characters of an idempotency key


def check_key(key: object, field: str, where: str = "observe") -> str | None:
    """The key of one observation (None when it has none); 400 naming the field otherwise."""
    if key is None:
        return None
    if not isinstance(key, str) or not 0 < len(key) <= MAX_ID:
        raise invalid_parameter(field, where, f"an idempotency key: a string of 1-{MAX_ID} characters, the same on "
                                "every retry of this observation (or leave it out)", key)
    return key


@dataclass(frozen=True, slots=True)
class Original:
    """Where the first observation with a key went: which instance's log, at which LSN, for which user."""

    instance: str
    lsn: int
    user: str


class LocalWindow:
    """The window of one model served by one process, in memory, rebuilt from its log at start."""

    def __init__(self, *, seconds: float, max_keys: int, instance: str = "main") -> None:
        self.seconds = seconds
        self.max_keys = max_keys
        self.instance = instance
        self._keys: OrderedDict[str, tuple[int, str]] = OrderedDict()  # LSN order: oldest first
        self._times: deque[tuple[float, int]] = deque()  # (time, last LSN) of each claim, for expiry
        self._lock = threading.Lock()  # claims come under the model lock; failures from the log's writer

    def __len__(self) -> int:
        return len(self._keys)

    @classmethod
    def from_log(cls, log_dir: Path, *, seconds: float, max_keys: int, instance: str = "main",
                 now: float | None = None) -> LocalWindow:
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
                window._times.append((ts, lsn))
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
                self._times.append((now, lsn))
            while len(entries) > self.max_keys:
                entries.popitem(last=False)
        return out

    def release(self, keys: Sequence[str]) -> None:
        """Forget keys whose records were not appended after all (the append failed)."""
        with self._lock:
            for key in keys:
                self._keys.pop(key, None)

    def forget_after(self, lsn: int) -> None:
        """Forget keys claimed for LSNs after `lsn`: the log failed before making them durable, so
        this process will not learn them and their retries must be (from the log a restart reads)."""
        with self._lock:
            for key in [k for k, (claimed, _) in self._keys.items() if claimed > lsn]:
                del self._keys[key]

    def attach(self, obs_log: ObservationLog) -> LocalWindow:
        """Release the claims a failure of `obs_log` leaves undurable."""
        obs_log.subscribe(lambda lsn: self.forget_after(obs_log.durable_lsn) if lsn < 0 else None)
        return self

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
