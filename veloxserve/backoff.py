"""One retry/backoff policy for everything that waits before trying again.

Redis commands (storage/redis_client.py hands it to redis-py's `Retry`), the shared-mode applier
between failed batches, and Clipper restarting a container that keeps crashing all wait with
the same formula, so there is one place to read and tune it: the wait after `failures` failed
attempts doubles from `base` up to `cap` seconds (redis-py's exponential backoff, without jitter).
"""

from __future__ import annotations

import time
from dataclasses import dataclass


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how patiently to retry. `retries` bounds a request's extra attempts; the
    backoff between attempts doubles from `base` up to `cap` seconds."""

    retries: int = 2
    base: float = 0.01
    cap: float = 0.5

    def delay(self, failures: int) -> float:
        """Seconds to wait after `failures` failed attempts: min(cap, base · 2^failures)."""
        return min(self.cap, self.base * 2**failures)

    def pause(self, failures: int) -> None:
        """Sleep before the next attempt of a background loop (never a request)."""
        time.sleep(self.delay(failures))
