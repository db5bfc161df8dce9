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
        "decisions": 0,
        "skipped_without_propensity": 1,
        "ips": None,
        "snips": None,
        "unmatched_observations": 0,
    }


def test_ips_estimate_leaves_out_observations_that_do_not_match_their_decision() -> None:
    """Unknown decision ids, another user's decision and items the list did not show used to be
    joined as rewards (the last two on the (decision, item) key alone); now only observations of
    the decision's own user on an item it showed count, and the others are counted as unmatched."""
    decisions = [
        {"decision": "a", "user": "u", "items": ["1", "2"], "propensities": [0.5, 0.5]},
        {"decision": "b", "user": "v", "items": ["3"], "propensities": [1.0]},
    ]
    honest = [ObservationRecord(1, 0.0, "u", "1", 1.0, "v1", False, "a")]
    forged = [
        ObservationRecord(2, 0.0, "u", "3", 1.0, "v1", False, "b"),  # v's decision, observed for u
        ObservationRecord(3, 0.0, "u", "9", 1.0, "v1", False, "a"),  # an item "a" did not show
        ObservationRecord(4, 0.0, "u", "1", 1.0, "v1", False, "zz"),  # a decision never served
    ]
    uniform = lambda d, slot, item: 1.0 / len(d["items"])  # noqa: E731
    clean = ips_estimate(decisions, honest, uniform)
    polluted = ips_estimate(decisions, honest + forged, uniform)
    # independent: decision a, slot "1": π = 1/2, μ = 1/2, reward 1; everything else reward 0
    assert clean["ips"] == pytest.approx(1.0 / 2) and clean["unmatched_observations"] == 0
    assert polluted["ips"] == clean["ips"] and polluted["snips"] == clean["snips"]
    assert polluted["unmatched_observations"] == 3
