"""Clipper fixtures: a runtime on a temporary home, and model files written the way users write them."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import cloudpickle
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
