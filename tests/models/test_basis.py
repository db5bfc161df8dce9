"""BlackBoxBasis: any framework's f_1..f_k laid out as [f, (x), 1], checked, against by-hand outputs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.linear_model import LinearRegression, Ridge

from tests.clipper.conftest import write_linear_onnx
from veloxserve.errors import InvalidInput
from veloxserve.models.basis import BasisFeatures, BasisInputs, BlackBoxBasis
from veloxserve.models.content import text_vectorizer

NUMERIC = BasisInputs(numeric=("a", "b", "c"))
TEXT = BasisInputs(text="text", n_buckets=256, ngram_max=2)
RNG = np.random.default_rng(0)
X = RNG.normal(size=(20, 3))


def fitted(k: int, inputs_x: np.ndarray = X) -> list[LinearRegression]:
    return [LinearRegression().fit(inputs_x, inputs_x @ RNG.normal(size=3) + i) for i in range(k)]


def test_sklearn_list_layout_is_outputs_then_one() -> None:
    models = fitted(2)
    f = BlackBoxBasis(models, framework="sklearn", inputs=NUMERIC, outputs=2).transform(X)
    expected = np.column_stack([models[0].predict(X), models[1].predict(X), np.ones(len(X))])
    np.testing.assert_allclose(f, expected)
    assert f.dtype == np.float64 and f.flags.c_contiguous


def test_one_multi_output_estimator_and_passthrough() -> None:
    Y = X @ RNG.normal(size=(3, 2))
    model = Ridge(alpha=0.1).fit(X, Y)
    basis = BlackBoxBasis(model, framework="sklearn", inputs=NUMERIC, outputs=2, passthrough=True)
    np.testing.assert_allclose(basis.transform(X), np.column_stack([model.predict(X), X, np.ones(len(X))]))
    assert basis.dim == 2 + 3 + 1


def test_text_inputs_are_hashed_ngrams() -> None:
    texts = ["alpha beta gamma", "beta beta delta", "x"]
    design = text_vectorizer(256, 2).transform(texts)
    theta = RNG.normal(size=(256, 2))
    basis = BlackBoxBasis(lambda D: D @ theta, framework="callable", inputs=TEXT, outputs=2, constant=False)
    np.testing.assert_allclose(basis.transform(texts), design @ theta)


def test_torch_module() -> None:
    torch = pytest.importorskip("torch")
    module = torch.nn.Linear(3, 4).double()
    basis = BlackBoxBasis(module, framework="torch", inputs=NUMERIC, outputs=4)
    with torch.no_grad():
        expected = module(torch.as_tensor(X)).numpy()
    np.testing.assert_allclose(basis.transform(X)[:, :4], expected, rtol=1e-12)


def test_onnx_graph(tmp_path: Path) -> None:
    W, B = RNG.normal(size=(3, 2)), RNG.normal(size=2)
    graph = write_linear_onnx(tmp_path, W, B).read_bytes()
    basis = BlackBoxBasis(graph, framework="onnx", inputs=NUMERIC, outputs=2)
    np.testing.assert_allclose(basis.transform(X)[:, :2], X @ W + B, rtol=1e-4, atol=1e-4)


@settings(max_examples=25, deadline=None)
@given(bad=st.sampled_from([np.nan, np.inf, -np.inf]), row=st.integers(0, 19), col=st.integers(0, 1))
def test_non_finite_outputs_are_named(bad: float, row: int, col: int) -> None:
    def f(D: np.ndarray) -> np.ndarray:
        out = D[:, :2].copy()
        out[row, col] = bad
        return out

    basis = BlackBoxBasis(f, framework="callable", inputs=NUMERIC, outputs=2, name="docvec")
    with pytest.raises(InvalidInput, match=rf"'docvec'.*non-finite.*output {col}") as err:
        basis.transform(X)
    assert err.value.field == "docvec"


def test_changed_output_width_is_named() -> None:
    basis = BlackBoxBasis(lambda D: D, framework="callable", inputs=NUMERIC, outputs=2, name="wide")
    with pytest.raises(InvalidInput, match=r"'wide'.*3 outputs.*declared 2"):
        basis.transform(X)
    two = BlackBoxBasis(
        [lambda D: D[:, 0], lambda D: D[:3, 1]], framework="callable", inputs=NUMERIC, outputs=2, name="m"
    )
    with pytest.raises(InvalidInput, match=r"'m' \(model 1 of 2\).*shape"):
        two.transform(X)


def test_missing_columns_and_bad_numeric_inputs_are_named() -> None:
    with pytest.raises(InvalidInput, match="'c'") as err:
        NUMERIC.check_columns(["item", "a", "b"], "the item table t.csv")
    assert err.value.field == "c"
    with pytest.raises(InvalidInput, match="'text'"):
        TEXT.check_columns(["item", "title"], "the item table")
    basis = BlackBoxBasis(fitted(1), framework="sklearn", inputs=NUMERIC, outputs=1)
    with pytest.raises(InvalidInput, match="3 numeric inputs"):
        basis.transform(X[:, :2])
    with pytest.raises(InvalidInput, match="finite"):
        basis.transform(np.full((2, 3), np.nan))
    with pytest.raises(InvalidInput, match="either one text column or numeric"):
        BasisInputs()
    with pytest.raises(InvalidInput, match="framework"):
        BlackBoxBasis([], framework="tensorflow", inputs=NUMERIC, outputs=1)


def test_inputs_round_trip_and_catalogue_features() -> None:
    assert BasisInputs.from_dict(TEXT.as_dict()) == TEXT
    features = BasisFeatures(np.arange(6.0).reshape(3, 2))
    assert len(features) == 3 and features.dim == 2
    np.testing.assert_array_equal(features.of_rows(np.array([2, 0])), [[4, 5], [0, 1]])
    assert not features.matrix.flags.writeable
