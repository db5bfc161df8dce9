"""Every framework through a real container process, against the same model computed in this process."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from tests.clipper.conftest import write_callable, write_linear_onnx
from veloxserve.clipper import Clipper

RNG = np.random.default_rng(0)
W = RNG.normal(size=(4, 2))
B = RNG.normal(size=2)
X = RNG.normal(size=(5, 4))


def _linear_answers(clipper: Clipper, name: str) -> np.ndarray:
    clipper.create_app(name + "-app", [name], objective_ms=30_000)
    return np.array([clipper.predict(name + "-app", "u", row.tolist())["output"] for row in X])


def test_sklearn_estimator_in_a_container_matches_in_process(clipper: Clipper, tmp_path: Path) -> None:
    import joblib
    from sklearn.linear_model import LinearRegression

    y = X @ W[:, 0] + B[0]
    model = LinearRegression().fit(np.vstack([X, X + 1]), np.concatenate([y, (X + 1) @ W[:, 0] + B[0]]))
    joblib.dump(model, tmp_path / "model.joblib")
    clipper.deploy("linear", "sklearn", tmp_path / "model.joblib")
    np.testing.assert_allclose(_linear_answers(clipper, "linear"), X @ W[:, 0] + B[0], rtol=1e-6, atol=1e-9)


def test_sklearn_method_option_calls_predict_proba(clipper: Clipper, tmp_path: Path) -> None:
    import joblib
    from sklearn.linear_model import LogisticRegression

    labels = (X[:, 0] > 0).astype(int)
    model = LogisticRegression().fit(X, labels)
    joblib.dump(model, tmp_path / "clf.joblib")
    clipper.deploy("clf", "sklearn", tmp_path / "clf.joblib", method="predict_proba")
    np.testing.assert_allclose(_linear_answers(clipper, "clf"), model.predict_proba(X), rtol=1e-9)


@pytest.mark.filterwarnings("ignore:`torch.jit:DeprecationWarning")
@pytest.mark.parametrize("kind", ["torchscript", "eager"])
def test_torch_module_in_a_container_matches_numpy(clipper: Clipper, tmp_path: Path, kind: str) -> None:
    import torch

    layer = torch.nn.Linear(4, 2)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor(W.T))
        layer.bias.copy_(torch.tensor(B))
    path = tmp_path / f"{kind}.pt"
    if kind == "torchscript":
        torch.jit.save(torch.jit.script(layer), str(path))
    else:
        torch.save(torch.nn.Sequential(layer), str(path))
    clipper.deploy(kind, "torch", path)
    np.testing.assert_allclose(_linear_answers(clipper, kind), X @ W + B, rtol=1e-5, atol=1e-5)  # float32


def test_onnx_graph_in_a_container_matches_numpy(clipper: Clipper, tmp_path: Path) -> None:
    write_linear_onnx(tmp_path, W, B)
    clipper.deploy("onnx-linear", "onnx", tmp_path / "linear.onnx")
    np.testing.assert_allclose(_linear_answers(clipper, "onnx-linear"), X @ W + B, rtol=1e-5, atol=1e-5)


def test_callable_takes_text_and_a_failing_batch_does_not_kill_the_container(clipper: Clipper, tmp_path: Path) -> None:
    def shout(batch):
        if "boom" in batch:
            raise ValueError("no booms")
        return [text.upper() + "!" for text in batch]

    clipper.deploy("shout", "callable", write_callable(tmp_path / "shout.pkl", shout))
    clipper.create_app("shouter", ["shout"], objective_ms=30_000, default="?")
    assert clipper.predict("shouter", "u", "hello")["output"] == "HELLO!"
    failed = clipper.predict("shouter", "u", "boom")
    assert failed["default"] is True and failed["output"] == "?" and "no booms" in failed["reason"]
    assert clipper.predict("shouter", "u", "again")["output"] == "AGAIN!"
    assert clipper.describe_model("shout")["replicas"][0]["restarts"] == 0


@pytest.mark.parametrize(("framework", "extra"), [("torch", "torch"), ("onnx", "onnx")])
def test_a_missing_framework_names_the_extra_to_install(
    clipper: Clipper, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, framework: str, extra: str
) -> None:
    """`pip install .` installs neither torch nor onnxruntime: deploying such a model says which extra to install,
    before any container starts, and leaves nothing behind; loading one in a container says the same."""
    from veloxserve.clipper.adapters import EXTRAS, Framework, load_model
    from veloxserve.errors import InvalidInput

    package = EXTRAS[Framework(framework)][0]
    monkeypatch.setitem(sys.modules, package, None)  # this environment, without the package
    model = tmp_path / "model.bin"
    model.write_bytes(b"not read")
    with pytest.raises(InvalidInput) as refused:
        clipper.deploy("absent", framework, model)
    assert refused.value.field == "framework" and f"pip install 'veloxserve[{extra}]'" in str(refused.value)
    assert clipper.list_models() == [] and not (clipper.runtime.registry.models / "absent").exists()
    with pytest.raises(ImportError, match=rf"veloxserve\[{extra}\]"):
        load_model(Framework(framework), model)
