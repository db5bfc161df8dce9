"""Off-policy evaluation from the logs: what would another policy have earned?

Each logged decision says which item filled each slot and with which probability μ the serving
policy put it there; the observation log says what the user did with it (`decision` joins the
two). The inverse-propensity estimate of a target policy π's reward per decision is

    V_IPS  = (1/N) Σ_decisions Σ_slots  π(item | slot) / μ(item | slot) · reward
    V_SNIPS = Σ w·reward / Σ w          (self-normalised: biased, much lower variance)

with reward 0 for a shown item nobody answered. An observation counts only when it matches its
decision: the decision is in the log, it was served to the observation's user, and it showed the
item. Others (unknown ids, another user's decision, an item not in the list: serve-time checks in
serving/decisions.py catch those the server still remembers) are left out and counted as
`unmatched_observations`, rather than putting a reward where nothing was shown.

The estimate is unbiased when μ > 0 wherever π > 0, which is why greedy-only logs (μ = 1 on one
item, 0 elsewhere) cannot evaluate anything else, and why Thompson decisions (no closed-form μ)
are skipped and counted.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import numpy as np

from veloxserve.storage.observation_log import ObservationRecord

TargetProbability = Callable[[dict[str, Any], int, str], float]  # (decision, slot, item) -> π


def ips_estimate(
    decisions: Iterable[dict[str, Any]], observations: Iterable[ObservationRecord], target: TargetProbability
) -> dict[str, Any]:
    rewards: dict[tuple[str, str], tuple[str, float]] = {}
    for record in observations:
        if record.decision is not None:
            rewards[(record.decision, record.item)] = (record.user, record.score)
    matched: set[tuple[str, str]] = set()
    weights: list[float] = []
    returns: list[float] = []
    used = skipped = 0
    for decision in decisions:
        propensities = decision.get("propensities")
        user = decision.get("user")  # None in logs older than the user field: not checked
        if propensities is None:
            skipped += 1
            for item in decision["items"]:  # matched, though not usable
                answer = rewards.get(key := (decision["decision"], item))
                if answer is not None and (user is None or answer[0] == user):
                    matched.add(key)
            continue
        used += 1
        for slot, (item, mu) in enumerate(zip(decision["items"], propensities)):
            w = target(decision, slot, item) / mu
            weights.append(w)
            key = (decision["decision"], item)
            answer = rewards.get(key)
            reward = 0.0
            if answer is not None and (user is None or answer[0] == user):
                reward = answer[1]
                matched.add(key)
            returns.append(w * reward)
    unmatched = len(rewards) - len(matched)
    if used == 0:
        return {
            "decisions": 0,
            "skipped_without_propensity": skipped,
            "ips": None,
            "snips": None,
            "unmatched_observations": unmatched,
        }
    w, r = np.asarray(weights), np.asarray(returns)
    return {
        "decisions": used,
        "skipped_without_propensity": skipped,
        "ips": float(r.sum() / used),
        "snips": float(r.sum() / w.sum() * (len(w) / used)) if w.sum() > 0 else None,
        "max_weight": float(w.max()) if w.size else None,
        "unmatched_observations": unmatched,
    }
