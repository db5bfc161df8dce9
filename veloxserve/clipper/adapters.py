"""One prediction interface over every framework: a batch of inputs in, a batch of outputs out.

Each adapter imports its framework only when asked for, so a container of a plain function or a
scikit-learn model starts without paying for torch or onnxruntime.
"""

from __future__ import annotations

import enum
import importlib
import importlib.util
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

Predictor = Callable[[Any], Any]


class Framework(str, enum.Enum):
    CALLABLE = "callable"  # a cloudpickled Python function of a batch
    SKLEARN = "sklearn"  # a joblib-dumped estimator or pipeline
    TORCH = "torch"  # TorchScript (torch.jit.save) or an eagerly saved nn.Module (torch.save)
    ONNX = "onnx"  # an ONNX graph run by onnxruntime


# The frameworks that are extras of veloxserve (`pip install .` installs neither): their package, their extra.
EXTRAS = {Framework.TORCH: ("torch", "torch"), Framework.ONNX: ("onnxruntime", "onnx")}


def missing_framework(framework: Framework) -> str | None:
    """What to install when `framework`'s package is not importable in this environment, else None.
    Deploy asks before starting a container, so a missing framework is a clear 400, not a crashed process."""
    if framework not in EXTRAS:
        return None
    package, extra = EXTRAS[framework]
    if importlib.util.find_spec(package) is not None:
        return None
    return (
        f"Framework {framework.value!r} needs the {package} package, which this server's environment lacks. "
        f"Install it beside veloxserve: pip install 'veloxserve[{extra}]' (or 'veloxserve[frameworks]' for all)."
    )


def _import_framework(framework: Framework) -> Any:
    try:
        return importlib.import_module(EXTRAS[framework][0])
    except ImportError:
        raise ImportError(missing_framework(framework) or f"{EXTRAS[framework][0]} failed to import") from None


@dataclass(frozen=True)
class LoadedModel:
    """A model's batch function and, when the model declares it, the shape of one input (a
    scikit-learn estimator's n_features_in_, an ONNX graph's fixed input dimensions): what the
    serving side probes the model with at deploy time and checks each query against."""

    predict: Predictor
    input_shape: tuple[int, ...] | None = None


def load_model(framework: Framework, path: Path, method: str | None = None) -> LoadedModel:
    """The model stored at `path`. `method` names an estimator's method (scikit-learn: predict by
    default, or predict_proba / decision_function) or an ONNX output."""
    loaders = {
        Framework.CALLABLE: _callable,
        Framework.SKLEARN: _sklearn,
        Framework.TORCH: _torch,
        Framework.ONNX: _onnx,
    }
    return loaders[Framework(framework)](Path(path), method)


def load_predictor(framework: Framework, path: Path, method: str | None = None) -> Predictor:
    """The batch function of the model stored at `path` (see load_model)."""
    return load_model(framework, path, method).predict


def _callable(path: Path, method: str | None) -> LoadedModel:
    import cloudpickle

    with open(path, "rb") as fh:
        function = cloudpickle.load(fh)
    if not callable(function):
        raise TypeError(f"{path} holds a {type(function).__name__}, not a callable")
    return LoadedModel(function)


def _sklearn(path: Path, method: str | None) -> LoadedModel:
    import joblib

    estimator = joblib.load(path)
    predict = getattr(estimator, method or "predict", None)
    if predict is None:
        raise TypeError(f"the estimator in {path} has no method {method or 'predict'!r}")
    width = getattr(estimator, "n_features_in_", None)  # absent for text pipelines: shape unknown
    shape = (int(width),) if isinstance(width, (int, np.integer)) else None
    return LoadedModel(lambda batch: predict(np.asarray(batch)), shape)


def _torch(path: Path, method: str | None) -> LoadedModel:
    torch = _import_framework(Framework.TORCH)

    try:
        module = torch.jit.load(str(path), map_location="cpu")
    except RuntimeError:  # not TorchScript: an eager module saved whole
        module = torch.load(str(path), map_location="cpu", weights_only=False)
    module.eval()

    def predict(batch: Any) -> np.ndarray:
        with torch.inference_mode():
            return module(torch.as_tensor(np.asarray(batch, dtype=np.float32))).numpy()

    return LoadedModel(predict)


def _onnx(path: Path, method: str | None) -> LoadedModel:
    onnxruntime = _import_framework(Framework.ONNX)

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = 1  # one replica, one core: scale by replicas, not threads
    session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    first = session.get_inputs()[0]
    output = method or session.get_outputs()[0].name
    dims = list(first.shape)[1:]  # the first dimension is the batch
    shape = tuple(dims) if all(isinstance(d, int) and d > 0 for d in dims) else None
    return LoadedModel(lambda batch: session.run([output], {first.name: np.asarray(batch, dtype=np.float32)})[0], shape)
