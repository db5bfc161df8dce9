"""The contract every container adapter passes (clipper/adapters.py): the same linear model saved
the way each framework's users save it, loaded in this process, and held to the same checks —
a batch in, a batch out, row for row, numeric, the declared input shape, and errors that raise.

A framework joins by adding a member to `Framework`: the suite fails until it has a writer here.
(tests/clipper/test_adapters.py runs each framework through a real container process.)"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from tests.clipper.conftest import write_callable, write_linear_onnx
from veloxserve.clipper.adapters import Framework, LoadedModel, load_model, load_predictor

RNG = np.random.default_rng(0)
W = RNG.normal(size=(4, 2))
B = RNG.normal(size=2)


def _linear(batch: np.ndarray) -> np.ndarray:
    return np.asarray(batch, dtype=np.float64) @ W + B


def _write_callable(directory: Path) -> Path:
    weights, bias = W.copy(), B.copy()
    return write_callable(directory / "linear.pkl", lambda batch: np.asarray(batch, dtype=np.float64) @ weights + bias)


def _write_sklearn(directory: Path) -> Path:
    import joblib
    from sklearn.linear_model import LinearRegression

    X = RNG.normal(size=(20, 4))
    model = LinearRegression().fit(X, X @ W + B)
    joblib.dump(model, directory / "linear.joblib")
    return directory / "linear.joblib"


def _write_torch(directory: Path) -> Path:
    import torch

    layer = torch.nn.Linear(4, 2)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor(W.T))
        layer.bias.copy_(torch.tensor(B))
    torch.save(torch.nn.Sequential(layer), str(directory / "linear.pt"))
    return directory / "linear.pt"


def _write_onnx(directory: Path) -> Path:
    return write_linear_onnx(directory, W, B)


WRITERS: dict[Framework, Callable[[Path], Path]] = {
    Framework.CALLABLE: _write_callable,
    Framework.SKLEARN: _write_sklearn,
    Framework.TORCH: _write_torch,
    Framework.ONNX: _write_onnx,
}
DECLARED_SHAPE = {Framework.CALLABLE: None, Framework.SKLEARN: (4,), Framework.TORCH: None, Framework.ONNX: (4,)}
FRAMEWORKS = list(Framework)
pytestmark = pytest.mark.filterwarnings(
    "ignore:`torch.jit:DeprecationWarning"
)  # the eager file is tried as TorchScript first


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[Framework, tuple[Path, LoadedModel]]:
    directory = tmp_path_factory.mktemp("adapters")
    paths = {framework: WRITERS[framework](directory) for framework in FRAMEWORKS}
    return {framework: (path, load_model(framework, path)) for framework, path in paths.items()}


def test_every_framework_has_a_writer_in_this_suite() -> None:
    assert set(WRITERS) == set(Framework) == set(DECLARED_SHAPE)


@pytest.mark.parametrize("framework", FRAMEWORKS, ids=lambda f: f.value)
@pytest.mark.parametrize("n", [1, 5, 64])
def test_a_batch_of_n_rows_gives_n_numeric_outputs_that_match_the_model(
    models: dict[Framework, tuple[Path, LoadedModel]], framework: Framework, n: int
) -> None:
    _, model = models[framework]
    batch = RNG.normal(size=(n, 4))
    out = np.asarray(model.predict(batch))
    assert out.shape == (n, 2) and out.dtype.kind == "f"
    tolerance = 1e-9 if out.dtype == np.float64 else 1e-5  # torch and onnx compute in float32
    np.testing.assert_allclose(out, _linear(batch), rtol=tolerance, atol=tolerance)


@pytest.mark.parametrize("framework", FRAMEWORKS, ids=lambda f: f.value)
def test_rows_are_answered_independently_of_their_batch(
    models: dict[Framework, tuple[Path, LoadedModel]], framework: Framework
) -> None:
    _, model = models[framework]
    batch = RNG.normal(size=(6, 4))
    whole = np.asarray(model.predict(batch))
    one_by_one = np.vstack([np.asarray(model.predict(batch[i : i + 1])) for i in range(6)])
    np.testing.assert_allclose(whole, one_by_one, rtol=1e-6, atol=1e-6)  # batching changes no answer
    np.testing.assert_allclose(np.asarray(model.predict(batch.tolist())), whole, rtol=1e-6, atol=1e-6)  # lists too


@pytest.mark.parametrize("framework", FRAMEWORKS, ids=lambda f: f.value)
def test_the_declared_input_shape_is_the_models_own(
    models: dict[Framework, tuple[Path, LoadedModel]], framework: Framework
) -> None:
    path, model = models[framework]
    assert model.input_shape == DECLARED_SHAPE[framework]
    assert callable(load_predictor(framework.value, path))  # the framework may be named by its string


@pytest.mark.parametrize("framework", FRAMEWORKS, ids=lambda f: f.value)
def test_a_batch_of_the_wrong_width_raises(
    models: dict[Framework, tuple[Path, LoadedModel]], framework: Framework
) -> None:
    _, model = models[framework]
    with pytest.raises(Exception):  # noqa: B017 - each framework raises its own kind; none may answer
        model.predict(RNG.normal(size=(3, 5)))


@pytest.mark.parametrize("framework", FRAMEWORKS, ids=lambda f: f.value)
def test_a_missing_file_or_another_frameworks_file_fails_to_load(
    models: dict[Framework, tuple[Path, LoadedModel]], framework: Framework, tmp_path: Path
) -> None:
    with pytest.raises(Exception):  # noqa: B017
        load_model(framework, tmp_path / "absent")
    other = next(
        f for f in FRAMEWORKS if f is not framework and not {f, framework} <= {Framework.CALLABLE, Framework.SKLEARN}
    )
    with pytest.raises(Exception):  # noqa: B017 - a pickle is not an ONNX graph, nor the reverse
        load_model(framework, models[other][0])


def test_a_pickled_non_callable_or_an_absent_estimator_method_is_a_type_error(
    models: dict[Framework, tuple[Path, LoadedModel]], tmp_path: Path
) -> None:
    import cloudpickle

    (tmp_path / "number.pkl").write_bytes(cloudpickle.dumps(42))
    with pytest.raises(TypeError, match="not a callable"):
        load_model(Framework.CALLABLE, tmp_path / "number.pkl")
    with pytest.raises(TypeError, match="no method 'transform_all'"):
        load_model(Framework.SKLEARN, models[Framework.SKLEARN][0], method="transform_all")
    with pytest.raises(ValueError):
        load_model("tensorflow", tmp_path / "number.pkl")  # type: ignore[arg-type]
