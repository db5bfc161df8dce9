"""The little RESP3 that storage/redis_cache.py's tracking connection speaks.

That connection waits on its socket and a wake-up pipe at once (select), so it reads what has
arrived and parses whole values out of its own buffer; redis-py's parsers block on their own
buffered socket, which select cannot see. Only what HELLO, CLIENT TRACKING, PING and
invalidation pushes answer is needed; every RESP3 type is parsed anyway so nothing unexpected
desynchronises the stream.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator


class Broken(Exception):
    """The tracking connection cannot be trusted any more: drop it and everything held."""


class ErrorReply(str):
    """An error reply."""


class Push(list):
    """A push message (`>`): invalidations."""


_INCOMPLETE = object()


def command(parts: list[bytes]) -> bytes:
    return b"*%d\r\n" % len(parts) + b"".join(b"$%d\r\n%s\r\n" % (len(p), p) for p in parts)


class Reader:
    """RESP3 values off a socket: whole replies while connecting, what has arrived afterwards."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._buf = bytearray()

    def _receive(self) -> None:
        chunk = self._sock.recv(65536)
        if not chunk:
            raise Broken("Redis closed the connection")
        self._buf += chunk

    def reply(self) -> object:
        while True:
            for message in self._parsed():
                if not isinstance(message, Push):
                    return message
            self._receive()

    def available(self) -> list[object]:
        self._receive()
        return list(self._parsed())

    def _parsed(self) -> Iterator[object]:
        while self._buf:
            value, end = _parse(self._buf, 0)
            if value is _INCOMPLETE:
                return
            del self._buf[:end]
            yield value


def _parse(buf: bytearray, pos: int) -> tuple[object, int]:
    """One value starting at `pos` and where it ends; (_INCOMPLETE, pos) if not all arrived."""
    end = buf.find(b"\r\n", pos)
    if end < 0:
        return _INCOMPLETE, pos
    kind, line, after = buf[pos : pos + 1], bytes(buf[pos + 1 : end]), end + 2
    if kind == b"+":
        return line.decode(), after
    if kind == b"-":
        return ErrorReply(line.decode()), after
    if kind == b"_":
        return None, after
    if kind in (b":", b"#", b",", b"("):
        return line, after
    if kind in (b"$", b"=", b"!"):
        n = int(line)
        if n < 0:
            return None, after
        if len(buf) < after + n + 2:
            return _INCOMPLETE, pos
        value = bytes(buf[after : after + n])
        return (ErrorReply(value.decode()) if kind == b"!" else value), after + n + 2
    if kind in (b"*", b"~", b">", b"%", b"|"):
        n = int(line)
        if n < 0:
            return None, after
        items: list[object] = []
        for _ in range(2 * n if kind in (b"%", b"|") else n):
            item, after = _parse(buf, after)
            if item is _INCOMPLETE:
                return _INCOMPLETE, pos
            items.append(item)
        if kind == b"|":  # attributes precede the value they describe
            return _parse(buf, after)
        return (Push(items) if kind == b">" else items), after
    raise Broken(f"unexpected RESP3 type {kind!r}")
