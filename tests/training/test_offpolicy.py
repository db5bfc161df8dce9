"""Inverse-propensity estimates against a simulation whose true policy values are known."""

from __future__ import annotations

import numpy as np
import pytest

from veloxserve.storage.observation_log import ObservationRecord
from veloxserve.training.offpolicy import ips_estimate


def _logged_bandit(n_decisions: int, n_items: int, epsilon: float, seed: int):
    """A one-slot epsilon-greedy logger over items with known mean rewards."""
    rng = np.random.default_rng(seed)
    means = rng.uniform(0, 1, size=n_items)
    favourite = int(np.argmin(means))  # the logger's favourite is the worst item: bias to correct
    decisions, observations = [], []
    for d in range(n_decisions):
        explore = rng.random() < epsilon
        item = int(rng.integers(n_items)) if explore else favourite
        mu = (1 - epsilon) * (item == favourite) + epsilon / n_items
        decisions.append({"decision": f"d{d}", "items": [str(item)], "propensities": [mu]})
        reward = float(rng.random() < means[item])
        if reward:  # unanswered shown items count as reward 0
            observations.append(ObservationRecord(d, 0.0, "u", str(item), reward, "v1", False, f"d{d}"))
    return means, decisions, observations


def test_ips_recovers_the_value_of_policies_the_logger_did_not_follow() -> None:
    means, decisions, observations = _logged_bandit(40_000, 10, epsilon=0.3, seed=1)
    uniform = ips_estimate(decisions, observations, lambda d, slot, item: 1 / len(means))
    assert uniform["ips"] == pytest.approx(means.mean(), abs=0.02)
    assert uniform["snips"] == pytest.approx(means.mean(), abs=0.02)
    best = int(np.argmax(means))
    always_best = ips_estimate(decisions, observations, lambda d, slot, item: float(item == str(best)))
    assert always_best["ips"] == pytest.approx(means[best], abs=0.05)
    naive = np.mean([o.score for o in observations]) * len(observations) / len(decisions)
    assert abs(naive - means[best]) > 0.2  # the logged average alone is badly biased


def test_decisions_without_propensities_are_skipped_and_counted() -> None:
    decisions = [{"decision": "a", "items": ["1"], "propensities": None}]
    assert ips_estimate(decisions, [], lambda *_: 1.0) == {
        "decisions": 0, "skipped_without_propensity": 1, "ips": None, "snips": None}
