"""Policies against independent computations of their update rules, and on a synthetic stream
through real containers: every learning policy moves toward the better model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.clipper.conftest import write_callable
from veloxserve.clipper import Clipper
from veloxserve.clipper.policies import Exp3, Exp4, Loss, Personalised, as_target, losses
from veloxserve.errors import ContainerUnavailable


def test_losses_zero_one_absolute_and_squared() -> None:
    outputs = np.array([[0.2, 0.8], [0.9, 0.1]])
    assert losses(outputs, as_target(1, 2), Loss.ZERO_ONE).tolist() == [0.0, 1.0]
    assert losses(np.array([[0.4], [2.0]]), np.array([0.0]), Loss.ZERO_ONE).tolist() == [0.0, 1.0]
    assert losses(np.array([[0.5], [3.0]]), np.array([0.0]), Loss.ABSOLUTE).tolist() == [0.5, 1.0]
    assert losses(np.array([[0.5], [3.0]]), np.array([0.0]), Loss.SQUARED).tolist() == [0.25, 1.0]


def test_class_labels_become_one_hot_and_bad_labels_are_rejected() -> None:
    assert as_target(2, 3).tolist() == [0.0, 0.0, 1.0]
    assert as_target(0.5, 1).tolist() == [0.5]
    for bad, dim in (
        (3, 3),
        (1.5, 3),
        ([1, 2], 1),
        (None, 1),
        (float("nan"), 1),
        ({"a": 1}, 1),
        ("1", 1),
        (True, 1),
        ([1.0, float("inf")], 2),
    ):
        with pytest.raises(ValueError):
            as_target(bad, dim)


def test_exp3_update_is_importance_weighted_on_the_drawn_model() -> None:
    policy = Exp3(3, Loss.ABSOLUTE, np.random.default_rng(1), eta=0.2, gamma=0.3)
    rng = np.random.default_rng(1)
    log_w = np.zeros(3)
    for _step in range(50):
        w = np.exp(log_w - log_w.max())
        p = 0.7 * w / w.sum() + 0.1
        expected_arm = rng.choice(3, p=p)
        chosen = policy.select("u")
        assert chosen.tolist() == [expected_arm]
        loss = [0.9, 0.1, 0.5][expected_arm]
        log_w[expected_arm] -= 0.2 * loss / p[expected_arm]
        policy.observe("u", chosen, np.array([[loss]]), np.array([0.0]))
        w = np.exp(log_w - log_w.max())
        np.testing.assert_allclose(policy.probabilities(), 0.7 * w / w.sum() + 0.1)


def test_exp4_weights_are_exponentiated_cumulative_losses_and_combine_by_them() -> None:
    policy = Exp4(2, Loss.ABSOLUTE, np.random.default_rng(0), eta=0.5)
    outputs = np.array([[1.0], [0.0]])
    for target in (1.0, 1.0, 0.0, 1.0):
        policy.observe("u", np.arange(2), outputs, np.array([target]))
    cumulative = np.array([1.0, 3.0])  # model 0 missed once, model 1 three times
    expected = np.exp(-0.5 * cumulative) / np.exp(-0.5 * cumulative).sum()
    np.testing.assert_allclose(policy.weights(), expected)
    np.testing.assert_allclose(policy.combine("u", np.arange(2), np.array([[2.0], [4.0]])), expected @ [2.0, 4.0])
    np.testing.assert_allclose(policy.combine("u", np.array([1]), np.array([[4.0]])), [4.0])  # model 0 missing


def test_personalised_weights_are_each_users_exact_ridge_solution() -> None:
    rng = np.random.default_rng(3)
    policy = Personalised(3, Loss.SQUARED, rng, prior_precision=2.0)
    F = rng.normal(size=(40, 3, 2))  # 40 feedbacks, 3 models, 2-dimensional outputs
    Y = rng.normal(size=(40, 2))
    for outputs, y in zip(F, Y):
        policy.observe("alice", np.arange(3), outputs, y)
    X = F.transpose(0, 2, 1).reshape(-1, 3)  # one ridge row per output dimension
    w0 = np.full(3, 1 / 3)
    expected = np.linalg.solve(2.0 * np.eye(3) + X.T @ X, 2.0 * w0 + X.T @ Y.reshape(-1))
    np.testing.assert_allclose(policy.user_weights("alice"), expected, rtol=1e-8)
    np.testing.assert_allclose(policy.user_weights("bob"), w0)  # a new user starts at equal weights
    np.testing.assert_allclose(policy.combine("alice", np.arange(3), F[0]), expected @ F[0])


def _deploy_good_and_bad(clipper: Clipper, tmp_path: Path) -> None:
    """good is right whenever |x| > 0.1, bad is right only when |x| > 1.5; the label is x > 0."""

    def good(batch):
        import numpy as np

        x = np.asarray(batch)[:, 0]
        return np.where(np.abs(x) > 0.1, x > 0, x < 0).astype(float)

    def bad(batch):
        import numpy as np

        x = np.asarray(batch)[:, 0]
        return np.where(np.abs(x) > 1.5, x > 0, x < 0).astype(float)

    clipper.deploy("good", "callable", write_callable(tmp_path / "good.pkl", good))
    clipper.deploy("bad", "callable", write_callable(tmp_path / "bad.pkl", bad))


def test_every_learning_policy_moves_toward_the_better_model_on_a_stream(clipper: Clipper, tmp_path: Path) -> None:
    _deploy_good_and_bad(clipper, tmp_path)
    for policy in ("exp3", "exp4", "personalised"):
        clipper.create_app(policy, ["bad", "good"], policy=policy, objective_ms=20_000, loss="zero_one")
    rng = np.random.default_rng(0)
    for _step in range(150):
        x = float(rng.normal())
        for policy in ("exp3", "exp4", "personalised"):
            clipper.observe(policy, "user", [x], float(x > 0))
    exp3 = clipper.runtime.app("exp3").policy
    exp4 = clipper.runtime.app("exp4").policy
    personalised = clipper.runtime.app("personalised").policy
    assert exp3.probabilities()[1] > 0.8, exp3.describe()
    assert exp4.weights()[1] > 0.95, exp4.describe()
    w = personalised.user_weights("user")
    assert w[1] > 0.7 and w[0] < 0.3, w
    # and the ensembles now answer like the good model where the two disagree
    assert clipper.predict("exp4", "user", [0.5])["output"] > 0.9
    assert clipper.predict("personalised", "user", [0.5])["output"] > 0.7


def test_personalised_policy_learns_different_weights_for_different_users(clipper: Clipper, tmp_path: Path) -> None:
    _deploy_good_and_bad(clipper, tmp_path)
    clipper.create_app("p", ["bad", "good"], policy="personalised", objective_ms=20_000, loss="squared")
    rng = np.random.default_rng(1)
    for _step in range(80):
        x = float(rng.uniform(-1.5, 1.5))
        clipper.observe("p", "likes-good", [x], float(x > 0))
        clipper.observe("p", "likes-bad", [x], float(x > 0) if abs(x) > 1.5 else float(x < 0))
    policy = clipper.runtime.app("p").policy
    assert policy.user_weights("likes-good")[1] > 0.8 > policy.user_weights("likes-good")[0]
    assert policy.user_weights("likes-bad")[0] > 0.8 > policy.user_weights("likes-bad")[1]
    assert clipper.predict("p", "likes-good", [0.5])["output"] > 0.8
    assert clipper.predict("p", "likes-bad", [0.5])["output"] < 0.2


def test_feedback_a_model_cannot_answer_is_rejected_and_changes_nothing(clipper: Clipper, tmp_path: Path) -> None:
    def picky(batch):
        import numpy as np

        batch = np.asarray(batch)
        if (batch[:, 0] < 0).any():
            raise ValueError("negative input")
        return batch[:, 0]

    clipper.deploy("picky", "callable", write_callable(tmp_path / "p.pkl", picky))
    clipper.deploy("other", "callable", write_callable(tmp_path / "o.pkl", lambda batch: [0.0] * len(batch)))
    clipper.create_app("app", ["picky", "other"], policy="exp4", loss="absolute", objective_ms=20_000)
    clipper.observe("app", "u", [0.5], 0.5)
    before = clipper.runtime.app("app").describe()
    log_size = clipper.runtime.registry.feedback_log("app").stat().st_size
    with pytest.raises(ContainerUnavailable, match="negative input"):
        clipper.observe("app", "u", [-1.0], 0.0)
    assert clipper.runtime.app("app").describe() == before
    assert clipper.runtime.registry.feedback_log("app").stat().st_size == log_size
