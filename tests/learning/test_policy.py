"""The contract every policy passes: every top-k exploration policy and every Clipper correction
policy, registered by name, against the same checks (as river's checks run over every estimator).

A new policy joins these tests by being registered; nothing here names a policy except the
greedy limits, which say which knob turns exploration off."""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

import numpy as np
import pytest

from veloxserve.clipper.policies import CORRECTION_POLICIES, POLICIES, CorrectionPolicy, Loss, PolicyKind, as_target
from veloxserve.errors import InvalidInput
from veloxserve.learning.policy import Parameter, Policy, PolicyRegistry
from veloxserve.serving.exploration import EXPLORATION_POLICIES, GREEDY, Candidates, ExplorationPolicy

EXPLORATION = list(EXPLORATION_POLICIES)
CORRECTION = list(CORRECTION_POLICIES)
EVERY = [(EXPLORATION_POLICIES, cls) for cls in EXPLORATION] + [(CORRECTION_POLICIES, cls) for cls in CORRECTION]
NO_EXPLORATION = {"epsilon": 0.0, "alpha": 0.0}  # the knob that turns each policy into greedy


def _id(case: Any) -> str:
    return case[1].name if isinstance(case, tuple) else case.name


def _build(cls: type[Policy], **params: Any) -> Policy:
    if issubclass(cls, CorrectionPolicy):
        return cls(3, Loss.ABSOLUTE, np.random.default_rng(0), **params)
    return cls(**params)


# -- every policy, both families ---------------------------------------------------------------------


def test_the_families_hold_every_policy_once_under_its_json_name() -> None:
    assert EXPLORATION_POLICIES.names() == ("greedy", "epsilon_greedy", "linucb", "thompson")
    assert set(CORRECTION_POLICIES.names()) == {kind.value for kind in PolicyKind}
    assert set(POLICIES) == set(PolicyKind) and all(POLICIES[kind].name == kind.value for kind in PolicyKind)
    assert all(issubclass(cls, ExplorationPolicy) for cls in EXPLORATION)
    assert all(issubclass(cls, CorrectionPolicy) for cls in CORRECTION)
    with pytest.raises(ValueError):
        EXPLORATION_POLICIES.register(EXPLORATION[0])


@pytest.mark.parametrize("case", EVERY, ids=_id)
def test_defaults_are_admitted_and_kept_as_attributes(case: tuple[PolicyRegistry[Any], type[Policy]]) -> None:
    registry, cls = case
    policy = _build(cls)
    assert registry[cls.name] is cls
    for parameter in cls.parameters:
        assert parameter.admits(parameter.default), parameter
        assert getattr(policy, parameter.name) == parameter.default
    assert list(policy.parameter_values()) == [p.name for p in cls.parameters]
    assert cls.__name__ in repr(policy)


@pytest.mark.parametrize("case", EVERY, ids=_id)
def test_a_bad_parameter_is_refused_naming_the_field(case: tuple[PolicyRegistry[Any], type[Policy]]) -> None:
    registry, cls = case
    for parameter in cls.parameters:
        for bad in (parameter.low - 1, float("nan"), float("inf"), True, "0.5", None):
            with pytest.raises(InvalidInput) as error:
                _build(cls, **{parameter.name: bad})
            assert error.value.field == parameter.name
            if bad is None:
                continue  # in a request, null means absent: the default
            with pytest.raises(InvalidInput) as error:
                registry.parse(cls.name, {parameter.name: bad}, "test", *_args(cls))
            assert error.value.field == parameter.name and "test" in str(error.value)
    with pytest.raises(InvalidInput) as error:
        _build(cls, surprise=1.0)
    assert error.value.field == "surprise"


@pytest.mark.parametrize("registry", [EXPLORATION_POLICIES, CORRECTION_POLICIES], ids=["exploration", "correction"])
def test_an_unknown_name_is_refused_naming_the_policy_field_and_the_choices(registry: PolicyRegistry[Any]) -> None:
    for bad in ("ucb2", 3, ["greedy"], ""):
        with pytest.raises(InvalidInput) as error:
            registry.lookup(bad, "test")
        assert error.value.field == "policy"
        assert all(name in str(error.value) for name in registry.names())


def _args(cls: type[Policy]) -> tuple[Any, ...]:
    return (3, Loss.ABSOLUTE, np.random.default_rng(0)) if issubclass(cls, CorrectionPolicy) else ()


def test_parameters_state_their_interval() -> None:
    assert Parameter("x", 1.0, low_open=True).check(2, "w") == 2.0
    with pytest.raises(InvalidInput, match=r"a number in \(0, inf\)"):
        Parameter("x", 1.0, low_open=True).check(0, "w")
    with pytest.raises(InvalidInput, match=r"a number in \[0, 1\]"):
        Parameter("x", 0.5, 0.0, 1.0, high_open=False).check(1.5, "w")


# -- exploration: a list of k items and the probability of each slot's choice -------------------------


class Offer:
    """A small catalogue as a server would offer it: 40 items, 25 eligible, a user's w and P."""

    def __init__(self, seed: int = 0, n_items: int = 40, dim: int = 5) -> None:
        rng = np.random.default_rng(seed)
        self.F = rng.normal(size=(n_items, dim))
        self.w = rng.normal(size=dim)
        A = rng.normal(size=(dim, dim))
        self.P = A @ A.T / dim + 0.1 * np.eye(dim)
        self.eligible = np.sort(rng.choice(n_items, 25, replace=False))
        self.covariance_reads = 0

    def candidates(self) -> Candidates:
        return Candidates(
            self.w, self._covariance, lambda rows: self.F[rows], self._ranked, self._sample, len(self.eligible)
        )

    def _covariance(self) -> np.ndarray:
        self.covariance_reads += 1
        return self.P.copy()  # a policy cannot corrupt the user's state through it

    def _ranked(self, query: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
        scores = self.F[self.eligible] @ query
        order = np.argsort(-scores, kind="stable")[:n]
        return self.eligible[order], scores[order]

    def _sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        return self.eligible[rng.integers(0, self.eligible.size, n)]


def _settings(cls: type[ExplorationPolicy]) -> list[dict[str, float]]:
    """Defaults, exploration off, and a lot of exploration: every declared knob at three points."""
    strong = {p.name: min(p.high, 0.9) if not p.high_open else 3.0 for p in cls.parameters}
    return [{}, {p.name: NO_EXPLORATION[p.name] for p in cls.parameters}, strong]


EXPLORATION_CASES = [(cls, params) for cls in EXPLORATION for params in _settings(cls)]


def _case_id(case: Any) -> str:
    if isinstance(case, dict):
        return ",".join(f"{k}={v}" for k, v in case.items()) or "defaults"
    return case.name


@pytest.mark.parametrize(("cls", "params"), EXPLORATION_CASES, ids=_case_id)
@pytest.mark.parametrize("k", [1, 7, 25])
def test_a_slate_is_k_distinct_eligible_items_with_propensities_in_0_1(
    cls: type[ExplorationPolicy], params: dict[str, float], k: int
) -> None:
    offer = Offer()
    policy = cls(**params)
    before = policy.describe()
    for seed in range(20):
        rows, propensities = policy.slate(offer.candidates(), k, np.random.default_rng(seed))
        assert rows.shape == (k,) and rows.dtype.kind == "i"
        assert len(set(rows.tolist())) == k and set(rows.tolist()) <= set(offer.eligible.tolist())
        if propensities is None:
            assert not cls.deterministic  # only a policy that draws may leave them unknown
        else:
            assert propensities.shape == (k,) and np.all((propensities > 0) & (propensities <= 1))
            if cls.deterministic:
                assert propensities.tolist() == [1.0] * k
    assert policy.describe() == before  # serving a list changes no policy: they are values


@pytest.mark.parametrize(("cls", "params"), EXPLORATION_CASES, ids=_case_id)
def test_a_seed_fixes_the_slate_and_a_deterministic_policy_ignores_it(
    cls: type[ExplorationPolicy], params: dict[str, float]
) -> None:
    offer, policy = Offer(), cls(**params)
    first = policy.slate(offer.candidates(), 10, np.random.default_rng(5))
    again = policy.slate(offer.candidates(), 10, np.random.default_rng(5))
    assert first[0].tolist() == again[0].tolist()
    assert (first[1] is None and again[1] is None) or np.array_equal(first[1], again[1])  # type: ignore[arg-type]
    if cls.deterministic:
        other = policy.slate(offer.candidates(), 10, np.random.default_rng(6))
        assert other[0].tolist() == first[0].tolist()


@pytest.mark.parametrize("cls", EXPLORATION, ids=_id)
def test_without_exploration_every_policy_is_greedy(cls: type[ExplorationPolicy]) -> None:
    offer = Offer(seed=3)
    policy = cls(**{p.name: NO_EXPLORATION[p.name] for p in cls.parameters})
    greedy_rows, _ = GREEDY.slate(offer.candidates(), 10, np.random.default_rng(0))
    assert (
        greedy_rows.tolist()
        == np.argsort(-(offer.F @ offer.w))[np.isin(np.argsort(-(offer.F @ offer.w)), offer.eligible)][:10].tolist()
    )
    for seed in range(5):
        rows, propensities = policy.slate(offer.candidates(), 10, np.random.default_rng(seed))
        assert rows.tolist() == greedy_rows.tolist()
        assert propensities is None or propensities.tolist() == [1.0] * 10


@pytest.mark.parametrize(("cls", "params"), EXPLORATION_CASES, ids=_case_id)
def test_logged_propensities_are_the_frequencies_of_the_first_slot(
    cls: type[ExplorationPolicy], params: dict[str, float]
) -> None:
    offer, policy, draws = Offer(seed=1), cls(**params), 3000
    counts: Counter[int] = Counter()
    logged: dict[int, float] = {}
    for seed in range(draws):
        rows, propensities = policy.slate(offer.candidates(), 3, np.random.default_rng(seed))
        if propensities is None:
            return  # no closed form (Thompson sampling): logged as null, left out of IPS
        counts[int(rows[0])] += 1
        logged[int(rows[0])] = float(propensities[0])
    assert sum(logged.values()) <= 1.0 + 1e-9
    for item, count in counts.items():
        assert count / draws == pytest.approx(logged[item], abs=0.03), (item, logged)


@pytest.mark.parametrize(("cls", "params"), EXPLORATION_CASES, ids=_case_id)
def test_the_json_description_parses_back_to_the_same_policy(
    cls: type[ExplorationPolicy], params: dict[str, float]
) -> None:
    policy = cls(**params)
    described = json.loads(json.dumps(policy.describe()))
    assert described["name"] == cls.name and set(described) == {"name", *(p.name for p in cls.parameters)}
    assert EXPLORATION_POLICIES.from_dict(described, "test") == policy
    assert hash(EXPLORATION_POLICIES.from_dict(described, "test")) == hash(policy)
    query = {"epsilon": None, "alpha": None, **{k: v for k, v in described.items() if k != "name"}}
    assert ExplorationPolicy.parse(cls.name, query["epsilon"], query["alpha"]) == policy


def test_exploration_parse_checks_knobs_another_policy_declares_and_refuses_unknown_ones() -> None:
    assert ExplorationPolicy.parse() == GREEDY  # absent: greedy
    assert ExplorationPolicy.parse("linucb", epsilon=0.5).describe() == {"name": "linucb", "alpha": 1.0}
    with pytest.raises(InvalidInput) as error:
        ExplorationPolicy.parse("linucb", epsilon=1.5)
    assert error.value.field == "epsilon" and "top_k" in str(error.value)
    with pytest.raises(InvalidInput) as error:
        EXPLORATION_POLICIES.parse("greedy", {"beta": 1.0}, "top_k")
    assert error.value.field == "beta"
    with pytest.raises(InvalidInput) as error:
        EXPLORATION_POLICIES.from_dict(["greedy"], "top_k")
    assert error.value.field == "policy"


# -- correction: which models answer, how their outputs combine, what feedback teaches ----------------


def _stream(seed: int, n: int, dim: int) -> tuple[np.ndarray, np.ndarray]:
    """Three models' outputs per query and a target that model 2 predicts best."""
    rng = np.random.default_rng(seed)
    target = rng.normal(size=(n, dim))
    noise = np.array([2.0, 1.0, 0.05])[None, :, None]
    outputs = target[:, None, :] + noise * rng.normal(size=(n, 3, dim))
    return outputs, target


def _run(policy: CorrectionPolicy, outputs: np.ndarray, targets: np.ndarray) -> list[list[int]]:
    """Serve and learn a stream the way an Application does; the models chosen per query."""
    picks = []
    for F, y in zip(outputs, targets):
        chosen = policy.select("u")
        picks.append(chosen.tolist())
        combined = policy.combine("u", chosen, F[chosen])
        assert combined.shape == y.shape and np.isfinite(combined).all()
        policy.observe("u", chosen, F[chosen], y)
    return picks


@pytest.mark.parametrize("cls", CORRECTION, ids=_id)
@pytest.mark.parametrize("dim", [1, 3])
def test_select_names_distinct_linked_models_and_combine_answers_one_output(
    cls: type[CorrectionPolicy], dim: int
) -> None:
    policy = cls(3, Loss.ABSOLUTE, np.random.default_rng(0))
    outputs, targets = _stream(0, 60, dim)
    for chosen in _run(policy, outputs, targets):
        assert chosen and len(set(chosen)) == len(chosen) and all(0 <= i < 3 for i in chosen)
    json.dumps(policy.describe())  # the description is JSON (GET /apps/{app})
    assert policy.describe()["policy"] == cls.name and policy.describe()["loss"] == "absolute"


@pytest.mark.parametrize("cls", CORRECTION, ids=_id)
def test_weights_and_probabilities_lie_in_0_1_and_sum_to_one(cls: type[CorrectionPolicy]) -> None:
    policy = cls(3, Loss.SQUARED, np.random.default_rng(2))
    outputs, targets = _stream(2, 100, 1)
    _run(policy, outputs, targets)
    for name in ("weights", "probabilities"):
        figures = getattr(policy, name, None)
        if figures is not None:
            p = figures()
            assert p.shape == (3,) and np.all((p >= 0) & (p <= 1)) and p.sum() == pytest.approx(1.0)


@pytest.mark.parametrize("cls", CORRECTION, ids=_id)
def test_the_same_seed_and_feedback_give_the_same_choices_and_state(cls: type[CorrectionPolicy]) -> None:
    runs = []
    for _ in range(2):
        policy = cls(3, Loss.ABSOLUTE, np.random.default_rng(11))
        outputs, targets = _stream(4, 80, 2)
        runs.append((_run(policy, outputs, targets), policy.describe()))
    assert runs[0] == runs[1]  # how a replayed feedback log restores a policy exactly


@pytest.mark.parametrize("cls", CORRECTION, ids=_id)
def test_serving_teaches_nothing_only_feedback_does(cls: type[CorrectionPolicy]) -> None:
    policy = cls(3, Loss.ABSOLUTE, np.random.default_rng(0))
    outputs, targets = _stream(5, 30, 1)
    _run(policy, outputs, targets)
    learned = {k: v for k, v in policy.describe().items() if k != "probabilities"}
    for F in outputs:
        chosen = policy.select("u")
        policy.combine("u", chosen, F[chosen])
    assert {k: v for k, v in policy.describe().items() if k != "probabilities"} == learned
    state = policy.describe()
    for bad in (float("nan"), "1", [1.0, 2.0], None):  # feedback refused before it reaches the policy
        with pytest.raises(ValueError):
            as_target(bad, 1)
    assert policy.describe() == state


@pytest.mark.parametrize("cls", [c for c in CORRECTION if c.name != "single"], ids=_id)
def test_every_learning_policy_moves_toward_the_better_model(cls: type[CorrectionPolicy]) -> None:
    policy = cls(3, Loss.ABSOLUTE, np.random.default_rng(3))
    outputs, targets = _stream(6, 400, 1)
    _run(policy, outputs, targets)
    test_outputs, test_targets = _stream(7, 200, 1)
    errors = []
    for F, y in zip(test_outputs, test_targets):
        chosen = policy.select("u")
        errors.append(float(np.abs(policy.combine("u", chosen, F[chosen]) - y).mean()))
    assert np.mean(errors) < np.abs(test_outputs[:, 0] - test_targets).mean()  # better than model 0 alone


def test_the_single_policy_answers_model_0_and_learns_nothing() -> None:
    policy = CORRECTION_POLICIES["single"](1, Loss.ABSOLUTE, np.random.default_rng(0))
    before = policy.describe()
    outputs, targets = _stream(8, 20, 1)
    assert all(chosen == [0] for chosen in _run(policy, outputs[:, :1], targets))
    assert policy.describe() == before


def test_a_correction_policy_takes_only_its_own_parameters() -> None:
    args = (2, Loss.ABSOLUTE, np.random.default_rng(0))
    assert CORRECTION_POLICIES.parse("exp3", {"eta": 0.3, "gamma": 0.2}, "create_app", *args).describe()["gamma"] == 0.2
    with pytest.raises(InvalidInput) as error:
        CORRECTION_POLICIES.parse(PolicyKind.EXP4, {"gamma": 0.2}, "create_app", *args)
    assert error.value.field == "gamma" and "['eta']" in str(error.value)
    with pytest.raises(InvalidInput) as error:
        CORRECTION_POLICIES.parse("single", {"eta": 0.2}, "create_app", *args)
    assert error.value.field == "eta" and "takes no parameters" in str(error.value)
