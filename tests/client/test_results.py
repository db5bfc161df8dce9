"""The client's values mirror the server's: the same fields as serving's RetrainPolicy and
RetrainJob, and answers from a newer server (more keys) still read."""

from __future__ import annotations

import dataclasses

from veloxserve.client import results as r
from veloxserve.serving.retraining import RetrainJob, RetrainPolicy


def _fields(cls: type) -> dict[str, object]:
    return {f.name: f.default for f in dataclasses.fields(cls) if f.name != "raw"}


def test_retrain_policy_and_job_have_the_servers_fields_and_defaults() -> None:
    assert _fields(r.RetrainPolicy) == _fields(RetrainPolicy)
    assert list(_fields(r.RetrainJob)) == list(_fields(RetrainJob))
    sent = RetrainPolicy(every_observations=5, drift=True)
    assert r.RetrainPolicy.from_json(dataclasses.asdict(sent)).as_dict() == dataclasses.asdict(sent)


def test_keys_a_newer_server_adds_are_kept_in_raw_not_refused() -> None:
    answer = {"score": 1.5, "model_version": "v3", "user": 1, "item": 2, "explanation": "new"}
    prediction = r.Prediction.from_json(answer)
    assert prediction.score == 1.5 and prediction.raw["explanation"] == "new"
    assert prediction == r.Prediction(1.5, "v3", 1, 2)  # raw is not part of the value


def test_a_recommendation_reads_as_pairs_and_propensities() -> None:
    answer = {
        "user": "7",
        "items": [{"item": 3, "score": 2.0, "propensity": 0.9}, {"item": 1, "score": 1.0, "propensity": 0.1}],
        "model_version": "v1",
        "policy": {"name": "epsilon_greedy"},
        "decision": "d",
    }
    rec = r.Recommendation.from_json(answer)
    assert rec.pairs() == [(3, 2.0), (1, 1.0)] and rec.propensities == [0.9, 0.1]
    greedy = r.Recommendation.from_json({**answer, "items": [{"item": 3, "score": 2.0}]})
    assert greedy.propensities is None
