"""The peer of bench/bench_http.py: veloxserve's model served by BentoML, computed with numpy.

It loads one version directory (docs/architecture.md, "Version directory contract") and serves
the same split model: predict = w_u · f(x) with f(x) = [v_x, μ + b_x, 1], and observe = the same
exact Sherman–Morrison update of the user's ridge system (P = A⁻¹, r, w = P r), in plain numpy.
New users start from the prior, as in veloxserve. What it leaves out, so the comparison favours
the peer: no durable log (observe answers before anything reaches disk), no validation beyond
BentoML's own typing, identity link only (Catify's). BentoML's own metrics and tracing stay as
shipped; only its access log is off.

It runs in its own virtual environment (bench/.peer-venv, made by bench_http.py from
bench/peer-requirements.txt) and imports nothing from veloxserve: it is an independent
implementation, which is also why the bench checks its answers against veloxserve's.

    VELOX_PEER_VERSION_DIR=<home>/models/catify/versions/v1 \\
        bench/.peer-venv/bin/bentoml serve peer_bentoml_service:SplitModel --working-dir bench --port 3000

BentoML's APIs are POST with a JSON body whose fields are the method's arguments (`hello` is
BentoML's own floor, no model):
    curl -X POST localhost:3000/predict -H 'content-type: application/json' -d '{"user": 0, "item": 10}'
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import bentoml
import numpy as np
from pydantic import BaseModel

VERSION_DIR_ENV = "VELOX_PEER_VERSION_DIR"


class SplitModelState:
    """One version's θ and every user's ridge state, in arrays; new users are appended."""

    def __init__(self, directory: Path) -> None:
        meta = json.loads((directory / "meta.json").read_text())
        if meta["link"] != "identity":
            raise ValueError(f"the peer serves the identity link only, not {meta['link']!r}")
        load = lambda name: np.load(directory / f"{name}.npy")  # noqa: E731
        factors = load("item_factors")
        self.features = np.column_stack([factors, meta["global_mean"] + load("item_bias"), np.ones(len(factors))])
        self.items = {str(item): row for row, item in enumerate(load("item_ids").tolist())}
        self.users = {str(user): row for row, user in enumerate(load("user_ids").tolist())}
        self.P = np.linalg.inv(load("user_gram"))
        self.r = load("user_rhs").copy()
        self.w = load("user_weights").copy()
        precision = load("prior_precision")
        self.prior_w = load("prior_mean")
        self.prior_P = np.diag(1.0 / precision)
        self.prior_r = precision * self.prior_w

    def item_row(self, item: str | int) -> int:
        row = self.items.get(str(item))
        if row is None:
            raise bentoml.exceptions.NotFound(f"unknown item {item!r}")
        return row

    def predict(self, user: str | int, item: str | int) -> float:
        row = self.users.get(str(user))
        w = self.prior_w if row is None else self.w[row]
        return float(self.features[self.item_row(item)] @ w)

    def observe(self, user: str | int, item: str | int, score: float) -> None:
        f = self.features[self.item_row(item)]
        row = self._ensure(str(user))
        P, r = self.P[row], self.r[row]
        pf = P @ f
        P -= np.outer(pf, pf) / (1.0 + f @ pf)  # Sherman–Morrison: (A + f fᵀ)⁻¹
        r += score * f
        self.w[row] = P @ r

    def _ensure(self, user: str) -> int:
        row = self.users.get(user)
        if row is None:
            row = self.users[user] = len(self.users)
            if row == len(self.w):  # double the arrays: amortised O(1) per new user
                self.P, self.r, self.w = (np.concatenate([a, np.empty_like(a)]) for a in (self.P, self.r, self.w))
            self.P[row], self.r[row], self.w[row] = self.prior_P, self.prior_r, self.prior_w
        return row


class Prediction(BaseModel):
    """A typed answer: with a bare `dict` BentoML derives a JSON schema on every response (a
    quarter of its time per request, measured with py-spy); a model class it serialises directly."""

    user: str | int
    item: str | int
    score: float


class Observed(BaseModel):
    observed: int


class Hello(BaseModel):
    user: str | int
    score: float


# One worker (one process, like the veloxserve server); no access log (veloxserve writes none).
@bentoml.service(workers=1, logging={"access": {"enabled": False}})
class SplitModel:
    """predict and observe over HTTP. Async methods: each call is microseconds of numpy, so running
    it on the event loop beats BentoML's thread pool hand-off (spot check, 32 connections: ~190 vs
    ~160 requests/s) and keeps observes in order."""

    def __init__(self) -> None:
        self.model = SplitModelState(Path(os.environ[VERSION_DIR_ENV]))

    @bentoml.api
    async def hello(self, user: str | int) -> Hello:
        """BentoML's hello-world floor: the same request and answer shapes, no model."""
        return Hello(user=user, score=1.0)

    @bentoml.api
    async def predict(self, user: str | int, item: str | int) -> Prediction:
        return Prediction(user=user, item=item, score=self.model.predict(user, item))

    @bentoml.api
    async def observe(self, user: str | int, item: str | int, score: float) -> Observed:
        self.model.observe(user, item, score)
        return Observed(observed=1)
