"""The model container: a process that loads one model and answers batches over ZeroMQ.

Started by the serving layer as `python -m veloxserve.cli container --framework sklearn --model
model.joblib --connect tcp://127.0.0.1:PORT` (or by hand, to serve a model from another machine
or virtualenv). It dials the replica's socket, says hello, then computes one batch at a time; a
model that raises answers that batch with an error and keeps serving. It exits when the process
that started it dies, so a killed server leaves no orphans.

It also binds a second socket, the attach socket (a ROUTER on a free loopback port, named in its
hello), so the other frontends of the same home send it their own batches (frontends.py): the
model computes batches from every frontend one at a time, whichever frontend batched them.
"""

from __future__ import annotations

import argparse
import logging
import os
import traceback
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import zmq

from veloxserve.children import die_with_parent
from veloxserve.clipper import protocol
from veloxserve.clipper.adapters import Framework, load_model

log = logging.getLogger(__name__)


def serve_container(framework: Framework, model: Path, connect: str, method: str | None = None) -> int:
    """Load the model, connect, and serve batches until the parent or the socket goes away."""
    die_with_parent()
    parent = os.getppid()
    loaded = load_model(framework, model, method)
    predict = loaded.predict
    context = zmq.Context()
    socket = context.socket(zmq.DEALER)
    socket.setsockopt(zmq.LINGER, 0)
    socket.connect(connect)
    attach = context.socket(zmq.ROUTER)
    attach.setsockopt(zmq.LINGER, 0)
    port = attach.bind_to_random_port("tcp://127.0.0.1")
    hello = {
        "framework": Framework(framework).value,
        "model": str(model),
        "pid": os.getpid(),
        "input_shape": None if loaded.input_shape is None else list(loaded.input_shape),
        "attach": f"tcp://127.0.0.1:{port}",
    }
    socket.send_multipart([protocol.HELLO, orjson.dumps(hello)])
    poller = zmq.Poller()
    poller.register(socket, zmq.POLLIN)
    poller.register(attach, zmq.POLLIN)
    try:
        while True:
            ready = dict(poller.poll(1000))
            if not ready:
                if os.getppid() != parent:
                    return 0
                continue
            if socket in ready:  # the owner's replica: [predict, id, *batch]
                frames = socket.recv_multipart()
                if frames[0] == protocol.PREDICT:
                    socket.send_multipart(_answer(predict, frames[1], frames[2:5]))
            if attach in ready:  # an attached frontend: [peer, predict, id, *batch]
                frames = attach.recv_multipart()
                if len(frames) >= 6 and frames[1] == protocol.PREDICT:
                    attach.send_multipart([frames[0], *_answer(predict, frames[2], frames[3:6])])
    finally:
        socket.close(0)
        attach.close(0)
        context.term()


def _answer(predict: Any, request: bytes, batch: list[bytes]) -> list[bytes]:
    """The reply frames to one batch; a model that raises answers with the error and keeps serving."""
    try:
        outputs = predict(protocol.decode_batch(batch))
        return [protocol.OK, request, *protocol.encode_batch(_as_batch(outputs))]
    except Exception as exc:  # a bad batch must not take the container down
        log.warning("batch failed: %s", traceback.format_exc())
        return [protocol.ERR, request, f"{type(exc).__name__}: {exc}".encode()]


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
