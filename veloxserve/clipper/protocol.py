"""The wire protocol between the serving layer and a model container, over ZeroMQ.

Why ZeroMQ: a container is a local process and a batch is one message, so what matters is the
per-batch cost, not HTTP semantics. A ZeroMQ round trip to a container over loopback TCP costs
0.24-0.40 ms median on this shared 2-core machine, for 1 or 64 rows alike
(bench/bench_clipper_overhead.py, which also measures the whole path), it frames multipart
messages for us (an array travels as its raw bytes, no serialisation), reconnects by itself when a
container is restarted, and has an asyncio socket, so the event loop never blocks on a container.
gRPC and HTTP/2 would add a schema compiler or a second web stack for no gain on one machine.

The serving side binds a ROUTER socket per replica; the container connects a DEALER to it (as in
Clipper, containers dial in), says hello, then answers one batch at a time:

    container -> server   [b"hello", json{framework, model, pid, input_shape, attach}]
    server -> container   [b"predict", request id (8 bytes), *batch]
    container -> server   [b"ok", request id, *outputs]  or  [b"err", request id, message]

Other frontends of the same home (frontends.py) connect a DEALER to the container's `attach`
socket and exchange the same predict / ok / err messages over it, without a hello.

A batch (inputs or outputs) is three frames: a numeric array is [b"nd", json{dtype, shape}, raw
bytes]; anything else (strings, nested JSON) is [b"js", orjson bytes, b""].
"""

from __future__ import annotations

import struct
from typing import Any

import numpy as np
import orjson

HELLO, PREDICT, OK, ERR = b"hello", b"predict", b"ok", b"err"
_ID = struct.Struct("<Q")


def pack_id(request_id: int) -> bytes:
    return _ID.pack(request_id)


def unpack_id(frame: bytes) -> int:
    return _ID.unpack(frame)[0]


def encode_batch(batch: Any) -> list[bytes]:
    """Three frames for a batch: raw array bytes when it is numeric, JSON otherwise."""
    if isinstance(batch, np.ndarray) and batch.dtype.kind in "biuf":
        array = np.ascontiguousarray(batch)
        meta = orjson.dumps({"dtype": array.dtype.str, "shape": list(array.shape)})
        return [b"nd", meta, array.tobytes()]
    return [b"js", orjson.dumps(batch, option=orjson.OPT_SERIALIZE_NUMPY), b""]


def decode_batch(frames: list[bytes]) -> Any:
    kind, meta, data = frames
    if kind == b"nd":
        header = orjson.loads(meta)
        return np.frombuffer(data, dtype=np.dtype(header["dtype"])).reshape(header["shape"])
    if kind == b"js":
        return orjson.loads(meta)
    raise ValueError(f"unknown batch encoding {kind!r}")


def stack_inputs(inputs: list[Any]) -> Any:
    """One batch from per-query inputs: a 2-D (or n-D) array when they are arrays of one shape."""
    first = inputs[0]
    if isinstance(first, np.ndarray) and all(isinstance(x, np.ndarray) and x.shape == first.shape for x in inputs):
        return np.stack(inputs)
    return [x.tolist() if isinstance(x, np.ndarray) else x for x in inputs]


def split_outputs(outputs: Any, n: int) -> list[Any]:
    """Per-query outputs from a batch of outputs; the container must answer one output per input."""
    if len(outputs) != n:
        raise ValueError(f"the model returned {len(outputs)} outputs for a batch of {n} inputs")
    if isinstance(outputs, np.ndarray):
        return list(outputs.astype(np.float64, copy=False)) if outputs.ndim > 1 else outputs.astype(np.float64).tolist()
    return list(outputs)
