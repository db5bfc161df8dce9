"""A version's input and output shapes: inherited methods, refused shape changes, checked inputs,
and containers warmed before their first query."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest

from tests.clipper.conftest import write_callable
from veloxserve.clipper import Clipper
from veloxserve.errors import Conflict, ContainerUnavailable, InvalidInput

X_DIGITS: np.ndarray
Y_DIGITS: np.ndarray


@pytest.fixture(scope="module")
def digits(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The README's models: two logistic regressions (lr, lr2) and a small forest, on 64 pixels."""
    import joblib
    from sklearn.datasets import load_digits
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.linear_model import LogisticRegression

    global X_DIGITS, Y_DIGITS
    X_DIGITS, Y_DIGITS = load_digits(return_X_y=True)
    directory = tmp_path_factory.mktemp("digits")
    models = {
        "lr": LogisticRegression(max_iter=300).fit(X_DIGITS[:300], Y_DIGITS[:300]),
        "lr2": LogisticRegression(max_iter=300, C=0.1).fit(X_DIGITS[:600], Y_DIGITS[:600]),
        "rf": RandomForestClassifier(n_estimators=5, random_state=0).fit(X_DIGITS[:300], Y_DIGITS[:300]),
    }
    for name, model in models.items():
        joblib.dump(model, directory / f"{name}.joblib")
    return {name: directory / f"{name}.joblib" for name in models}


@pytest.fixture
def clipper(tmp_path: Path, digits: dict[str, Path]):
    with Clipper(tmp_path / "home", model_dirs=[tmp_path, digits["lr"].parent]) as runtime:
        yield runtime


def _readme_setup(clipper: Clipper, digits: dict[str, Path]) -> None:
    clipper.deploy("digits-lr", "sklearn", digits["lr"], method="predict_proba")
    clipper.deploy("digits-rf", "sklearn", digits["rf"], method="predict_proba")
    clipper.create_app("digits", ["digits-lr", "digits-rf"], policy="personalised", objective_ms=20_000, default=None)


def test_a_new_version_without_method_keeps_the_serving_versions_method(clipper: Clipper, digits) -> None:
    _readme_setup(clipper, digits)
    described = clipper.deploy("digits-lr", "sklearn", digits["lr2"])  # the README's lr2 step: no --method
    assert described["version"] == "v2" and described["method"] == "predict_proba"
    assert described["versions"][1]["method_from"] == "v1" and described["output_shape"] == [10]
    answer = clipper.predict("digits", "ann", X_DIGITS[700].tolist())
    assert answer["default"] is False and [m["status"] for m in answer["models"]] == ["ok", "ok"]
    assert len(answer["output"]) == 10


def test_a_version_of_another_output_shape_is_refused_naming_model_version_method_and_shapes(
    clipper: Clipper, digits
) -> None:
    _readme_setup(clipper, digits)
    with pytest.raises(Conflict) as error:
        clipper.deploy("digits-lr", "sklearn", digits["lr2"], method="predict")  # labels, not probabilities
    message = error.value.message
    for part in ("'digits-lr'", "v2", "method predict", "[] (one number)", "[10]", "v1", "predict_proba", "['digits']"):
        assert part in message, (part, message)
    assert error.value.status == 409 and error.value.field == "method"
    described = clipper.describe_model("digits-lr")  # nothing changed: v1 serves, no v2 is kept
    assert described["version"] == "v1" and [v["version"] for v in described["versions"]] == ["v1"]
    assert clipper.predict("digits", "ann", X_DIGITS[700].tolist())["default"] is False


def test_without_linked_applications_a_version_may_change_its_output_shape(clipper: Clipper, digits) -> None:
    clipper.deploy("m", "sklearn", digits["lr"], method="predict_proba")
    assert clipper.deploy("m", "sklearn", digits["lr2"], method="predict")["output_shape"] == []


def test_rolling_back_to_a_version_of_another_output_shape_is_refused(clipper: Clipper, digits) -> None:
    clipper.deploy("m", "sklearn", digits["lr"], method="predict")
    clipper.deploy("m", "sklearn", digits["lr2"], method="predict_proba")
    clipper.create_app("app", ["m"], objective_ms=20_000)
    with pytest.raises(Conflict, match=r"Version v1 of model 'm'"):
        clipper.rollback("m")
    assert clipper.describe_model("m")["version"] == "v2"
    assert len(clipper.predict("app", "u", X_DIGITS[0].tolist())["output"]) == 10


def test_a_wrong_shape_input_is_a_400_naming_the_shape_and_queues_nothing(clipper: Clipper, digits) -> None:
    _readme_setup(clipper, digits)
    clipper.observe("digits", "ann", X_DIGITS[0].tolist(), int(Y_DIGITS[0]))
    before = clipper.runtime.app("digits").describe()
    computed = [r["queries"] for m in ("digits-lr", "digits-rf") for r in clipper.describe_model(m)["replicas"]]
    log_size = clipper.runtime.registry.feedback_log("digits").stat().st_size
    for bad in (X_DIGITS[0, :10].tolist(), 3.0, "seven", X_DIGITS[:2].tolist()):
        for call in (lambda: clipper.predict("digits", "ann", bad), lambda: clipper.observe("digits", "ann", bad, 1)):
            with pytest.raises(InvalidInput) as error:
                call()
            assert error.value.field == "input" and "[64]" in error.value.message
    assert clipper.runtime.app("digits").describe() == before
    assert [r["queries"] for m in ("digits-lr", "digits-rf") for r in clipper.describe_model(m)["replicas"]] == computed
    assert clipper.runtime.registry.feedback_log("digits").stat().st_size == log_size


def test_a_sample_gives_a_callable_its_input_shape(clipper: Clipper, tmp_path: Path) -> None:
    path = write_callable(tmp_path / "sum.pkl", lambda batch: np.asarray(batch).sum(axis=1))
    assert clipper.deploy("sum", "callable", path, sample=[1.0, 2.0])["input_shape"] == [2]
    clipper.create_app("app", ["sum"], objective_ms=20_000)
    assert clipper.predict("app", "u", [3.0, 4.0])["output"] == 7.0
    with pytest.raises(InvalidInput, match=r"shape \[2\]"):
        clipper.predict("app", "u", [3.0, 4.0, 5.0])
    # the next version, deployed without a sample, is probed with this one
    described = clipper.deploy(
        "sum", "callable", write_callable(tmp_path / "sum2.pkl", lambda batch: np.asarray(batch).sum(axis=1) * 2)
    )
    assert described["version"] == "v2" and described["input_shape"] == [2] and described["output_shape"] == []


def test_a_model_that_fails_on_its_sample_is_refused_and_leaves_nothing(clipper: Clipper, tmp_path: Path) -> None:
    def picky(batch):
        raise ValueError("never")

    with pytest.raises(InvalidInput, match="never") as error:
        clipper.deploy("picky", "callable", write_callable(tmp_path / "p.pkl", picky), sample=[1.0])
    assert error.value.field == "sample"
    assert clipper.list_models() == [] and not (clipper.runtime.registry.models / "picky").exists()


def _slow_first_batch(seconds: float):
    """Answers 1.0; the first batch a container process computes takes `seconds` (a cold start)."""

    def predict(batch, _state=[]):  # noqa: B006 - per container process: its own unpickled copy
        import time

        if not _state:
            _state.append(True)
            time.sleep(seconds)
        return [1.0] * len(batch)

    return predict


def test_the_first_predicts_after_a_deploy_are_answered_by_warm_replicas(clipper: Clipper, tmp_path: Path) -> None:
    """The cold first batch of every replica is paid at deploy (and scale) time, not by a query."""
    clipper.deploy(
        "cold", "callable", write_callable(tmp_path / "cold.pkl", _slow_first_batch(3.0)), replicas=2, sample=[0.0]
    )
    clipper.create_app("app", ["cold"], objective_ms=2000, default=-1.0)

    async def concurrently(n: int, offset: float):  # n queries at once: one per replica
        return await asyncio.gather(*(clipper.runtime.predict("app", "u", [offset + i]) for i in range(n)))

    assert [a["default"] for a in clipper._run(concurrently(2, 1.0))] == [False, False]
    clipper.scale("cold", 3)
    assert [a["default"] for a in clipper._run(concurrently(3, 10.0))] == [False, False, False]


def test_outputs_that_cannot_be_combined_name_each_model_and_shape(clipper: Clipper, tmp_path: Path) -> None:
    clipper.deploy("one", "callable", write_callable(tmp_path / "a.pkl", lambda batch: [0.5] * len(batch)))
    clipper.deploy("two", "callable", write_callable(tmp_path / "b.pkl", lambda batch: [[0.5, 0.5]] * len(batch)))
    clipper.create_app("ens", ["one", "two"], policy="exp4", objective_ms=20_000)
    with pytest.raises(ContainerUnavailable) as error:
        clipper.predict("ens", "u", [1.0])
    for part in ("'ens'", "'one' v1", "'two' v1", "[] (one number)", "[2]"):
        assert part in error.value.message, (part, error.value.message)


def test_an_application_over_models_of_different_shapes_is_refused(clipper: Clipper, digits) -> None:
    clipper.deploy("proba", "sklearn", digits["lr"], method="predict_proba")
    clipper.deploy("labels", "sklearn", digits["lr2"])
    with pytest.raises(InvalidInput, match="output shape") as error:
        clipper.create_app("mixed", ["proba", "labels"], policy="exp4")
    assert error.value.field == "models" and clipper.list_apps() == []


def test_a_restarted_container_computes_its_slow_first_batch_before_the_next_query(
    clipper: Clipper, tmp_path: Path
) -> None:
    import os
    import signal
    import time

    clipper.deploy("cold", "callable", write_callable(tmp_path / "cold.pkl", _slow_first_batch(3.0)), sample=[0.0])
    clipper.create_app("app", ["cold"], objective_ms=2000, default=-1.0)
    before = clipper.describe_model("cold")["replicas"][0]
    os.kill(before["pid"], signal.SIGKILL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:  # restarted, and its warm-up batch computed
        replica = clipper.describe_model("cold")["replicas"][0]
        if replica["restarts"] == 1 and replica["ready"] and replica["queries"] > before["queries"]:
            break
        time.sleep(0.1)
    assert replica["pid"] != before["pid"] and replica["queries"] == before["queries"] + 1
    assert clipper.predict("app", "u", [42.0])["default"] is False
