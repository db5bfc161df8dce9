"""TrackedCache: hot users' state held in this process, kept coherent by Redis itself.

Every prediction over Redis used to be a blocking round trip. Redis's server-assisted client-side
caching (`CLIENT TRACKING`, RESP3) tells a connection which keys changed; redis-py's own cache
needs Redis >= 7.4, so this module holds its own: one RESP3 connection, on a thread, with
`CLIENT TRACKING on BCAST PREFIX <store prefix>:`, whose invalidation pushes drop entries of a
byte-bounded LRU of hash fields read from Redis. Everything is dropped when that connection is
(re)established, on FLUSHALL/FLUSHDB (an invalidation without keys) and when a namespace's
`generation` key changes.

What a hit guarantees (docs/operations/redis.md): read-your-acknowledged-writes across processes.
Memory answers a read only inside `fenced()`, after a *fence* taken when the request arrived has
completed: a PING sent on the tracking connection after that moment has come back. Redis queues
an invalidation on this connection before it answers the write that caused it, and answers the
PING after it, so once the PONG is read every write acknowledged before the request arrived has
had its invalidation applied. One PING serves every request that arrived before it was sent: the
cost is one round trip of latency per request, not one of Redis work. A fence that does not come
back within the socket timeout fails, the connection is dropped (and everything with it), and
reads go to Redis until it is back.

An entry read from Redis while a write to it is in flight could outlive that write's invalidation
(invalidate first, then the late fill). So a read first reserves its keys (an empty entry with a
fresh token); an invalidation removes the entry, and the fill lands only if the entry still holds
the token, i.e. nothing invalidated the key since before Redis answered the read.
"""

from __future__ import annotations

import contextlib
import contextvars
import enum
import itertools
import logging
import os
import select
import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

from redis.connection import parse_url

from veloxserve.lru import ByteLRU
from veloxserve.storage.redis_client import RedisSettings
from veloxserve.storage.resp3 import Broken, ErrorReply, Push, Reader, command

log = logging.getLogger(__name__)
Row = tuple[bytes | None, ...]
_ENTRY_OVERHEAD = 200  # bytes a held entry costs beyond its key and values (objects, LRU links)
_PING = b"*1\r\n$4\r\nPING\r\n"


class CacheMiss(Exception):
    """A read inside `memory_only()` needs Redis: run it again on a worker thread."""


class _Mode(enum.Enum):
    UNFENCED = 0  # no fence: memory must not answer (it may lag an acknowledged write)
    FENCED = 1  # after a completed fence: memory answers what it holds, Redis the rest
    MEMORY_ONLY = 2  # after a completed fence, on the event loop: CacheMiss rather than Redis


_mode: contextvars.ContextVar[_Mode] = contextvars.ContextVar("veloxserve_cache_mode", default=_Mode.UNFENCED)


class Fence:
    """Done once a PING sent after it was taken has come back (`ok`), or failed (not `ok`)."""

    def __init__(self, lock: threading.Lock) -> None:
        self._lock = lock
        self.ok: bool | None = None
        self._callbacks: list[Callable[[bool], object]] = []

    def on_done(self, callback: Callable[[bool], object]) -> None:
        """`callback(ok)` once done (at once, here, if it already is; else on the tracker's thread)."""
        with self._lock:
            if self.ok is None:
                self._callbacks.append(callback)
                return
        callback(self.ok)

    def _finish(self, ok: bool) -> None:
        with self._lock:
            self.ok, callbacks, self._callbacks = ok, self._callbacks, []
        for callback in callbacks:
            callback(ok)


@dataclass(frozen=True, slots=True)
class _Entry:
    token: int
    fields: dict[str, bytes | None]


def _entry_size(key: str, entry: _Entry) -> int:
    return _ENTRY_OVERHEAD + len(key) + sum(len(f) + len(v or b"") for f, v in entry.fields.items())


@dataclass
class CacheStats:
    hits: int = 0  # rows a fenced read answered from memory
    misses: int = 0  # rows a fenced read took from Redis
    invalidations: int = 0  # keys Redis said changed
    flushes: int = 0  # times everything was dropped (reconnect, FLUSHALL, a new generation)
    failed_fences: int = 0  # fences that did not come back in time (reads went to Redis)


class TrackedCache:
    """Hash fields of keys under `prefix`, held while Redis says they have not changed."""

    def __init__(self, settings: RedisSettings, prefix: str, *, ping_interval: float = 0.25) -> None:
        self.settings = settings
        self.prefix = prefix
        self.stats = CacheStats()
        self._lru: ByteLRU[str, _Entry] = ByteLRU(int(settings.cache_mb * 2**20), _entry_size)
        self._lock = threading.Lock()
        self._tokens = itertools.count(1)
        self._connected = False
        self._next: Fence | None = None  # taken by requests, not sent yet
        self._sent: deque[tuple[Fence | None, float]] = deque()  # PINGs in flight, oldest first
        self._interval = ping_interval
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_w, False)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="redis-tracking", daemon=True)
        self._thread.start()

    # ---- the read path ---------------------------------------------------------------------
    @property
    def held_bytes(self) -> int:
        return self._lru.bytes

    @property
    def connected(self) -> bool:
        """Is the tracking connection up (else nothing is held and every fence fails)?"""
        return self._connected

    def fence(self) -> Fence | None:
        """The fence a request arriving now waits on (None while not connected: read Redis)."""
        with self._lock:
            if not self._connected:
                return None
            fence, new = self._next, self._next is None
            if fence is None:
                fence = self._next = Fence(threading.Lock())
        if new:
            with contextlib.suppress(BlockingIOError):  # a full pipe already wakes the thread
                os.write(self._wake_w, b"f")
        return fence

    @staticmethod
    @contextlib.contextmanager
    def answering(memory_only: bool) -> Iterator[None]:
        """Reads inside may be answered from memory: only after the request's fence completed.
        `memory_only`: a row not held raises CacheMiss instead of reading Redis."""
        token = _mode.set(_Mode.MEMORY_ONLY if memory_only else _Mode.FENCED)
        try:
            yield
        finally:
            _mode.reset(token)

    def read(self, keys: Sequence[str], fields: tuple[str, ...], fetch: Callable[[list[str]], list[Row]]) -> list[Row]:
        """`fields` of each key: from memory where `answering` allows, else `fetch(missing keys)`
        (one round trip), whose answers are then held unless invalidated meanwhile."""
        mode = _mode.get()
        rows: list[Row | None] = [None] * len(keys)
        missing: list[int] = []
        tokens: list[int | None] = []
        with self._lock:
            for i, key in enumerate(keys):
                entry = self._lru.get(key)
                if mode is not _Mode.UNFENCED and entry is not None and all(f in entry.fields for f in fields):
                    rows[i] = tuple(entry.fields[f] for f in fields)
                    continue
                if mode is _Mode.MEMORY_ONLY:
                    raise CacheMiss(key)
                missing.append(i)
                tokens.append(self._reserve(key, entry))
            if mode is not _Mode.UNFENCED:
                self.stats.hits += len(keys) - len(missing)
                self.stats.misses += len(missing)
        if missing:
            fetched = fetch([keys[i] for i in missing])
            with self._lock:
                for i, token, row in zip(missing, tokens, fetched):
                    rows[i] = row
                    if token is not None:
                        self._fill(keys[i], token, fields, row)
        return rows  # type: ignore[return-value]  # every row is set by now

    def _reserve(self, key: str, entry: _Entry | None) -> int | None:
        """The token a fill of `key` must find (held under the lock); None: do not fill."""
        if not self._connected:
            return None  # no invalidations are arriving: nothing read now can be trusted later
        if entry is None:
            entry = _Entry(next(self._tokens), {})
            if not self._lru.put(key, entry):
                return None
        return entry.token

    def _fill(self, key: str, token: int, fields: tuple[str, ...], row: Row) -> None:
        entry = self._lru.get(key)
        if entry is not None and entry.token == token:  # not invalidated since it was reserved
            self._lru.put(key, _Entry(token, {**entry.fields, **dict(zip(fields, row))}))

    # ---- invalidations ---------------------------------------------------------------------
    def _invalidate(self, keys: list[bytes] | None) -> None:
        with self._lock:
            if keys is None or any(k.endswith(b":generation") for k in keys):
                self._flush_locked()
                return
            self.stats.invalidations += len(keys)
            for key in keys:
                self._lru.remove(key.decode())

    def _flush_locked(self) -> None:
        self.stats.flushes += 1
        self._lru.clear()

    # ---- the tracking connection (its own thread) -----------------------------------------
    def _run(self) -> None:
        failures = 0
        while not self._stop.is_set():
            sock = None
            try:
                sock, reader = self._connect()
                if failures:
                    log.info("client-side cache of Redis at %s: tracking again", self.settings.where)
                failures = 0
                self._serve(sock, reader)
            except (OSError, Broken) as exc:
                if not self._stop.is_set() and not failures:  # once per outage, not per attempt
                    log.warning("client-side cache of Redis at %s: %s; reading Redis", self.settings.where, exc)
                failures += 1
            finally:
                self._down()
                if sock is not None:
                    sock.close()
            self._stop.wait(self.settings.policy.delay(min(failures, 6)))

    def _connect(self) -> tuple[socket.socket, Reader]:
        args = parse_url(self.settings.url)
        timeout = self.settings.connect_timeout
        if "path" in args:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(timeout)
            sock.connect(args["path"])
        else:
            sock = socket.create_connection((args.get("host", "127.0.0.1"), int(args.get("port", 6379))), timeout)
        reader = Reader(sock)
        hello = [b"HELLO", b"3"]
        if args.get("password"):
            hello += [b"AUTH", (args.get("username") or "default").encode(), args["password"].encode()]
        for parts in (hello, [b"CLIENT", b"TRACKING", b"on", b"BCAST", b"PREFIX", self.prefix.encode()]):
            sock.sendall(command(parts))
            reply = reader.reply()
            if isinstance(reply, ErrorReply):
                raise Broken(f"Redis refused {parts[0].decode()}: {reply}")
        sock.settimeout(None)
        with self._lock:
            self._flush_locked()  # whatever was held missed the invalidations while disconnected
            self._connected = True
        return sock, reader

    def _serve(self, sock: socket.socket, reader: Reader) -> None:
        """PING for each fence taken (and every `ping_interval` to notice a dead connection),
        apply invalidations, complete fences in the order their PONGs come back."""
        last_sent, limit = 0.0, self.settings.socket_timeout
        while not self._stop.is_set():
            now = time.monotonic()
            with self._lock:
                fence, self._next = self._next, None
            if fence is not None or (not self._sent and now - last_sent >= self._interval):
                self._sent.append((fence, now))
                sock.sendall(_PING)
                last_sent = now
            if self._sent and now - self._sent[0][1] > limit:
                raise Broken(f"no answer to PING within {limit} s")
            wait = self._sent[0][1] + limit - now if self._sent else last_sent + self._interval - now
            readable, _, _ = select.select([sock.fileno(), self._wake_r], [], [], max(0.0, wait))
            if self._wake_r in readable:
                os.read(self._wake_r, 4096)
            if sock.fileno() in readable:
                for message in reader.available():
                    self._handle(message)

    def _handle(self, message: object) -> None:
        if isinstance(message, Push):
            if message and message[0] == b"invalidate":
                self._invalidate(message[1] if len(message) > 1 else None)
        elif message == "PONG":
            fence, _ = self._sent.popleft()
            if fence is not None:
                fence._finish(True)
        elif isinstance(message, ErrorReply):
            raise Broken(f"Redis answered an error: {message}")

    def _down(self) -> None:
        with self._lock:
            self._connected = False
            self._flush_locked()
            pending = [f for f, _ in self._sent if f is not None] + ([self._next] if self._next is not None else [])
            self._sent.clear()
            self._next = None
            self.stats.failed_fences += len(pending)
        for fence in pending:
            fence._finish(False)

    def close(self) -> None:
        self._stop.set()
        with contextlib.suppress(BlockingIOError):
            os.write(self._wake_w, b"x")
        self._thread.join(self.settings.connect_timeout + self.settings.socket_timeout + 1)
        os.close(self._wake_r)
        os.close(self._wake_w)
