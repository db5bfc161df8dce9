"""Selection and ensemble policies: which linked models answer a query, and how they combine.

Every policy answers three questions, in the manner of river's bandits (the base class does the
bookkeeping, a policy writes its rule; the base of every policy, top-k exploration's too, is
learning/policy.py):

    select(user)                  which models to evaluate for a query
    combine(user, chosen, F)      one output from their outputs F (one row per chosen model)
    observe(user, chosen, F, y)   learn from feedback y on those outputs

- single: always model 0.
- Exp3 (Auer et al.): draw one model per query with p = (1-γ)·softmax(log w) + γ/K; feedback is
  bandit feedback on the drawn model, log w_i -= η·loss/p_i.
- Exp4 (Clipper's ensemble): evaluate all, answer Σ softmax(log w)_i f_i, log w_i -= η·loss_i.
- personalised: the split model over models. f(x) = the linked models' outputs, and each user's
  weights over them are learned online by the core's exact ridge learner (UserTable,
  Sherman–Morrison), from a prior of equal weights. A d-dimensional output (class scores) is d
  ridge observations [f_1c … f_mc] -> y_c sharing the user's weights.
"""

from __future__ import annotations

import enum
from typing import Any, ClassVar

import numpy as np

from veloxserve.learning.policy import Parameter, PolicyRegistry
from veloxserve.learning.policy import Policy as BasePolicy
from veloxserve.learning.user_table import UserTable
from veloxserve.models.version import UserPrior


class PolicyKind(str, enum.Enum):
    SINGLE = "single"
    EXP3 = "exp3"
    EXP4 = "exp4"
    PERSONALISED = "personalised"


class Loss(str, enum.Enum):
    ZERO_ONE = "zero_one"  # class outputs: argmax (vectors) or rounding (scalars) against the label
    ABSOLUTE = "absolute"  # min(1, mean |ŷ - y|)
    SQUARED = "squared"  # min(1, mean (ŷ - y)²)


def as_target(label: Any, dim: int) -> np.ndarray:
    """Feedback as a vector like the outputs: a class index becomes one-hot when outputs are vectors."""
    try:
        y = np.asarray(label, dtype=np.float64)
    except (TypeError, ValueError):
        y = np.array(np.nan)
    if not np.isfinite(y).all() or isinstance(label, (bool, str)):
        raise ValueError(f"a finite number or a list of {dim} finite numbers like the models' outputs")
    if dim > 1 and y.ndim == 0:
        if not (0 <= y < dim and y == int(y)):
            raise ValueError(f"a class index in [0, {dim - 1}]")
        onehot = np.zeros(dim)
        onehot[int(y)] = 1.0
        return onehot
    if y.size != dim:
        raise ValueError(f"a number or a list of {dim} numbers like the models' outputs")
    return y.reshape(dim)


def losses(outputs: np.ndarray, target: np.ndarray, kind: Loss) -> np.ndarray:
    """Loss in [0, 1] of each row of `outputs` (models × dim) against `target` (dim,)."""
    if kind is Loss.ZERO_ONE:
        if outputs.shape[1] > 1:
            return (outputs.argmax(axis=1) != target.argmax()).astype(np.float64)
        return (np.rint(outputs[:, 0]) != np.rint(target[0])).astype(np.float64)
    error = np.abs(outputs - target) if kind is Loss.ABSOLUTE else (outputs - target) ** 2
    return np.minimum(1.0, error.mean(axis=1))


class CorrectionPolicy(BasePolicy):
    """Base: evaluates model 0, answers its output, learns nothing; a policy overrides the rule it
    changes. The base keeps what every policy shares: the number of models, the loss, the seeded
    random generator (the application's: a replayed feedback log draws the same arms again), the
    declared parameters, and the description's common part."""

    kind: ClassVar[PolicyKind]

    def __init__(self, n_models: int, loss: Loss, rng: np.random.Generator, **params: Any) -> None:
        super().__init__(**params)
        self.n_models = n_models
        self.loss = loss
        self.rng = rng

    def select(self, user: str) -> np.ndarray:
        return np.array([0])

    def combine(self, user: str, chosen: np.ndarray, outputs: np.ndarray) -> np.ndarray:
        return outputs[0]

    def observe(self, user: str, chosen: np.ndarray, outputs: np.ndarray, target: np.ndarray) -> None:
        pass

    def describe(self) -> dict[str, Any]:
        return {"policy": self.name, "loss": self.loss.value}


Policy = CorrectionPolicy  # the name application.py imports (kept so that this change leaves it alone)
CORRECTION_POLICIES: PolicyRegistry[CorrectionPolicy] = PolicyRegistry("policy")
_POSITIVE = "a number > 0"


@CORRECTION_POLICIES.register
class Single(CorrectionPolicy):
    kind = PolicyKind.SINGLE
    name = kind.value


class _Weighted(CorrectionPolicy):
    """A weight per model, kept as log-weights; `eta` is the learning rate."""

    eta: float

    def __init__(self, n_models: int, loss: Loss, rng: np.random.Generator, **params: Any) -> None:
        super().__init__(n_models, loss, rng, **params)
        self.log_weights = np.zeros(n_models)

    def weights(self) -> np.ndarray:
        w = np.exp(self.log_weights - self.log_weights.max())
        return w / w.sum()

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "eta": self.eta, "weights": self.weights().tolist()}


@CORRECTION_POLICIES.register
class Exp3(_Weighted):
    kind = PolicyKind.EXP3
    name = kind.value
    parameters = (
        Parameter("eta", 0.1, low_open=True, expected=_POSITIVE),
        Parameter("gamma", 0.1, 0.0, 1.0, low_open=True, high_open=False, expected="a number in (0, 1]"),
    )
    gamma: float

    def probabilities(self) -> np.ndarray:
        return (1 - self.gamma) * self.weights() + self.gamma / self.n_models

    def select(self, user: str) -> np.ndarray:
        return np.array([self.rng.choice(self.n_models, p=self.probabilities())])

    def observe(self, user: str, chosen: np.ndarray, outputs: np.ndarray, target: np.ndarray) -> None:
        arm = int(chosen[0])
        loss = losses(outputs[:1], target, self.loss)[0]
        self.log_weights[arm] -= self.eta * loss / self.probabilities()[arm]

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "gamma": self.gamma, "probabilities": self.probabilities().tolist()}


@CORRECTION_POLICIES.register
class Exp4(_Weighted):
    kind = PolicyKind.EXP4
    name = kind.value
    parameters = (Parameter("eta", 0.5, low_open=True, expected=_POSITIVE),)

    def select(self, user: str) -> np.ndarray:
        return np.arange(self.n_models)

    def combine(self, user: str, chosen: np.ndarray, outputs: np.ndarray) -> np.ndarray:
        weights = self.weights()[chosen]  # models with no output at all are left out, the rest renormalised
        return weights @ outputs / weights.sum()

    def observe(self, user: str, chosen: np.ndarray, outputs: np.ndarray, target: np.ndarray) -> None:
        self.log_weights -= self.eta * losses(outputs, target, self.loss)


@CORRECTION_POLICIES.register
class Personalised(CorrectionPolicy):
    kind = PolicyKind.PERSONALISED
    name = kind.value
    parameters = (Parameter("prior_precision", 1.0, low_open=True, expected=_POSITIVE),)
    prior_precision: float

    def __init__(self, n_models: int, loss: Loss, rng: np.random.Generator, **params: Any) -> None:
        super().__init__(n_models, loss, rng, **params)
        prior = UserPrior.isotropic(np.full(n_models, 1.0 / n_models), self.prior_precision)
        self.users = UserTable(n_models, prior)

    def select(self, user: str) -> np.ndarray:
        return np.arange(self.n_models)

    def combine(self, user: str, chosen: np.ndarray, outputs: np.ndarray) -> np.ndarray:
        return self.users.weights(user)[chosen] @ outputs

    def observe(self, user: str, chosen: np.ndarray, outputs: np.ndarray, target: np.ndarray) -> None:
        features = np.ascontiguousarray(outputs.T)  # one ridge row per output dimension
        dim = features.shape[0]
        row = self.users.ensure(user)
        self.users.observe_many(np.full(dim, row, dtype=np.int64), features, np.arange(dim, dtype=np.int64), target)

    def user_weights(self, user: str) -> np.ndarray:
        return self.users.weights(user).copy()

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "users": len(self.users), "prior_precision": float(self.users.prior.precision[0])}


POLICIES: dict[PolicyKind, type[CorrectionPolicy]] = {PolicyKind(cls.name): cls for cls in CORRECTION_POLICIES}
