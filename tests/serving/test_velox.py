"""The in-process API over a home directory: train, serve, learn, reopen."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from veloxserve import Conflict, ModelNotFound, Velox
from veloxserve.errors import InvalidInput, NotFound
from veloxserve.training.als import ALSConfig
from veloxserve.training.catify import generate_catify


@pytest.fixture(scope="module")
def ratings():
    return generate_catify(200, 150, n_ratings=8000, seed=2).ratings


def test_train_serve_learn_and_reopen(tmp_path: Path, ratings) -> None:
    with Velox(tmp_path) as velox:
        meta = velox.train("songs", ratings, ALSConfig(rank=4, iterations=4))
        assert meta["version"] == "v1" and meta["rows_trained"] == len(ratings)  # served: fitted on every row
        velox.observe("songs", "newcomer", 3, 5.0)
        velox.observe_many("songs", [(1, 3, 1.0), (1, 4, 2.0)])
        expected = {u: velox.server("songs").users.weights(u).copy() for u in ("newcomer", "1")}
        assert velox.describe("songs")["active_version"] == "v1"
    with Velox(tmp_path) as velox:  # clean close: from the checkpoint
        for user, w in expected.items():
            np.testing.assert_allclose(velox.server("songs").users.weights(user), w, atol=1e-12)


def test_a_second_version_replays_the_feedback_of_the_first(tmp_path: Path, ratings) -> None:
    with Velox(tmp_path) as velox:
        velox.train("songs", ratings, ALSConfig(rank=4, iterations=4))
        velox.observe("songs", "fan", 3, 5.0)
        velox.train("songs", ratings, ALSConfig(rank=6, iterations=4))
        server = velox.server("songs")
        assert server.version_id == "v2" and server.replayed == 1
        assert server.users.counts[server.users.rows["fan"]] == 1
        velox.activate("songs", "v1")
        assert velox.server("songs").version_id == "v1"
        with pytest.raises(NotFound, match="v7"):
            velox.activate("songs", "v7")


def test_one_process_owns_a_home(tmp_path: Path) -> None:
    with Velox(tmp_path):
        with pytest.raises(Conflict, match="in use"):
            Velox(tmp_path)
    Velox(tmp_path).close()  # released on close


def test_unknown_model_and_bad_model_names(tmp_path: Path, ratings) -> None:
    with Velox(tmp_path) as velox:
        with pytest.raises(ModelNotFound, match="none yet"):
            velox.predict("nope", 1, 2)
        with pytest.raises(InvalidInput, match="'model'"):
            velox.train("../escape", ratings)
