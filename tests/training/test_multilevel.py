"""Multilevel regression σ(f(x; θ) + w_u · [x, 1]): trained by alternation, served as the basis [f, x, 1]."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pytest
from sklearn.tree import DecisionTreeRegressor

from veloxserve import Velox
from veloxserve.errors import InvalidInput
from veloxserve.models.basis import BasisInputs
from veloxserve.training.basis_trainer import BasisRecipe, train_basis_version
from veloxserve.training.multilevel import MultilevelConfig, train_multilevel
from veloxserve.training.oracle_mtl import IndexedRatings, OracleConfig
from veloxserve.training.ratings import Ratings

NOISE = 0.1


def planted(n_users: int = 30, n_items: int = 80, per_user: int = 40, seed: int = 0):
    """y = g(x) + w_u · [x, 1] + noise with g a step function (what a tree can fit, a line cannot)."""
    rng = np.random.default_rng(seed)
    x = rng.uniform(-1, 1, size=(n_items, 2))
    g = 2.0 * (x[:, 0] > 0) - 1.0 * (x[:, 1] > 0.5)
    W = rng.normal(scale=0.5, size=(n_users, 3))
    users = np.repeat(np.arange(n_users), per_user)
    items = np.concatenate([rng.choice(n_items, per_user, replace=False) for _ in range(n_users)])
    linear = np.hstack([x, np.ones((n_items, 1))])
    y = g[items] + np.einsum("ij,ij->i", W[users], linear[items]) + rng.normal(scale=NOISE, size=items.size)
    return x, IndexedRatings(users, items, y, n_users), g


def test_alternation_descends_and_recovers_the_shared_part() -> None:
    x, data, g = planted()
    fitted = train_multilevel(
        x, data, DecisionTreeRegressor(max_depth=4), MultilevelConfig(iterations=6, prior_precision=0.1)
    )
    assert fitted.losses[-1] < 0.5 * fitted.losses[0]  # a tree is a greedy oracle: descent overall, not per step
    served = np.hstack([fitted.raw, x, np.ones((len(x), 1))])
    pred = np.einsum("ij,ij->i", fitted.weights[data.users], served[data.items])
    assert np.sqrt(np.mean((pred - data.scores) ** 2)) < 2 * NOISE
    np.testing.assert_array_equal(fitted.weights[:, 0], 1.0)
    assert fitted.prior_mean[0] == 1.0 and fitted.prior_precision[0] == MultilevelConfig().anchor_precision
    # f carries g's non-linear part (what the users' w_u · [x, 1] cannot express); linear parts trade places
    linear = np.hstack([x, np.ones((len(x), 1))])

    def nonlinear(v: np.ndarray) -> np.ndarray:
        return v - linear @ np.linalg.lstsq(linear, v, rcond=None)[0]

    assert np.corrcoef(nonlinear(fitted.raw[:, 0]), nonlinear(g))[0, 1] > 0.9


def test_served_as_a_basis_with_the_weight_of_f_held_at_one(tmp_path: Path) -> None:
    x, data, _ = planted(n_users=15, n_items=40, per_user=20)
    items = [f"i{j}" for j in range(len(x))]
    pacsv.write_csv(pa.table({"item": items, "a": x[:, 0], "b": x[:, 1]}), tmp_path / "items.csv")
    ratings = Ratings(np.char.add("u", data.users.astype(str)), np.array(items)[data.items], data.scores)
    recipe = BasisRecipe("multilevel", BasisInputs(numeric=("a", "b")), solver=DecisionTreeRegressor(max_depth=4))
    with Velox(tmp_path / "home") as v:
        meta = train_basis_version(
            v.layout, "ml", ratings, items=tmp_path / "items.csv", recipe=recipe, config=OracleConfig(iterations=4)
        )
        v.activate("ml", meta["version"])
        server = v.server("ml")
        assert server.version.dim == 4 and meta["basis"]["passthrough"]
        arrays = v.catalog("ml").versions.read_arrays(meta["version"])
        assert np.abs(arrays["user_weights"][:, 0] - 1.0).max() < 1e-4  # the anchored weight
        for _ in range(30):
            v.observe("ml", "u1", "i3", 4.0)
        assert abs(server.users.weights("u1")[0] - 1.0) < 1e-3
        f = server.version.content.transform(x[3:4])[0]
        np.testing.assert_allclose(f[1:], [*x[3], 1.0])
        assert v.predict("ml", "u1", "i3") == pytest.approx(f @ server.users.weights("u1"))


def test_text_inputs_and_bad_settings_are_refused() -> None:
    with pytest.raises(InvalidInput, match="numeric input columns"):
        BasisRecipe("multilevel", BasisInputs(text="text"), solver=DecisionTreeRegressor())
    with pytest.raises(InvalidInput, match="out of range"):
        MultilevelConfig(iterations=0)
