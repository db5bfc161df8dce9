"""The handlers of veloxserve's own routes: typed request in, Velox call, JSON-ready answer out.

Each handler takes the route's path arguments, then its decoded query and/or body (the types in
requests.py, declared in routes.py). Validation of shapes is done before a handler runs; the
values' meaning (ids, score ranges, k against the catalogue) is checked by Velox, one template
for the Python API and HTTP. Work that blocks (Redis, rebuilding users, retraining) runs off the
event loop.
"""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np
from msgspec import UNSET

from veloxserve.api.metrics import Metrics
from veloxserve.api.openapi import served_schema
from veloxserve.api.requests import PredictQuery, RetrainPolicyRequest, RetrainRequest, TopKQuery
from veloxserve.errors import invalid_parameter
from veloxserve.serving.admission import Admission
from veloxserve.serving.durability import DurableWaiter
from veloxserve.serving.redis_watch import StoreCalls
from veloxserve.serving.velox import DURABLE_TIMEOUT_S, Velox


class Accepted(dict):
    """A payload answered with 202: the work goes on in the background."""


def _entry(
    entry: Any, keys: tuple[str, ...], field: str, where: str, optional: tuple[str, ...] = ()
) -> tuple[Any, ...]:
    if not isinstance(entry, dict) or any(key not in entry for key in keys):
        raise invalid_parameter(field, where, "an object with " + ", ".join(repr(k) for k in keys), entry)
    return tuple(entry[key] for key in keys) + tuple(entry.get(key) for key in optional)


def _set(value: Any) -> Any:
    return None if value is UNSET else value


class VeloxHandlers:
    """The routes over one Velox (routes.py names them)."""

    def __init__(self, velox: Velox, admission: Admission, metrics: Metrics, store_calls: StoreCalls) -> None:
        self.velox, self.admission, self.metrics, self.store_calls = velox, admission, metrics, store_calls
        self._waiters: dict[str, DurableWaiter] = {}

    async def healthz(self) -> dict[str, Any]:
        """`degraded` says what to fix (damaged log records, a full disk) while serving goes on."""
        degraded = self.velox.health()
        answer: dict[str, Any] = {"status": "degraded" if degraded else "ok", "models": self.velox.model_names()}
        if degraded:
            answer["degraded"] = degraded
        return answer

    async def openapi(self) -> dict[str, Any]:
        """The document for this server: its configured batch limit and what its catalogues allow."""
        servers = [self.velox.server(name) for name in self.velox.model_names()]
        max_k = max((len(server.version.catalog) for server in servers), default=1)
        attributes = tuple(sorted({name for server in servers for name in server.attributes.columns}))
        return served_schema(self.velox.config.max_batch, max_k, attributes)

    async def list_models(self) -> dict[str, Any]:
        return {"models": [self.velox.describe(name) for name in self.velox.model_names()]}

    async def show_model(self, name: str) -> dict[str, Any]:
        return self.velox.describe(name)

    async def predict_one(self, name: str, query: PredictQuery) -> dict[str, Any]:
        server = self.velox.server(name)
        user, item = query.user, query.item
        if item is UNSET:
            if query.text is UNSET:
                raise invalid_parameter("item", "predict", "present in the query string (or `text`)", None)
            text = query.text  # an item known by its text (content features)
            score = (await self.store_calls.read(server.predict_text, [(user, text)]))[0]
            return {"user": user, "text": text, "score": float(score), "model_version": server.version_id}
        score = await self.store_calls.read(server.predict, user, item)
        return {"user": user, "item": item, "score": score, "model_version": server.version_id}

    async def predict_batch(self, name: str, body: Any) -> dict[str, Any]:
        server = self.velox.server(name)
        queries = body.queries
        by_text = [q.item is UNSET and q.text is not UNSET for q in queries]
        if not any(by_text):
            pairs = [(q.user, q.item) for q in queries]
            for i, (_, item) in enumerate(pairs):
                if item is UNSET:
                    raise invalid_parameter(f"queries[{i}]", "predict", "an object with 'user', 'item'", {"user": _})
            return {
                "scores": await self.store_calls.read(server.predict_many, pairs),
                "model_version": server.version_id,
            }
        # Items by id and by text in one batch: predictions change no state, so score each half.
        text_at = [i for i, t in enumerate(by_text) if t]
        item_at = [i for i, t in enumerate(by_text) if not t]
        texts = [(queries[i].user, queries[i].text) for i in text_at]
        items = [(queries[i].user, queries[i].item) for i in item_at]
        for i, (user, item) in zip(item_at, items):
            if item is UNSET:
                raise invalid_parameter(f"queries[{i}]", "predict", "an object with 'user', 'item'", {"user": user})

        def score() -> np.ndarray:  # one call, so one deadline for the whole batch
            scores = np.empty(len(queries))
            scores[text_at] = server.predict_text(texts)
            if items:
                scores[item_at] = server.predict_many(items)
            return scores

        return {"scores": await self.store_calls.read(score), "model_version": server.version_id}

    def _ranked(
        self, name: str, user: Any, k: Any, candidates: Any, exclude_seen: bool, options: dict[str, Any]
    ) -> dict[str, Any]:
        rec = self.velox.recommend(name, user, k, candidates=candidates, exclude_seen=exclude_seen, **options)
        if rec.propensities is None:
            items = [{"item": item, "score": score} for item, score in zip(rec.items, rec.scores)]
        else:
            items = [
                {"item": item, "score": score, "propensity": p}
                for item, score, p in zip(rec.items, rec.scores, rec.propensities)
            ]
        return {
            "user": user,
            "items": items,
            "model_version": rec.model_version,
            "policy": rec.policy.describe(),
            "decision": rec.decision,
        }

    async def top_k_get(self, name: str, query: TopKQuery) -> dict[str, Any]:
        self.velox.server(name)
        options = {"policy": _set(query.policy), "filter": _set(query.filter)}
        for field in ("epsilon", "alpha"):
            if getattr(query, field) is not UNSET:
                options[field] = getattr(query, field)
        return await self.store_calls.run(self._ranked, name, query.user, query.k, None, query.exclude_seen, options)

    async def top_k_post(self, name: str, body: Any) -> dict[str, Any]:
        self.velox.server(name)
        options = {field: getattr(body, field) for field in ("policy", "epsilon", "alpha", "filter")}
        return await self.store_calls.run(
            self._ranked, name, body.user, body.k, body.candidates, body.exclude_seen, options
        )

    async def observe(self, name: str, body: Any) -> dict[str, Any]:
        self.velox.server(name)
        if not isinstance(body, dict):
            raise invalid_parameter("body", "observe", "a JSON object", type(body).__name__)
        if "observations" in body:
            entries = body["observations"]
            if not isinstance(entries, list):
                raise invalid_parameter("observations", "observe", "a JSON list", entries)
            rows = [
                _entry(o, ("user", "item", "score"), f"observations[{i}]", "observe", ("decision", "id"))
                for i, o in enumerate(entries)
            ]
        else:
            rows = [_entry(body, ("user", "item", "score"), "body", "observe", ("decision", "id"))]
        receipt = self.velox.submit(name, rows)
        await self._waiter(name).wait(receipt, DURABLE_TIMEOUT_S)  # 200 only once durable (or the original is)
        if receipt.foreign:  # retries of observations another process logged (state shared in Redis)
            await asyncio.get_running_loop().run_in_executor(
                None, self.velox.wait_originals, name, receipt.foreign, DURABLE_TIMEOUT_S
            )
        self.metrics.observations.labels(name).inc(len(rows) - receipt.duplicates)
        answer = {
            "observed": len(rows),
            "duplicates": receipt.duplicates,
            "lsn": int(receipt),
            "model_version": self.velox.server(name).version_id,
        }
        if "observations" not in body:
            answer["duplicate"] = receipt.duplicates == 1
        return answer

    async def model_metrics(self, name: str) -> dict[str, Any]:
        server = self.velox.server(name)
        return {
            "model": name,
            "model_version": server.version_id,
            "prequential": server.prequential.report(),
            "feature_cache": self.velox.feature_cache.stats().as_dict(),
            "admission": self.admission.describe(name),
        }

    async def alerts(self, name: str) -> dict[str, Any]:
        self.velox.server(name)
        # A few KS tests over the sketches: milliseconds, off the event loop all the same.
        return await asyncio.get_running_loop().run_in_executor(None, self.velox.alerts, name)

    async def versions(self, name: str) -> dict[str, Any]:
        info = self.velox.describe(name)
        return {"active_version": info["active_version"], "versions": info["versions"]}

    async def version(self, name: str, version: str) -> dict[str, Any]:
        return self.velox.version(name, version)

    async def activate(self, name: str, version: str) -> dict[str, Any]:
        self.velox.server(name)
        # Rebuilding users against another θ takes a while: keep the event loop serving meanwhile.
        await asyncio.get_running_loop().run_in_executor(None, self.velox.activate, name, version)
        return {"model": name, "active_version": self.velox.server(name).version_id}

    async def retrain(self, name: str, body: RetrainRequest | None) -> Accepted:
        options = body if body is not None else RetrainRequest()
        params = options.params or {}
        job = await asyncio.get_running_loop().run_in_executor(
            None, lambda: self.velox.retrain(name, promote=options.promote, overrides=params)
        )
        return Accepted({"retrain": job.describe(), "status_url": f"/models/{name}/retrain"})

    async def retrain_status(self, name: str) -> dict[str, Any]:
        self.velox.server(name)
        job = self.velox.retrainer.job(name)
        return {"model": name, "retrain": None if job is None else job.describe()}

    async def policy(self, name: str) -> dict[str, Any]:
        return {"model": name, "policy": self.velox.policy(name).__dict__}

    async def set_policy(self, name: str, body: RetrainPolicyRequest) -> dict[str, Any]:
        changes = {f: getattr(body, f) for f in body.__struct_fields__ if getattr(body, f) is not UNSET}
        return {"model": name, "policy": self.velox.set_policy(name, changes).__dict__}

    async def forget_everywhere(self, user: str) -> dict[str, Any]:
        return await asyncio.get_running_loop().run_in_executor(None, self.velox.forget_user, user, None)

    async def forget_in_model(self, name: str, user: str) -> dict[str, Any]:
        self.velox.server(name)
        return await asyncio.get_running_loop().run_in_executor(None, self.velox.forget_user, user, name)

    def _waiter(self, model: str) -> DurableWaiter:
        waiter = self._waiters.get(model)
        if waiter is None:
            waiter = self._waiters[model] = DurableWaiter(self.velox.acknowledger(model), asyncio.get_running_loop())
        return waiter
