"""Clipper fixtures: a runtime on a temporary home, and model files written the way users write them."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import cloudpickle
import numpy as np
import pytest

from veloxserve.clipper import Clipper


@pytest.fixture
def clipper(tmp_path: Path) -> Iterator[Clipper]:
    with Clipper(tmp_path / "home", model_dirs=[tmp_path]) as runtime:
        yield runtime


def write_callable(path: Path, function: Callable[[Any], Any]) -> Path:
    """A cloudpickled batch function (closures and lambdas travel by value)."""
    with open(path, "wb") as fh:
        cloudpickle.dump(function, fh)
    return path


def constant_model(value: float, sleep: float = 0.0) -> Callable[[Any], Any]:
    """Answers `value` for every input, after `sleep` seconds per batch."""

    def predict(batch: Any) -> Any:
        import time

        import numpy as np

        if sleep:
            time.sleep(sleep)
        return np.full(len(batch), value)

    return predict


def write_linear_onnx(directory: Path, W: np.ndarray, B: np.ndarray) -> Path:
    """An ONNX graph y = x·W + b (float32), saved as <directory>/linear.onnx."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    n_in, n_out = W.shape
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["xw"]), helper.make_node("Add", ["xw", "b"], ["y"])],
        "linear",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, n_in])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, n_out])],
        [numpy_helper.from_array(W.astype(np.float32), "W"), numpy_helper.from_array(B.astype(np.float32), "b")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, directory / "linear.onnx")
    return directory / "linear.onnx"
