"""RedisLifecycle: the Redis side of one model's lifecycle shared by several server processes.

What the processes agree on, kept in Redis so that none of them is the truth on its own:

    p:{m}:lease       "<holder> <token>" with an expiry: who may train now
    p:{m}:fence       the last fencing token handed out (INCR: every lease gets a larger one)
    p:{m}:active      a hash: `version`, `seq`, `token` -- the version served; a restarted or
                      partitioned process reads it and converges
    p:{m}:seq         the last announcement's sequence number
    p:{m}:lifecycle   a stream of announcements (`seq`, `kind`, `what`): a version switch or a forget
    p:{m}:forgotten   a set of forgotten users: a late replay or observation must not bring them back
    p:{m}:alive       a sorted set: instance -> when its heartbeat expires (Redis's clock, ms)
    p:{m}:ack:<i>     the last announcement instance <i> applied

Every key of a model carries the model's hash tag `{m}`, so a Redis Cluster keeps them in one
slot and each script below runs on one shard. Fencing: a lease's token is checked inside the
same script that writes, so a holder whose lease expired (paused, partitioned, killed and
replaced) has its promotion refused (FencedOut, 409), never applied. The scripts read Redis's
own clock (TIME), so processes need not agree on theirs. Driver errors become StoreUnavailable.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

from redis.commands.core import Script

from veloxserve.errors import Conflict

if TYPE_CHECKING:
    from veloxserve.storage.redis_store import RedisUserStore

SWITCH, FORGET = "switch", "forget"
_STREAM_LENGTH = 10_000  # announcements kept; a process further behind reads `active` and `forgotten`

_NOW_MS = "local t = redis.call('TIME') local now = t[1] * 1000 + math.floor(t[2] / 1000)"

_ACQUIRE = f"""
{_NOW_MS}
local held = redis.call('GET', KEYS[1])
if held then
  local holder = string.match(held, '^(%S+) ')
  if holder ~= ARGV[1] then return {{0, held, redis.call('PTTL', KEYS[1])}} end
end
local token = redis.call('INCR', KEYS[2])
redis.call('SET', KEYS[1], ARGV[1] .. ' ' .. token, 'PX', ARGV[2])
return {{1, tostring(token), tonumber(ARGV[2])}}
"""

_RENEW = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return 1
"""

_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) return 1 end
return 0
"""

# KEYS: lease, seq, stream, active, forgotten. ARGV: kind, what, lease value or '', stream length.
_ANNOUNCE = """
if ARGV[3] ~= '' and redis.call('GET', KEYS[1]) ~= ARGV[3] then return -1 end
local seq = redis.call('INCR', KEYS[2])
if ARGV[1] == 'switch' then
  redis.call('HSET', KEYS[4], 'version', ARGV[2], 'seq', seq, 'token', ARGV[3])
else
  redis.call('SADD', KEYS[5], ARGV[2])
end
redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[4], '*', 'seq', seq, 'kind', ARGV[1], 'what', ARGV[2])
return seq
"""

_HEARTBEAT = f"""
{_NOW_MS}
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
return now
"""

_ACKNOWLEDGE = """
if tonumber(redis.call('GET', KEYS[1]) or '0') < tonumber(ARGV[1]) then redis.call('SET', KEYS[1], ARGV[1]) end
return 1
"""

_LIVE = f"""
{_NOW_MS}
return redis.call('ZRANGEBYSCORE', KEYS[1], '(' .. now, '+inf')
"""


_SCRIPTS: dict[str, Script] = {}  # source -> its registered script (a SHA and the source: no I/O)


class FencedOut(Conflict):
    """A lease holder's write after its lease expired or was taken over: refused, nothing changed."""


@dataclass(frozen=True, slots=True)
class Lease:
    """The right to train one model, until it expires; `token` fences out every older holder."""

    holder: str
    token: int

    @property
    def value(self) -> str:
        return f"{self.holder} {self.token}"


@dataclass(frozen=True, slots=True)
class Announcement:
    """One entry of the lifecycle stream: a version switch (`what` the version) or a forget (the user)."""

    seq: int
    kind: str
    what: str
    entry: str  # the stream id, to read on from


class RedisLifecycle:
    """One model's lease, active-version pointer, announcements, heartbeats and acknowledgements."""

    def __init__(self, store: RedisUserStore, model: str) -> None:
        self._store = store
        self.model = model
        self._client = store.client
        self._prefix = f"{store.settings.prefix}:{{{model}}}"

    @property
    def socket_timeout(self) -> float:
        return self._store.settings.socket_timeout

    def key(self, name: str) -> str:
        return f"{self._prefix}:{name}"

    def _run(self, source: str, keys: Sequence[str], args: Sequence[str | int], doing: str) -> object:
        """Run a script (redis-py loads it again if Redis forgot it). A retried announcement may
        be recorded twice: switching to the same version or forgetting the same user again is harmless."""
        script = _SCRIPTS.get(source)
        if script is None:
            script = _SCRIPTS[source] = self._client.register_script(source)
        with self._store.unavailable(doing):
            return script(keys=list(keys), args=list(args), client=self._client)

    # ---- the training lease ---------------------------------------------------------------
    def acquire(self, holder: str, seconds: float) -> Lease:
        """The lease to train for `seconds` (taken, or renewed with a new token if `holder` has
        it), or Conflict naming who holds it and for how long still."""
        ok, value, ttl = cast(
            list[object],
            self._run(
                _ACQUIRE, [self.key("lease"), self.key("fence")], [holder, _ms(seconds)], "taking the training lease"
            ),
        )
        text = _text(value)
        if not ok:
            other = text.partition(" ")[0]
            raise Conflict(
                f"A retrain of {self.model!r} is already running on instance {other!r} (its lease expires in "
                f"{int(cast(int, ttl)) / 1000:.1f} s unless renewed). Wait for it (GET /models/{self.model}/retrain) "
                "and retry."
            )
        return Lease(holder, int(text))

    def renew(self, lease: Lease, seconds: float) -> bool:
        """Extend a lease still held; False if it expired or another process took it."""
        return bool(self._run(_RENEW, [self.key("lease")], [lease.value, _ms(seconds)], "renewing the training lease"))

    def release(self, lease: Lease) -> None:
        """Give the lease up if still held (an expired one is someone else's now: left alone)."""
        self._run(_RELEASE, [self.key("lease")], [lease.value], "releasing the training lease")

    def holder(self) -> Lease | None:
        with self._store.unavailable("reading the training lease"):
            value = self._client.get(self.key("lease"))
        if value is None:
            return None
        holder, _, token = _text(value).partition(" ")
        return Lease(holder, int(token))

    # ---- announcements --------------------------------------------------------------------
    def announce(self, kind: str, what: str, lease: Lease | None = None) -> int:
        """Record a switch to version `what` (the active pointer) or the forget of user `what`,
        and announce it; its sequence number. With `lease`, refused (FencedOut) unless it is
        still the lease held: the check and the write are one script."""
        if kind not in (SWITCH, FORGET):
            raise ValueError(f"kind must be {SWITCH!r} or {FORGET!r}, got {kind!r}")
        keys = [self.key(k) for k in ("lease", "seq", "lifecycle", "active", "forgotten")]
        args: list[str | int] = [kind, what, "" if lease is None else lease.value, _STREAM_LENGTH]
        seq = int(cast(int, self._run(_ANNOUNCE, keys, args, f"announcing a {kind} of {self.model!r}")))
        if seq < 0:
            assert lease is not None
            raise FencedOut(
                f"Instance {lease.holder!r}'s training lease of {self.model!r} (token {lease.token}) expired or was "
                "taken over before it promoted its version: the promotion is refused. Retrain again."
            )
        return seq

    def read(self, after: str = "0-0", count: int = 1000, block: float = 0.0) -> list[Announcement]:
        """Announcements after stream id `after`, oldest first; with `block`, waiting up to that
        many seconds for one (keep it under the socket timeout: storage/redis_client.py)."""
        with self._store.unavailable("reading the lifecycle stream"):
            if block > 0:
                answer: Any = self._client.xread({self.key("lifecycle"): after}, count, max(1, round(block * 1000)))
                entries = cast(list[tuple[bytes, dict[bytes, bytes]]], answer[0][1] if answer else [])
            else:
                start = f"({after}" if after != "0-0" else "-"
                entries = cast(
                    list[tuple[bytes, dict[bytes, bytes]]],
                    self._client.xrange(self.key("lifecycle"), start, "+", count),
                )
        out = []
        for entry, fields in entries:
            f = {_text(k): _text(v) for k, v in fields.items()}
            out.append(Announcement(int(f["seq"]), f["kind"], f["what"], _text(entry)))
        return out

    def active(self) -> tuple[str | None, int]:
        """The version served and the announcement that made it so (None, 0 before any switch)."""
        with self._store.unavailable("reading the active version"):
            fields = self._client.hgetall(self.key("active"))
        f = {_text(k): _text(v) for k, v in fields.items()}
        return f.get("version"), int(f.get("seq", 0))

    def forgotten(self, users: Sequence[str]) -> list[bool]:
        """Which of `users` were forgotten (their observations are never learned again)."""
        if not users:
            return []
        with self._store.unavailable("reading forgotten users"):
            return [bool(x) for x in self._client.smismember(self.key("forgotten"), list(users))]

    def forgotten_users(self) -> set[str]:
        """Every user forgotten in this model (read once by a starting process)."""
        with self._store.unavailable("reading forgotten users"):
            return {_text(u) for u in cast(set[bytes], self._client.smembers(self.key("forgotten")))}

    def last_seq(self) -> int:
        with self._store.unavailable("reading the lifecycle sequence"):
            value = self._client.get(self.key("seq"))
        return 0 if value is None else int(value)

    # ---- who is alive, who applied what ------------------------------------------------------
    def heartbeat(self, instance: str, seconds: float) -> None:
        """`instance` is alive for `seconds` more (and counts among those that must acknowledge)."""
        self._run(_HEARTBEAT, [self.key("alive")], [instance, _ms(seconds)], "sending a heartbeat")

    def leave(self, instance: str) -> None:
        """`instance` stops: nobody waits for its acknowledgements any more."""
        with self._store.unavailable("leaving the model's live instances"):
            self._client.zrem(self.key("alive"), instance)

    def live(self) -> list[str]:
        return sorted(
            _text(i) for i in cast(list[bytes], self._run(_LIVE, [self.key("alive")], [], "listing live instances"))
        )

    def acknowledge(self, instance: str, seq: int) -> None:
        """`instance` applied every announcement up to `seq` (never moves back)."""
        self._run(_ACKNOWLEDGE, [self.key(f"ack:{instance}")], [seq], "acknowledging an announcement")

    def acknowledged(self, instance: str) -> int:
        with self._store.unavailable("reading an acknowledgement"):
            value = self._client.get(self.key(f"ack:{instance}"))
        return 0 if value is None else int(value)

    def pending(self, seq: int) -> list[str]:
        """The live instances that have not acknowledged announcement `seq` yet."""
        live = self.live()
        if not live:
            return []
        with self._store.unavailable("reading acknowledgements"):
            acks = self._client.mget([self.key(f"ack:{i}") for i in live])
        return [i for i, a in zip(live, acks, strict=True) if a is None or int(a) < seq]


def _ms(seconds: float) -> int:
    if not seconds > 0:
        raise ValueError(f"seconds must be > 0, got {seconds}")
    return max(1, round(seconds * 1000))


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
