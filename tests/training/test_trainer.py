"""Training data and holdouts: every instance's log merged; `train` serves all it was given; a retrain
compares only on rows neither version was fitted on."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from veloxserve.config import HomeLayout
from veloxserve.storage.observation_log import ObservationLog
from veloxserve.training.als import ALSConfig, train_als
from veloxserve.training.catify import generate_catify
from veloxserve.training.ratings import Ratings, load_ratings, split_holdout
from veloxserve.training.trainer import training_data


def test_training_data_merges_the_main_log_and_instance_logs(tmp_path: Path) -> None:
    layout = HomeLayout(tmp_path)
    with ObservationLog(layout.log_dir("m")) as main, ObservationLog(layout.instance_log_dir("m", "b")) as b:
        main.append_and_wait([("u1", "i1", 1.0, "v1")])
        b.append_and_wait([("u2", "i2", 2.0, "v1"), ("u3", "i3", 3.0, "v1")])
        main.append_and_wait([("u4", "i4", 4.0, "v1")])  # after the snapshot below: not trained on
    data, window = training_data(layout, "m", upto_lsn=1)
    assert data.users.tolist() == ["u1", "u2", "u3"] and data.scores.tolist() == [1.0, 2.0, 3.0]
    assert window["log_rows"] == 3 and window["log_positions"] == {"b": 2}


CONFIG = ALSConfig(rank=4, iterations=4, reg=1.0, prior_precision=1.0)


def _with_rare_users_and_items(ratings: Ratings, n: int = 40) -> Ratings:
    """Users and items with a single rating: a random 10% split leaves several out of the fit."""
    users = np.concatenate([ratings.users, [f"solo{i}" for i in range(n)]])
    items = np.concatenate([ratings.items, [f"rare{i}" for i in range(n)]])
    return Ratings(users, items, np.concatenate([ratings.scores, np.full(n, 4.0)]))


def test_train_serves_every_user_and_item_it_was_given_and_says_how_the_figure_was_computed(tmp_path: Path) -> None:
    from veloxserve import Velox
    from veloxserve.storage.versions import VersionStore

    ratings = _with_rare_users_and_items(generate_catify(80, 60, n_ratings=3000, seed=3).ratings)
    with Velox(tmp_path) as velox:
        meta = velox.train("m", ratings, CONFIG)
        server = velox.server("m")
        for user, item in zip(ratings.users[-40:], ratings.items[-40:]):
            assert user in server.users.rows
            velox.predict("m", user, item)  # no 404: every item in the ratings is served
        arrays = VersionStore(velox.layout.versions_dir("m")).read_arrays(meta["version"])
    assert set(arrays["user_ids"]) == set(ratings.users)
    assert set(arrays["item_ids"]) == set(ratings.items)
    assert int(arrays["user_counts"].sum()) == len(ratings) == meta["rows_trained"]
    train, test = split_holdout(ratings, CONFIG.heldout_fraction, CONFIG.seed)
    assert 0 < len(test) and meta["heldout_rows"] == len(test)
    assert meta["evaluation"] == (
        f"heldout_rmse computed on a 10% split ({len(test)} rows) fitted separately; "
        f"the served version is fitted on all {len(ratings)} rows"
    )
    # Independent: the figure is the split fit's, θ is the fit on everything.
    assert meta["heldout_rmse"] == pytest.approx(train_als(train, CONFIG, test).heldout_rmse)
    everything = train_als(ratings, CONFIG)
    np.testing.assert_array_equal(arrays["item_ids"], everything.arrays["item_ids"])
    np.testing.assert_allclose(arrays["item_factors"], everything.arrays["item_factors"], atol=1e-8)


def _independent_rmse(arrays: dict, mu: float, train: Ratings, test: Ratings) -> float:
    """Each test row's user re-solved by ridge on their train rows against a version's θ; RMSE."""
    ids = list(arrays["item_ids"])
    F = np.column_stack([arrays["item_factors"], mu + arrays["item_bias"], np.ones(len(ids))])
    lam, w0 = arrays["prior_precision"], arrays["prior_mean"]
    errors = []
    for user, item, score in zip(test.users, test.items, test.scores):
        mask = train.users == user
        rows = [ids.index(x) for x in train.items[mask]]
        A = np.diag(lam) + F[rows].T @ F[rows]
        w = np.linalg.solve(A, lam * w0 + F[rows].T @ train.scores[mask])
        errors.append(score - w @ F[ids.index(item)])
    return float(np.sqrt(np.mean(np.square(errors))))


def test_a_retrain_after_a_forget_compares_only_on_rows_neither_version_was_fitted_on(tmp_path: Path) -> None:
    from veloxserve import Velox
    from veloxserve.storage.observation_log import read_log
    from veloxserve.storage.versions import VersionStore

    catify = generate_catify(120, 80, n_ratings=5000, seed=5)
    rng = np.random.default_rng(1)

    def observe(velox: Velox, n: int) -> None:
        velox.observe_many(
            "m", [(str(rng.integers(0, 120)), int(rng.integers(0, 80)), float(rng.normal(3, 1))) for _ in range(n)]
        )

    with Velox(tmp_path) as velox:
        velox.train("m", catify.ratings, CONFIG)
        observe(velox, 30)
        velox.forget_user("7")  # shifts the base rows: a random split no longer lines up with v1's
        job = velox.retrain("m", wait=True)
        entry = velox.version("m", job.version)
        # v1 is fitted on every base row and on no logged one; 30 logged rows are too few to compare on.
        assert entry["comparison"]["rows"] == 0 and entry["comparison"]["parent_rmse"] is None
        assert job.state == "ready" and "nothing to compare on" in entry["decision"]

        velox.retrain("m", promote="always", wait=True)  # v3: fitted on every row, up to LSN 30
        observe(velox, 150)
        velox.forget_user("11")
        job = velox.retrain("m", promote="never", wait=True)
        entry = velox.version("m", job.version)
        parent = velox.version("m", job.parent)
        assert job.parent == "v3" and parent["holdout"] == "none"
        # Independent: every logged record left, newest last; the parent read up to its log position.
        records = [r for r in read_log(velox.layout.log_dir("m")) if r.lsn <= job.upto_lsn]
        n_hold = round(CONFIG.heldout_fraction * len(records))
        held = records[-n_hold:]
        assert min(r.lsn for r in held) > parent["log_position"]  # rows the parent never read
        comparison = entry["comparison"]
        assert comparison["rows"] == n_hold and comparison["first_lsn"] == held[0].lsn
        base = load_ratings(velox.layout.base_data("m"))
        kept = records[:-n_hold]
        train = Ratings(
            np.concatenate([base.users, [r.user for r in kept]]),
            np.concatenate([base.items, [r.item for r in kept]]),
            np.concatenate([base.scores, [r.score for r in kept]]),
        )
        test = Ratings(
            np.array([r.user for r in held]), np.array([r.item for r in held]), np.array([r.score for r in held])
        )
        versions = VersionStore(velox.layout.versions_dir("m"))
        for name, key in ((job.parent, "parent_rmse"), (job.version, "candidate_rmse")):
            arrays, meta = versions.read_arrays(name), versions.read_meta(name)
            assert comparison[key] == pytest.approx(
                _independent_rmse(arrays, meta["global_mean"], train, test), rel=1e-6
            )


@settings(max_examples=200, deadline=None)
@given(
    n_base=st.integers(0, 20),
    n_main=st.integers(0, 60),
    hold=st.integers(0, 60),
    n_new=st.integers(0, 30),
    n_other=st.integers(0, 10),
    erase=st.sets(st.integers(1, 90)),
    data=st.data(),
)
def test_the_rows_a_retrain_may_compare_on_are_exactly_those_its_parent_was_not_fitted_on(
    n_base: int, n_main: int, hold: int, n_new: int, n_other: int, erase: set[int], data
) -> None:
    """A parent fitted on every row it read except the newest `hold` logged ones; later some of
    its rows are forgotten (erased) and new ones logged. The next retrain's eligible rows must be
    exactly the parent's held-out rows still there plus the new ones, never a base row or one it
    was fitted on."""
    from veloxserve.training.trainer import _unfitted_from, unfitted_by

    def origin(main_lsns: list[int], other_lsns: list[int]) -> dict[str, np.ndarray]:
        return {
            "instances": np.array([""] * n_base + ["main"] * len(main_lsns) + ["b"] * len(other_lsns)),
            "lsns": np.array([-1] * n_base + main_lsns + other_lsns, dtype=np.int64),
        }

    read_main = [lsn for lsn in range(1, n_main + 1) if lsn not in erase]
    before = origin(read_main, list(range(1, n_other + 1)))
    held_lsns = set(read_main[len(read_main) - min(hold, len(read_main)) :])
    held = (before["instances"] == "main") & np.isin(before["lsns"], list(held_lsns))
    spec = _unfitted_from(before, held, upto_lsn=n_main)
    later_erase = data.draw(st.sets(st.integers(1, n_main + n_new + 1)))
    now_main = [lsn for lsn in range(1, n_main + n_new + 1) if lsn not in erase and lsn not in later_erase]
    new_other = data.draw(st.integers(0, 5))
    after = origin(now_main, list(range(1, n_other + new_other + 1)))
    expected = [
        (i == "main" and (lsn in held_lsns or lsn > n_main)) or (i == "b" and lsn > n_other)
        for i, lsn in zip(after["instances"], after["lsns"])
    ]
    assert unfitted_by({"theta_unfitted_from": spec}, after).tolist() == expected


def test_a_trained_version_stores_a_reference_of_its_training_rows_scored_as_served(tmp_path: Path) -> None:
    """models/reference.py: a uniform sample of the training rows; its scores are what the
    version serves for those (user, item) pairs before any online learning."""
    from veloxserve import Velox
    from veloxserve.models.reference import REFERENCE_ROWS

    ratings = generate_catify(80, 60, n_ratings=3000, seed=4).ratings
    with Velox(tmp_path) as velox:
        meta = velox.train("m", ratings, CONFIG)
        server = velox.server("m")
        reference = server.version.reference
        assert reference is not None and meta["reference"] == {"rows": 2000, "sampled_from": len(ratings), "seed": 0}
        assert reference.scores.size == min(REFERENCE_ROWS, len(ratings))
        pairs = set(zip(ratings.users.tolist(), ratings.items.tolist()))
        served = {}
        for user, item in pairs:
            served.setdefault(item, []).append(velox.predict("m", user, item))
        for row, score in zip(reference.item_rows[:200], reference.scores[:200]):
            assert np.isclose(served[str(server.version.catalog.external(int(row)))], score).any()
