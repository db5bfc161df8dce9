"""Ratings + an item table -> a black-box basis version; base data + log -> its retrain.

The Shared Basis counterpart of trainer.train_version / retrain_version: the catalogue is the
item table (every item with inputs can be served, rated or not), f(x) of each item comes from its
declared input columns, θ is fitted by oracle-MTL (a black-box solver per basis function), by
the first-order variant (a PyTorch module), or is given pre-fitted ("fixed": any framework,
ONNX included, only the users are trained). The version is an ordinary one: the same user
arrays, prior and meta fields, plus `item_features` and the basis file, so serving, online
learning, forgetting and the retrainer treat it like any other.

Everything that can be checked is checked before θ is fitted: the declared columns against the
item table, the solver's sample weights, the basis's outputs on the catalogue.
"""

from __future__ import annotations

import importlib
import json
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
from sklearn.base import clone

from veloxserve.config import HomeLayout
from veloxserve.errors import InvalidInput
from veloxserve.models.basis import KIND, BasisInputs, BlackBoxBasis
from veloxserve.models.version import Link, score_range_of
from veloxserve.storage.item_tables import read_item_table
from veloxserve.storage.observation_log import MAIN_INSTANCE
from veloxserve.storage.versions import VersionStore
from veloxserve.training.als import solve_users
from veloxserve.training.basis_files import basis_files, fixed_basis, load_basis
from veloxserve.training.multilevel import MultilevelConfig, train_multilevel
from veloxserve.training.oracle_mtl import (
    FittedBasis,
    IndexedRatings,
    OracleConfig,
    check_solver,
    solve_weights,
    train_first_order,
    train_oracle,
)
from veloxserve.training.ratings import Ratings, load_ratings, split_holdout

METHODS = ("oracle-mtl", "first-order", "fixed", "multilevel")
MIN_RECENT_HOLDOUT = 50  # as trainer.py: fewer unfitted logged rows and a comparison is noise


@dataclass(frozen=True)
class BasisRecipe:
    """How θ is obtained: `method` oracle-mtl (`solver`, a template cloned per f_i), first-order
    (`module`, a torch module (n, p) -> (n, k)) or fixed (`basis`, already fitted)."""

    method: str
    inputs: BasisInputs
    solver: Any = None
    module: Any = None
    basis: BlackBoxBasis | None = None
    name: str = "basis"

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise InvalidInput(
                f"The basis method must be one of {', '.join(METHODS)}; got {self.method!r}.", field="basis"
            )
        needed = {"oracle-mtl": self.solver, "first-order": self.module, "fixed": self.basis}.get(
            self.method, self.solver
        )
        if needed is None:
            what = {"first-order": "a torch module", "fixed": "a fitted basis"}.get(self.method, "a solver")
            raise InvalidInput(f"A {self.method} basis needs {what}.", field="basis")
        if self.method in ("oracle-mtl", "multilevel"):
            check_solver(self.solver)
        if self.method == "multilevel" and not self.inputs.numeric:
            raise InvalidInput("Multilevel regression's w_u · x needs numeric input columns, not text.", field="basis")


def recipe_from_spec(spec: str, inputs: str, *, name: str = "basis", params: str | None = None) -> BasisRecipe:
    """The CLI's `--basis METHOD:WHAT` and `--basis-inputs text|COL,COL`: oracle-mtl:dotted.Class
    (with --basis-params JSON), first-order:module.pt (torch.save of a module), fixed:basis.pkl."""
    method, _, what = spec.partition(":")
    columns = [c for c in inputs.split(",") if c]
    basis_inputs = BasisInputs(text=columns[0]) if columns == ["text"] else BasisInputs(numeric=tuple(columns))
    if method == "oracle-mtl":
        module_name, _, cls_name = what.rpartition(".")
        try:
            cls = getattr(importlib.import_module(module_name), cls_name)
        except (ImportError, AttributeError, ValueError):
            raise InvalidInput(
                f"--basis oracle-mtl:{what}: no importable estimator class {what!r}.", field="basis"
            ) from None
        return BasisRecipe(method, basis_inputs, solver=cls(**json.loads(params or "{}")), name=name)
    if method == "first-order":
        import torch

        return BasisRecipe(method, basis_inputs, module=torch.load(what, weights_only=False), name=name)
    if method == "fixed":
        return BasisRecipe(method, basis_inputs, basis=fixed_basis(Path(what), basis_inputs, name), name=name)
    raise InvalidInput(
        f"--basis must be METHOD:WHAT with METHOD one of {', '.join(METHODS)}; got {spec!r}.", field="basis"
    )


@dataclass
class Catalogue:
    item_ids: np.ndarray  # sorted str
    inputs: Any  # list of texts or (n, p) array, in item_ids order


def read_catalogue(path: Path, inputs: BasisInputs) -> Catalogue:
    """Item ids and their declared input columns; InvalidInput naming a missing column."""
    table = read_item_table(path)
    inputs.check_columns(table.column_names, f"the item table {path}")
    ids = np.array(table["item"].cast(pa.string()).to_pylist(), dtype=str)
    ids, first = np.unique(ids, return_index=True)
    if inputs.text is not None:
        texts = table[inputs.text].cast(pa.string()).fill_null("").to_pylist()
        return Catalogue(ids, [texts[i] for i in first])
    try:
        matrix = np.column_stack(
            [np.asarray(table[c].to_numpy(zero_copy_only=False), dtype=np.float64) for c in inputs.numeric]
        )
    except (ValueError, TypeError, pa.ArrowException):
        raise InvalidInput(
            f"The numeric input columns {list(inputs.numeric)} of {path} must hold numbers.", field="items"
        ) from None
    return Catalogue(ids, matrix[first])


def _indexed(
    ratings: Ratings, item_ids: np.ndarray, user_ids: np.ndarray | None = None
) -> tuple[IndexedRatings, np.ndarray]:
    """Ratings of catalogue items as rows (users: `user_ids` or their own), and which rows were kept."""
    rows = np.searchsorted(item_ids, ratings.items)
    known = (rows < len(item_ids)) & (item_ids[np.minimum(rows, len(item_ids) - 1)] == ratings.items)
    if user_ids is None:
        user_ids, users = np.unique(ratings.users[known], return_inverse=True)
    else:
        users = np.searchsorted(user_ids, ratings.users[known])
    data = IndexedRatings(
        users.astype(np.int64), rows[known].astype(np.int64), ratings.scores[known].astype(np.float64), len(user_ids)
    )
    return data, known


def _basis(recipe: BasisRecipe, models: list[Any], config: OracleConfig) -> BlackBoxBasis:
    if recipe.method == "fixed" and recipe.basis is not None:
        return recipe.basis
    framework = "torch" if recipe.method == "first-order" else "sklearn"
    if recipe.method == "multilevel":  # [f(x; θ), x, 1], f's weight held at 1 (training/multilevel.py)
        return BlackBoxBasis(
            models, framework=framework, inputs=recipe.inputs, outputs=1, name=recipe.name, passthrough=True
        )
    return BlackBoxBasis(
        models, framework=framework, inputs=recipe.inputs, outputs=config.k, name=recipe.name, constant=config.constant
    )


def _heldout_rmse(
    features: np.ndarray, users: dict[str, np.ndarray], prior_mean: np.ndarray, test: Ratings, item_ids: np.ndarray
) -> float | None:
    """RMSE on `test` with trained users' weights (cold users: the prior mean)."""
    if len(test) == 0:
        return None
    data, known = _indexed(test, item_ids, users["user_ids"])
    if data.scores.size == 0:
        return None
    ids = users["user_ids"]
    warm = (data.users < len(ids)) & (ids[np.minimum(data.users, len(ids) - 1)] == test.users[known])
    W = np.where(warm[:, None], users["user_weights"][np.minimum(data.users, max(len(ids) - 1, 0))], prior_mean)
    pred = np.einsum("ij,ij->i", W, features[data.items])
    return float(np.sqrt(np.mean((data.scores - pred) ** 2)))


def fit_basis(
    recipe: BasisRecipe, catalogue: Catalogue, train: Ratings, config: OracleConfig
) -> tuple[BlackBoxBasis, np.ndarray, dict[str, np.ndarray], list[float]]:
    """(basis, item_features (n_items, d), user arrays with the prior, losses) fitted on `train`."""
    shell = recipe.basis or BlackBoxBasis([], framework="callable", inputs=recipe.inputs, outputs=config.k)
    design = shell.design(catalogue.inputs)
    data, _ = _indexed(train, catalogue.item_ids)
    if data.scores.size == 0:
        raise InvalidInput(
            "No rating is of an item in the item table: check the 'item' ids of both files.", field="items"
        )
    fitted: FittedBasis | None = None
    if recipe.method == "oracle-mtl":
        fitted = train_oracle(design, data, recipe.solver, config)
    elif recipe.method == "first-order":
        fitted = train_first_order(recipe.module, design, data, config, warm=True)
    elif recipe.method == "multilevel":
        settings = MultilevelConfig(iterations=config.iterations, prior_precision=config.prior_precision)
        fitted = train_multilevel(design, data, recipe.solver, settings)
    if fitted is None and recipe.basis is not None:
        basis = recipe.basis
    else:
        basis = _basis(recipe, fitted.models if fitted else [], config)
    features = basis.transform(catalogue.inputs)  # checks outputs: finite, of the declared width
    if fitted is None:  # a fixed basis: the prior mean is the mean user fitted around zero
        precision = np.full(basis.dim, config.prior_precision)
        W, _, _, _ = solve_weights(data, features, np.zeros(basis.dim), precision)
        prior_mean, losses = W.mean(axis=0), []
    else:
        prior_mean, precision, losses = fitted.prior_mean, fitted.prior_precision, fitted.losses
    users = solve_users(train, catalogue.item_ids, features, precision, prior_mean)
    return basis, features, {**users, "prior_mean": prior_mean, "prior_precision": precision}, losses


def train_basis_version(
    layout: HomeLayout,
    model: str,
    ratings: str | Path | Ratings,
    *,
    items: str | Path,
    recipe: BasisRecipe,
    config: OracleConfig | None = None,
    heldout_fraction: float = 0.1,
    score_range: tuple[float, float] | None = None,
) -> dict[str, Any]:
    """Train a black-box basis version from a ratings file and an item table; write it, keep the
    ratings as base data and the table as the model's item file (as trainer.train_version)."""
    from veloxserve.training.trainer import accepted_score_range, save_base_data, save_item_table

    config = config or OracleConfig()
    if recipe.method == "fixed" and recipe.basis is not None:
        config = replace(config, k=recipe.basis.outputs, constant=recipe.basis.constant)
    if recipe.method == "multilevel":
        config = replace(config, k=1, constant=True)
    catalogue = read_catalogue(Path(items), recipe.inputs)  # a missing column fails before training
    data = ratings if isinstance(ratings, Ratings) else load_ratings(ratings)
    started = time.perf_counter()
    train, test = split_holdout(data, heldout_fraction, config.seed)
    heldout = None
    if len(test):
        _, features, users, _ = fit_basis(recipe, catalogue, train, config)
        heldout = _heldout_rmse(features, users, users["prior_mean"], test, catalogue.item_ids)
    basis, features, users, losses = fit_basis(recipe, catalogue, data, config)
    meta = _meta(
        model,
        recipe,
        basis,
        config,
        data,
        started,
        losses,
        score_range=accepted_score_range(data.scores, Link.IDENTITY, score_range),
        n_items=len(catalogue.item_ids),
    )
    meta.update(
        source=str(ratings) if not isinstance(ratings, Ratings) else "in-memory ratings",
        score_range_source="data" if score_range is None else "override",
        heldout_rmse=heldout,
        heldout_rows=len(test),
        heldout_fraction=heldout_fraction,
        log_position=0,
        reason="manual",
        theta_unfitted_from={MAIN_INSTANCE: 0},
    )
    save_item_table(layout, model, items)
    version = VersionStore(layout.versions_dir(model)).write(
        _arrays(catalogue, features, users), meta, files=basis_files(basis)
    )
    save_base_data(layout, model, data)
    return {**meta, "version": version}


def retrain_basis_version(
    layout: HomeLayout,
    model: str,
    version: str,
    *,
    parent: str,
    upto_lsn: int,
    reason: str,
    overrides: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Refit the parent's basis (same recipe: its solver re-cloned, its module warm-started) on
    the base data plus the log, holding out the newest logged rows the parent was not fitted on
    to compare both (as trainer.retrain_version); the served users see every row."""
    from veloxserve.training.trainer import _unfitted_from, training_data, unfitted_by

    versions = VersionStore(layout.versions_dir(model))
    parent_meta = versions.read_meta(parent)
    parent_basis = load_basis(versions.directory / parent, parent_meta)
    spec = parent_meta["basis"]
    config = OracleConfig(
        **{**spec["config"], **{k: v for k, v in (overrides or {}).items() if k in spec["config"] and v is not None}}
    )
    method = spec["training"]
    recipe = BasisRecipe(
        method,
        parent_basis.inputs,
        solver=clone(parent_basis.models[0]) if method in ("oracle-mtl", "multilevel") else None,
        module=parent_basis.models[0] if method == "first-order" else None,
        basis=parent_basis if method == "fixed" else None,
        name=parent_basis.name,
    )
    catalogue = read_catalogue(layout.items_file(model), recipe.inputs)
    data, window, origin = training_data(layout, model, upto_lsn, origin=True)
    low, high = score_range_of(parent_meta)
    keep = (data.scores >= low) & (data.scores <= high)
    data, origin = data.take(np.flatnonzero(keep)), {n: c[keep] for n, c in origin.items()}
    unfitted = np.flatnonzero(unfitted_by(parent_meta, origin))
    held = np.zeros(len(data), dtype=bool)
    if unfitted.size >= MIN_RECENT_HOLDOUT:
        held[unfitted[-max(1, int(round(0.1 * window["log_rows"]))) :]] = True
    started = time.perf_counter()
    train, test = data.take(np.flatnonzero(~held)), data.take(np.flatnonzero(held))
    basis, features, users, losses = fit_basis(recipe, catalogue, train, config)
    comparison: dict[str, Any] = {
        "rows": int(held.sum()),
        "rows_unfitted_by_parent": int(unfitted.size),
        "rows_needed": MIN_RECENT_HOLDOUT,
    }
    if held.any():
        parent_features = parent_basis.transform(catalogue.inputs)
        prior = versions.read_arrays(parent)
        parent_users = solve_users(
            train, catalogue.item_ids, parent_features, prior["prior_precision"], prior["prior_mean"]
        )
        comparison["parent_rmse"] = _heldout_rmse(
            parent_features, parent_users, prior["prior_mean"], test, catalogue.item_ids
        )
        comparison["candidate_rmse"] = _heldout_rmse(features, users, users["prior_mean"], test, catalogue.item_ids)
    served = solve_users(data, catalogue.item_ids, features, users["prior_precision"], users["prior_mean"])
    users = {**users, **served}
    meta = _meta(
        model,
        recipe,
        basis,
        config,
        data,
        started,
        losses,
        score_range=list(score_range_of(parent_meta)),
        n_items=len(catalogue.item_ids),
    )
    meta.update(
        source="base data + observation log",
        score_range_source=parent_meta.get("score_range_source", "data"),
        reason=reason,
        parent=parent,
        log_position=upto_lsn,
        log_positions=window["log_positions"],
        data=window,
        holdout="recent" if held.any() else "none",
        theta_unfitted_from=_unfitted_from(origin, held, upto_lsn),  # per log instance, as ALS retrains
        comparison=comparison,
        heldout_rmse=comparison.get("candidate_rmse"),
        heldout_rows=int(held.sum()),
    )
    versions.write(_arrays(catalogue, features, users), meta, version=version, files=basis_files(basis))
    return {**meta, "version": version}


def _arrays(catalogue: Catalogue, features: np.ndarray, users: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {"item_ids": catalogue.item_ids, "item_features": features, **users}


def _meta(
    model: str,
    recipe: BasisRecipe,
    basis: BlackBoxBasis,
    config: OracleConfig,
    data: Ratings,
    started: float,
    losses: list[float],
    *,
    score_range: list[float],
    n_items: int,
) -> dict[str, Any]:
    from datetime import UTC, datetime

    return {
        "model": model,
        "kind": KIND,
        "engine": "local",
        "link": Link.IDENTITY.value,
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "score_range": score_range,
        "k": basis.dim,
        "global_mean": float(data.scores.mean()),
        "prior_precision": config.prior_precision,
        "iterations": config.iterations,
        "seed": config.seed,
        "basis": {**basis.describe(), "training": recipe.method, "config": asdict(config)},
        "losses": losses,
        "rows_trained": len(data),
        "n_users": int(np.unique(data.users).size),
        "n_items": n_items,
        "train_seconds": round(time.perf_counter() - started, 4),
    }
