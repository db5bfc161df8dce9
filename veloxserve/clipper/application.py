"""An application: linked models, a policy over them, a latency objective and a default output.

Feedback is written to the application's feedback log (fsynced) before the policy learns it and
before it is acknowledged, and replayed when the application is loaded again.

Prediction is bounded in time. Every selected model gets the query with the application's
deadline; at the deadline the application answers with the outputs that arrived, substituting a
late or failed model's running mean output (an anytime prediction). If no model answered, the
answer is the default output with `"default": true` and the reason. Crashed or hung containers
therefore cost accuracy, never a hang. An input that does not have the linked models' probed
input shape (shapes.py) is refused with a 400 before anything is queued: a model failing on it
would otherwise be answered, silently, with the default.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from veloxserve.clipper.deployment import ModelDeployment
from veloxserve.clipper.feedback_log import FeedbackLog, FeedbackTail
from veloxserve.clipper.policies import POLICIES, Loss, Policy, PolicyKind, as_target, losses
from veloxserve.clipper.shapes import check_input, method_label, shape_of, show
from veloxserve.errors import ContainerUnavailable, VeloxError, invalid_parameter

FEEDBACK_TIMEOUT_S = 10.0  # feedback is not latency-bound: it waits for every model it needs


@dataclass(frozen=True)
class AppConfig:
    """What an application is. `params` are the policy's (eta, gamma, prior_precision)."""

    name: str
    models: tuple[str, ...]
    policy: PolicyKind = PolicyKind.SINGLE
    objective: float = 0.020
    default: Any = 0.0
    loss: Loss = Loss.ZERO_ONE
    params: dict[str, float] = field(default_factory=dict)
    seed: int = 0

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "models": list(self.models),
            "policy": self.policy.value,
            "objective_ms": self.objective * 1e3,
            "default": self.default,
            "loss": self.loss.value,
            "params": dict(self.params),
            "seed": self.seed,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> AppConfig:
        return cls(
            name=data["name"],
            models=tuple(data["models"]),
            policy=PolicyKind(data["policy"]),
            objective=data["objective_ms"] / 1e3,
            default=data["default"],
            loss=Loss(data["loss"]),
            params=dict(data.get("params") or {}),
            seed=int(data.get("seed", 0)),
        )


def normalise_input(value: Any) -> Any:
    """A numeric input (number or nested lists of numbers) becomes a float64 array; anything
    else (text, objects) goes to the models as JSON."""
    if isinstance(value, np.ndarray):
        return value.astype(np.float64, copy=False) if value.dtype.kind in "biuf" else value
    if isinstance(value, (int, float, list)) and not isinstance(value, bool):
        try:
            array = np.asarray(value)
        except ValueError:  # ragged lists
            return value
        if array.dtype.kind in "iuf":
            return array.astype(np.float64)
    return value


class Application:
    """Deadline-bounded predictions and online feedback over linked model deployments."""

    def __init__(self, config: AppConfig, resolve: Callable[[str], ModelDeployment], log: FeedbackLog) -> None:
        self.config = config
        self._resolve = resolve
        rng = np.random.default_rng(config.seed)
        self.policy: Policy = POLICIES[config.policy](len(config.models), config.loss, rng, **config.params)
        self.answered = self.defaults = self.observed = 0
        self.log = log
        self.tails: dict[int, FeedbackTail] = {}  # other frontends' feedback files (frontends.py)
        self.learn(log.replay())  # what was acknowledged before a restart (or kill -9)

    def learn(self, records: Iterable[dict[str, Any]]) -> None:
        """Learn from feedback records already durable (this log's replay, other frontends' files)."""
        for record in records:
            self.policy.observe(
                record["user"], np.array(record["chosen"]), np.array(record["outputs"]), np.array(record["target"])
            )
            self.observed += 1

    async def predict(self, user: str, value: Any) -> dict[str, Any]:
        deadline = time.monotonic() + self.config.objective
        value = normalise_input(value)
        self._check_input(value, "predict")
        chosen = self.policy.select(user)
        futures = await self._settled(self._ask(chosen, value, deadline), deadline)
        report, outputs, arrived = [], [], 0
        for index, future in zip(chosen, futures):
            name = self.config.models[index]
            entry, output = self._outcome(name, future)
            report.append(entry)
            arrived += entry["status"] == "ok"
            outputs.append(output)
        self.answered += 1
        if not arrived:
            self.defaults += 1
            reasons = "; ".join(f"{e['model']}: {e['reason']}" for e in report)
            return {
                "output": self.config.default,
                "default": True,
                "reason": f"no model answered within {self.config.objective * 1e3:g} ms ({reasons})",
                "models": report,
            }
        if len(chosen) == 1:
            output = outputs[0]
            return {
                "output": output.tolist() if isinstance(output, np.ndarray) else output,
                "default": False,
                "models": report,
            }
        present = np.array([o is not None for o in outputs])
        F = self._matrix([o for o in outputs if o is not None], chosen[present])
        combined = self.policy.combine(user, chosen[present], F)
        return {
            "output": combined.item() if combined.size == 1 else combined.tolist(),
            "default": False,
            "models": report,
        }

    async def observe(self, user: str, value: Any, label: Any) -> dict[str, Any]:
        """Learn from feedback: evaluate the models the policy learns from (all but for Exp3),
        then update. A model that cannot answer rejects the feedback, which changes nothing."""
        value = normalise_input(value)
        self._check_input(value, "observe")
        chosen = self.policy.select(user)
        deadline = time.monotonic() + max(FEEDBACK_TIMEOUT_S, self.config.objective)
        futures = await self._settled(self._ask(chosen, value, deadline), deadline)
        outputs = []
        for index, future in zip(chosen, futures):
            entry, output = self._outcome(self.config.models[index], future)
            if entry["status"] != "ok":
                raise ContainerUnavailable(
                    f"Feedback needs the output of model {entry['model']!r}, which failed: "
                    f"{entry['reason']}. Nothing was learned; send it again."
                )
            outputs.append(output)
        F = self._matrix(outputs, chosen)
        if not np.isfinite(F).all():
            raise ContainerUnavailable("A model returned non-finite outputs for this input; nothing was learned.")
        try:
            target = as_target(label, F.shape[1])
        except ValueError as exc:
            raise invalid_parameter("label", "observe", str(exc), label) from None
        model_losses = losses(F, target, self.config.loss)
        await self.log.append({"user": user, "chosen": chosen, "outputs": F, "target": target})  # durable first
        self.policy.observe(user, chosen, F, target)
        self.observed += 1
        return {"observed": 1, "models": [self.config.models[i] for i in chosen], "losses": model_losses.tolist()}

    def _check_input(self, value: Any, where: str) -> None:
        """A 400 naming the shape, before anything is queued, when a linked model's probed input
        shape (shapes.py) is known and `value` does not have it: the model would only fail on it."""
        for name in self.config.models:
            try:
                expected = self._resolve(name).input_shape
            except VeloxError:  # removed from under the application: its outcome says so
                continue
            if expected is not None:
                check_input(value, expected, name, where)

    def _matrix(self, outputs: list[Any], chosen: np.ndarray) -> np.ndarray:
        """Models × output dimension, float64; a 503 naming each model, version, method and shape
        when the outputs cannot be stacked."""
        try:
            return np.stack([np.atleast_1d(np.asarray(o, dtype=np.float64)) for o in outputs])
        except (TypeError, ValueError):
            pass
        described = []
        for index, output in zip(chosen, outputs):
            name = self.config.models[index]
            try:
                deployment = self._resolve(name)
                meta = {"method": deployment.spec.method, "framework": deployment.spec.framework.value}
                described.append(
                    f"{name!r} {deployment.version} (method {method_label(meta)}) gave "
                    f"{show(shape_of(_numeric(output)))}"
                )
            except VeloxError:
                described.append(f"{name!r} gave {show(shape_of(_numeric(output)))}")
        raise ContainerUnavailable(
            f"Application {self.config.name!r} needs numeric outputs of one shape from its models to combine or "
            f"learn from them, but {', '.join(described)}. Deploy versions whose outputs have one shape (e.g. the "
            "same --method), or roll back the one that changed."
        )

    def _ask(self, chosen: np.ndarray, value: Any, deadline: float) -> list[asyncio.Future | Exception]:
        futures: list[asyncio.Future | Exception] = []
        for index in chosen:
            try:
                futures.append(self._resolve(self.config.models[index]).predict(value, deadline))
            except VeloxError as exc:  # a model removed from under the application
                futures.append(exc)
        return futures

    @staticmethod
    async def _settled(futures: list[asyncio.Future | Exception], deadline: float) -> list[asyncio.Future | Exception]:
        """Wait until every future is done or the deadline passes; never cancels a shared computation."""
        pending = [f for f in futures if isinstance(f, asyncio.Future)]
        if pending:
            await asyncio.wait(pending, timeout=max(0.0, deadline - time.monotonic()))
        return futures

    def _outcome(self, name: str, future: asyncio.Future | Exception) -> tuple[dict[str, Any], Any]:
        if isinstance(future, asyncio.Future) and future.done() and future.exception() is None:
            return {"model": name, "status": "ok"}, future.result()
        if isinstance(future, Exception):
            reason = future.message if isinstance(future, VeloxError) else str(future)
        elif not future.done():
            try:
                reason = self._resolve(name).why_late()
            except VeloxError:
                reason = "no answer by the deadline"
        else:
            error = future.exception()
            reason = error.message if isinstance(error, VeloxError) else str(error)
        try:
            mean = self._resolve(name).mean.mean
        except VeloxError:
            mean = None
        if mean is None:
            return {"model": name, "status": "missing", "reason": reason}, None
        return {"model": name, "status": "mean", "reason": reason}, mean

    def describe(self) -> dict[str, Any]:
        return {
            **self.config.to_json(),
            "state": self.policy.describe(),
            "answered": self.answered,
            "defaults": self.defaults,
            "observed": self.observed,
        }


def _numeric(output: Any) -> Any:
    try:
        return np.asarray(output, dtype=np.float64)
    except (TypeError, ValueError):
        return output
