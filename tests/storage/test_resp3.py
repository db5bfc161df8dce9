"""RESP3 values parsed from a stream cut anywhere: what arrives in pieces parses as when whole."""

from __future__ import annotations

import socket

from hypothesis import given
from hypothesis import strategies as st

from veloxserve.storage.resp3 import ErrorReply, Push, Reader, command

# (wire bytes, the value parsed), written by hand from the RESP3 specification
_VALUES = [
    (b"+PONG\r\n", "PONG"),
    (b"-ERR unknown\r\n", ErrorReply("ERR unknown")),
    (b":42\r\n", b"42"),
    (b"_\r\n", None),
    (b"$5\r\nhello\r\n", b"hello"),
    (b"$0\r\n\r\n", b""),
    (b">2\r\n$10\r\ninvalidate\r\n*2\r\n$3\r\nk:1\r\n$3\r\nk:2\r\n", Push([b"invalidate", [b"k:1", b"k:2"]])),
    (b">2\r\n$10\r\ninvalidate\r\n_\r\n", Push([b"invalidate", None])),  # FLUSHALL
    (b"%1\r\n+server\r\n+redis\r\n", ["server", "redis"]),
]


@given(
    picks=st.lists(st.integers(0, len(_VALUES) - 1), min_size=1, max_size=12),
    cuts=st.lists(st.integers(1, 40), max_size=30),
)
def test_a_stream_cut_anywhere_parses_to_the_same_values(picks, cuts) -> None:
    wire = b"".join(_VALUES[i][0] for i in picks)
    ours, theirs = socket.socketpair()
    try:
        reader, got, pos = Reader(ours), [], 0
        for size in [*cuts, len(wire)]:
            if pos >= len(wire):
                break
            theirs.sendall(wire[pos : pos + size])
            pos += size
            got += reader.available()
        assert got == [_VALUES[i][1] for i in picks]
        assert all(type(g) is type(_VALUES[i][1]) for g, i in zip(got, picks))  # a push stays a push
    finally:
        ours.close()
        theirs.close()


def test_a_command_is_an_array_of_bulk_strings() -> None:
    assert command([b"PING"]) == b"*1\r\n$4\r\nPING\r\n"
    assert command([b"GET", b"a b"]) == b"*2\r\n$3\r\nGET\r\n$3\r\na b\r\n"
