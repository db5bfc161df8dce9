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

import abc
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from veloxserve.learning.policy import Parameter, PolicyRegistry
from veloxserve.learning.policy import Policy as BasePolicy

Slate = tuple[np.ndarray, np.ndarray | None]  # (item rows in slot order, each slot's propensity or None)
MAX_ALPHA = 1e6  # exploration weights beyond this drown the scores (and overflow the posterior draw)


@dataclass(frozen=True)
class Candidates:
    """What a server offers a policy for one top-k request: the user's state and the eligible items.

    `ranked(query, n)` is up to n eligible rows with the largest query·f, best first, and those
    inner products (the server's index or exact scoring); `sample(n, rng)` draws n rows uniformly
    from the `n_eligible` eligible items; `covariance()` is P_u, computed only if a policy asks."""

    weights: np.ndarray
    covariance: Callable[[], np.ndarray]
    features: Callable[[np.ndarray], np.ndarray]
    ranked: Callable[[np.ndarray, int], tuple[np.ndarray, np.ndarray]]
    sample: Callable[[int, np.random.Generator], np.ndarray]
    n_eligible: int


class ExplorationPolicy(BasePolicy):
    """A top-k policy: a value (its name and parameters) that writes one method, `slate`.

    Described as `{"name": ..., <parameters>}` in top-k answers and decision logs; two policies
    with the same name and parameters are equal."""

    deterministic: ClassVar[bool] = True  # the same state always gives the same list (propensities 1)

    @abc.abstractmethod
    def slate(self, offer: Candidates, k: int, rng: np.random.Generator) -> Slate:
        """k distinct eligible rows in slot order and the probability of each slot's choice
        (None when it has no closed form). k is at most `offer.n_eligible`."""

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, **self.parameter_values()}

    @classmethod
    def parse(cls, name: Any = None, epsilon: Any = None, alpha: Any = None, where: str = "top_k") -> ExplorationPolicy:
        """The policy a top-k request names (`policy`, `epsilon`, `alpha`; absent: greedy)."""
        return EXPLORATION_POLICIES.parse(name, {"epsilon": epsilon, "alpha": alpha}, where)

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, ExplorationPolicy) and type(other) is type(self) and other.describe() == self.describe()
        )

    def __hash__(self) -> int:
        return hash((self.name, *self.parameter_values().values()))


EXPLORATION_POLICIES: PolicyRegistry[ExplorationPolicy] = PolicyRegistry("policy", default="greedy", lenient=True)
_ALPHA = Parameter("alpha", 1.0, 0.0, MAX_ALPHA, expected=f"a number >= 0 and < {MAX_ALPHA:g}")


@EXPLORATION_POLICIES.register
class Greedy(ExplorationPolicy):
    """The k highest scores."""

    name = "greedy"

    def slate(self, offer: Candidates, k: int, rng: np.random.Generator) -> Slate:
        rows, _ = offer.ranked(offer.weights, k)
        return rows[:k], np.ones(k)


@EXPLORATION_POLICIES.register
class EpsilonGreedy(ExplorationPolicy):
    """Slot by slot, the best remaining item with probability 1 − ε, else a uniformly random one."""

    name = "epsilon_greedy"
    parameters = (Parameter("epsilon", 0.1, 0.0, 1.0, high_open=False, expected="a number in [0, 1]"),)
    deterministic = False
    epsilon: float

    def slate(self, offer: Candidates, k: int, rng: np.random.Generator) -> Slate:
        rows, _ = offer.ranked(offer.weights, 2 * k)
        return epsilon_greedy_slate(rows, k, self.epsilon, offer.n_eligible, lambda n: offer.sample(n, rng), rng)


@EXPLORATION_POLICIES.register
class LinUCB(ExplorationPolicy):
    """Rank by w·f + α √(fᵀ P f): optimism under uncertainty."""

    name = "linucb"
    parameters = (_ALPHA,)
    alpha: float

    def slate(self, offer: Candidates, k: int, rng: np.random.Generator) -> Slate:
        rows, ranking = offer.ranked(offer.weights, max(10 * k, 1000))  # the bonus reorders beyond the top k
        ranking = ranking + self.alpha * uncertainty(offer.features(rows), offer.covariance())
        return rows[np.argsort(-ranking, kind="stable")][:k], np.ones(k)


@EXPLORATION_POLICIES.register
class Thompson(ExplorationPolicy):
    """Rank by w̃·f with w̃ ~ N(w, α² P); its propensities have no closed form (logged as null)."""

    name = "thompson"
    parameters = (_ALPHA,)
    deterministic = False
    alpha: float

    def slate(self, offer: Candidates, k: int, rng: np.random.Generator) -> Slate:
        query = posterior_draw(offer.weights, offer.covariance(), self.alpha, rng)
        rows, _ = offer.ranked(query, 2 * k)
        return rows[:k], None


GREEDY = Greedy()
POLICIES = EXPLORATION_POLICIES.names()  # ("greedy", "epsilon_greedy", "linucb", "thompson")


def uncertainty(F: np.ndarray, P: np.ndarray) -> np.ndarray:
    """√(fᵀ P f) for every row f of F: the width of each item's confidence interval."""
    return np.sqrt(np.maximum(np.einsum("ij,ij->i", F @ P, F), 0.0))


def posterior_draw(w: np.ndarray, P: np.ndarray, scale: float, rng: np.random.Generator) -> np.ndarray:
    """w̃ ~ N(w, scale² P), through the Cholesky factor of P (symmetrised against round-off)."""
    L = np.linalg.cholesky(0.5 * (P + P.T) + 1e-12 * np.eye(len(w)))
    return w + scale * (L @ rng.standard_normal(len(w)))


def epsilon_greedy_slate(
    ranked: np.ndarray,
    k: int,
    epsilon: float,
    eligible: int,
    sample_eligible: Callable[[int], np.ndarray],
    rng: np.random.Generator,
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
