"""The model container: a process that loads one model and answers batches over ZeroMQ.

Started by the serving layer as `python -m veloxserve.cli container --framework sklearn --model
model.joblib --connect tcp://127.0.0.1:PORT` (or by hand, to serve a model from another machine
or virtualenv). It dials the replica's socket, says hello, then computes one batch at a time; a
model that raises answers that batch with an error and keeps serving. It exits when the process
that started it dies, so a killed server leaves no orphans.
"""

from __future__ import annotations

import argparse
import ctypes
import logging
import os
import signal
import sys
import traceback
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import zmq

from veloxserve.clipper import protocol
from veloxserve.clipper.adapters import Framework, load_model

log = logging.getLogger(__name__)
_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
        except OSError:
            pass


def serve_container(framework: Framework, model: Path, connect: str, method: str | None = None) -> int:
    """Load the model, connect, and serve batches until the parent or the socket goes away."""
    _die_with_parent()
    parent = os.getppid()
    loaded = load_model(framework, model, method)
    predict = loaded.predict
    context = zmq.Context()
    socket = context.socket(zmq.DEALER)
    socket.setsockopt(zmq.LINGER, 0)
    socket.connect(connect)
    hello = {
        "framework": Framework(framework).value,
        "model": str(model),
        "pid": os.getpid(),
        "input_shape": None if loaded.input_shape is None else list(loaded.input_shape),
    }
    socket.send_multipart([protocol.HELLO, orjson.dumps(hello)])
    try:
        while True:
            if not socket.poll(1000):
                if os.getppid() != parent:
                    return 0
                continue
            frames = socket.recv_multipart()
            if frames[0] != protocol.PREDICT:
                continue
            request = frames[1]
            try:
                outputs = predict(protocol.decode_batch(frames[2:5]))
                reply = [protocol.OK, request, *protocol.encode_batch(_as_batch(outputs))]
            except Exception as exc:  # a bad batch must not take the container down
                log.warning("batch failed: %s", traceback.format_exc())
                reply = [protocol.ERR, request, f"{type(exc).__name__}: {exc}".encode()]
            socket.send_multipart(reply)
    finally:
        socket.close(0)
        context.term()


def _as_batch(outputs: Any) -> object:
    """Numeric outputs travel as raw array bytes; anything else (a model's sequence of outputs) as JSON."""
    if isinstance(outputs, np.ndarray):
        return outputs
    try:
        array = np.asarray(outputs)
    except ValueError:  # ragged
        return list(outputs)
    return array if array.dtype.kind in "biuf" else list(outputs)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--framework",
        required=True,
        choices=[f.value for f in Framework],
        help="how to load --model: callable (cloudpickle), sklearn (joblib), torch, onnx",
    )
    parser.add_argument("--model", required=True, type=Path, help="the model file")
    parser.add_argument(
        "--connect", required=True, help="the replica socket to dial, e.g. tcp://127.0.0.1:5555 (the server passes it)"
    )
    parser.add_argument("--method", help="the estimator method or ONNX output to call (sklearn: predict by default)")


def run(args: argparse.Namespace) -> int:
    return serve_container(Framework(args.framework), args.model, args.connect, args.method)
