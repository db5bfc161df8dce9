"""Exploration policies for top-k: how a served list departs from the model's current favourites.

A model that only ever shows its favourites only learns about them (sample bias, Velox §4). These
policies trade a little immediate reward for information, using what the server already keeps:
each user's ridge covariance P_u = A_u⁻¹ (no extra state).

- greedy: the k highest scores. Deterministic: each shown item's propensity is 1.
- epsilon_greedy(ε): slot by slot, the best remaining item with probability 1 − ε, otherwise a
  uniformly random remaining eligible item. The logged propensity of a slot's item is
  (1 − ε)·[it was the best remaining] + ε / (eligible items remaining): exact, so the logs
  support inverse-propensity estimates.
- linucb(α): rank by w·f + α √(fᵀ P f) (optimism under uncertainty). Deterministic.
- thompson(α): rank by w̃·f with w̃ ~ N(w, α² P) (a posterior draw). Its per-item propensity
  has no closed form, so it is logged as null and such decisions are left out of IPS estimates.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from veloxserve.errors import invalid_parameter

POLICIES = ("greedy", "epsilon_greedy", "linucb", "thompson")
MAX_ALPHA = 1e6  # exploration weights beyond this drown the scores (and overflow the posterior draw)


@dataclass(frozen=True)
class Policy:
    name: str = "greedy"
    epsilon: float = 0.1
    alpha: float = 1.0

    @classmethod
    def parse(cls, name: Any = None, epsilon: Any = None, alpha: Any = None, where: str = "top_k") -> Policy:
        name = "greedy" if name is None else name
        if name not in POLICIES:
            raise invalid_parameter("policy", where, " or ".join(POLICIES), name)
        fields: dict[str, float] = {}
        if epsilon is not None:
            if isinstance(epsilon, bool) or not isinstance(epsilon, (int, float)) or not 0.0 <= epsilon <= 1.0:
                raise invalid_parameter("epsilon", where, "a number in [0, 1]", epsilon)
            fields["epsilon"] = float(epsilon)
        if alpha is not None:
            if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0.0 <= alpha < MAX_ALPHA:
                raise invalid_parameter("alpha", where, f"a number >= 0 and < {MAX_ALPHA:g}", alpha)
            fields["alpha"] = float(alpha)
        return cls(name, **fields)

    def describe(self) -> dict[str, Any]:
        if self.name == "greedy":
            return {"name": self.name}
        if self.name == "epsilon_greedy":
            return {"name": self.name, "epsilon": self.epsilon}
        return {"name": self.name, "alpha": self.alpha}

    @property
    def deterministic(self) -> bool:
        return self.name in ("greedy", "linucb")


def uncertainty(F: np.ndarray, P: np.ndarray) -> np.ndarray:
    """√(fᵀ P f) for every row f of F: the width of each item's confidence interval."""
    return np.sqrt(np.maximum(np.einsum("ij,ij->i", F @ P, F), 0.0))


def posterior_draw(w: np.ndarray, P: np.ndarray, scale: float, rng: np.random.Generator) -> np.ndarray:
    """w̃ ~ N(w, scale² P), through the Cholesky factor of P (symmetrised against round-off)."""
    L = np.linalg.cholesky(0.5 * (P + P.T) + 1e-12 * np.eye(len(w)))
    return w + scale * (L @ rng.standard_normal(len(w)))


def epsilon_greedy_slate(
    ranked: np.ndarray, k: int, epsilon: float, eligible: int, sample_eligible, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Build k slots from `ranked` (candidate rows, best first) and random eligible rows.

    `sample_eligible(n)` draws n rows uniformly from all eligible items; `eligible` is how many
    there are. Returns (rows, propensity of each slot's choice)."""
    explore = rng.random(k) < epsilon
    chosen: list[int] = []
    taken: set[int] = set()
    propensities = np.empty(k)
    cursor = 0
    for slot in range(k):  # k slots (≤ a few hundred), not the catalogue
        while cursor < len(ranked) and int(ranked[cursor]) in taken:
            cursor += 1
        best = int(ranked[cursor]) if cursor < len(ranked) else None
        remaining = eligible - slot
        if explore[slot] or best is None:
            while True:
                row = int(sample_eligible(1)[0])
                if row not in taken:
                    break
        else:
            row = best
        taken.add(row)
        chosen.append(row)
        # (ranked is at least 2k long, so `best is None` means the eligible set itself ran out)
        propensities[slot] = 1.0 / remaining if best is None else (1.0 - epsilon) * (row == best) + epsilon / remaining
    return np.asarray(chosen, dtype=np.int64), propensities
