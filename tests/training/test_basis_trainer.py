"""Ratings + item table -> black-box basis versions (fixed ONNX, first-order torch, oracle-MTL),
checked against independent computations; everything checkable is refused before training."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pytest
from sklearn.linear_model import Ridge
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from tests.clipper.conftest import write_linear_onnx
from veloxserve.config import HomeLayout
from veloxserve.errors import InvalidInput
from veloxserve.models.basis import BasisInputs, BlackBoxBasis
from veloxserve.storage.versions import VersionStore
from veloxserve.training.basis_trainer import BasisRecipe, read_catalogue, recipe_from_spec, train_basis_version
from veloxserve.training.oracle_mtl import OracleConfig
from veloxserve.training.ratings import Ratings

INPUTS = BasisInputs(numeric=("a", "b", "c"))


@pytest.fixture
def table(tmp_path: Path):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(25, 3))
    items = [f"doc{j:02d}" for j in range(25)]
    pacsv.write_csv(pa.table({"item": items, "a": x[:, 0], "b": x[:, 1], "c": x[:, 2]}), tmp_path / "items.csv")
    users = np.repeat(np.arange(8), 10)
    rows = np.concatenate([rng.choice(25, 10, replace=False) for _ in range(8)])
    scores = x[rows] @ np.array([1.0, -0.5, 0.2]) + rng.normal(size=8)[users] + 3
    ratings = Ratings(np.char.add("u", users.astype(str)), np.array(items)[rows], scores)
    return tmp_path / "items.csv", x, ratings


def test_a_fixed_onnx_basis_trains_only_the_users(tmp_path: Path, table) -> None:
    path, x, ratings = table
    W, B = np.random.default_rng(1).normal(size=(3, 2)), np.zeros(2)
    basis = BlackBoxBasis(
        write_linear_onnx(tmp_path, W, B).read_bytes(), framework="onnx", inputs=INPUTS, outputs=2, name="lin"
    )
    layout = HomeLayout(tmp_path / "home")
    meta = train_basis_version(
        layout, "m", ratings, items=path, recipe=BasisRecipe("fixed", INPUTS, basis=basis), heldout_fraction=0
    )
    arrays = VersionStore(layout.versions_dir("m")).read_arrays(meta["version"])
    F = np.column_stack([x @ W, np.ones(25)])
    np.testing.assert_allclose(arrays["item_features"], F, atol=1e-5)
    assert meta["basis"]["training"] == "fixed" and meta["basis"]["framework"] == "onnx" and meta["k"] == 3
    lam, w0 = arrays["prior_precision"], arrays["prior_mean"]
    mine = ratings.users == "u3"
    rows = np.searchsorted(arrays["item_ids"], ratings.items[mine])
    F = arrays["item_features"]
    expected = np.linalg.solve(np.diag(lam) + F[rows].T @ F[rows], lam * w0 + F[rows].T @ ratings.scores[mine])
    np.testing.assert_allclose(arrays["user_weights"][list(arrays["user_ids"]).index("u3")], expected, atol=1e-9)


def test_first_order_torch_basis_version(tmp_path: Path, table) -> None:
    torch = pytest.importorskip("torch")
    path, x, ratings = table
    module = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.Tanh())
    recipe = BasisRecipe("first-order", INPUTS, module=module, name="mlp")
    config = OracleConfig(k=2, iterations=2, steps=10)
    meta = train_basis_version(HomeLayout(tmp_path / "home"), "m", ratings, items=path, recipe=recipe, config=config)
    assert meta["basis"]["framework"] == "torch" and meta["heldout_rmse"] is not None
    assert len(meta["losses"]) == 2


def test_oracle_version_keeps_unrated_items_and_skips_ratings_of_unknown_items(tmp_path: Path, table) -> None:
    path, _, ratings = table
    extra = Ratings(
        np.append(ratings.users, "u0"), np.append(ratings.items, "not-in-table"), np.append(ratings.scores, 3.0)
    )
    layout = HomeLayout(tmp_path / "home")
    recipe = BasisRecipe("oracle-mtl", INPUTS, solver=Ridge(alpha=0.1))
    meta = train_basis_version(layout, "m", extra, items=path, recipe=recipe, config=OracleConfig(k=2, iterations=2))
    arrays = VersionStore(layout.versions_dir("m")).read_arrays(meta["version"])
    assert len(arrays["item_ids"]) == 25 and meta["n_items"] == 25 and "not-in-table" not in arrays["item_ids"]
    assert arrays["user_counts"].sum() == len(ratings)


def test_refused_before_training(tmp_path: Path, table) -> None:
    path, _, ratings = table
    with pytest.raises(InvalidInput, match="does not accept sample weights"):
        BasisRecipe("oracle-mtl", INPUTS, solver=make_pipeline(StandardScaler(), Ridge()))
    layout = HomeLayout(tmp_path / "home")
    recipe = BasisRecipe("oracle-mtl", BasisInputs(numeric=("a", "zz")), solver=Ridge())
    with pytest.raises(InvalidInput, match="'zz'") as err:
        train_basis_version(layout, "m", ratings, items=path, recipe=recipe)
    assert err.value.field == "zz" and VersionStore(layout.versions_dir("m")).versions() == []
    unknown = Ratings(ratings.users, np.char.add(ratings.items, "x"), ratings.scores)
    with pytest.raises(InvalidInput, match="No rating is of an item in the item table"):
        train_basis_version(layout, "m", unknown, items=path, recipe=BasisRecipe("oracle-mtl", INPUTS, solver=Ridge()))
    with pytest.raises(InvalidInput, match="needs a solver"):
        BasisRecipe("oracle-mtl", INPUTS)
    with pytest.raises(InvalidInput, match="method must be one of"):
        BasisRecipe("magic", INPUTS, solver=Ridge())


def test_non_numeric_input_columns_are_named(tmp_path: Path) -> None:
    pacsv.write_csv(pa.table({"item": ["a", "b"], "a": ["x", "y"]}), tmp_path / "t.csv")
    with pytest.raises(InvalidInput, match=r"\['a'\].*must hold numbers"):
        read_catalogue(tmp_path / "t.csv", BasisInputs(numeric=("a",)))


def test_recipe_from_the_command_line_spec() -> None:
    recipe = recipe_from_spec("oracle-mtl:sklearn.linear_model.Ridge", "text", params='{"alpha": 3.0}')
    assert isinstance(recipe.solver, Ridge) and recipe.solver.alpha == 3.0 and recipe.inputs.text == "text"
    assert recipe_from_spec("oracle-mtl:sklearn.tree.DecisionTreeRegressor", "a,b").inputs.numeric == ("a", "b")
    with pytest.raises(InvalidInput, match="no importable estimator"):
        recipe_from_spec("oracle-mtl:sklearn.linear_model.Nope", "text")
    with pytest.raises(InvalidInput, match="METHOD:WHAT"):
        recipe_from_spec("als:whatever", "text")


@pytest.mark.parametrize("method", ["fixed", "first-order", "oracle-mtl"])
def test_retrain_version_dispatches_on_the_parents_kind_and_keeps_its_recipe(tmp_path: Path, table, method) -> None:
    from veloxserve.training.trainer import retrain_version

    path, x, ratings = table
    layout = HomeLayout(tmp_path / "home")
    if method == "fixed":
        onnx = write_linear_onnx(tmp_path, np.eye(3)[:, :2], np.zeros(2)).read_bytes()
        recipe = BasisRecipe(method, INPUTS, basis=BlackBoxBasis(onnx, framework="onnx", inputs=INPUTS, outputs=2))
    elif method == "first-order":
        torch = pytest.importorskip("torch")
        recipe = BasisRecipe(method, INPUTS, module=torch.nn.Linear(3, 2))
    else:
        recipe = BasisRecipe(method, INPUTS, solver=Ridge(alpha=0.3))
    config = OracleConfig(k=2, iterations=2, steps=5)
    train_basis_version(layout, "m", ratings, items=path, recipe=recipe, config=config, heldout_fraction=0)
    store = VersionStore(layout.versions_dir("m"))
    child = store.reserve()
    meta = retrain_version(layout, "m", child, parent="v1", upto_lsn=0, reason="manual")
    assert meta["kind"] == "black_box" and meta["parent"] == "v1" and meta["basis"]["training"] == method
    assert meta["holdout"] == "none" and meta["rows_trained"] == len(ratings)
    arrays = store.read_arrays(child)
    assert arrays["item_features"].shape == (25, 3) and np.isfinite(arrays["user_weights"]).all()
    if method == "fixed":  # the same basis: the same features
        np.testing.assert_allclose(arrays["item_features"], store.read_arrays("v1")["item_features"])
    if method == "oracle-mtl":
        from veloxserve.training.basis_files import load_basis

        solver = load_basis(store.directory / child, store.read_meta(child)).models[0]
        assert isinstance(solver, Ridge) and solver.alpha == 0.3
