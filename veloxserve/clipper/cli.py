"""The Clipper commands of `veloxserve`: run a container, and thin HTTP clients for the admin API."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any


def add_commands(sub: Any, default_url: str) -> None:
    from veloxserve.clipper import container

    run = sub.add_parser("container", help="run a model container process (the server starts these itself)")
    container.add_arguments(run)
    run.set_defaults(clipper_run=container.run)

    deploy = sub.add_parser(
        "deploy",
        help="deploy a model file as a new version in containers of a running server (admin)",
        description="Deploy a model file as a new version. Loading a pickle (callable, sklearn/joblib) or a torch "
        "file (TorchScript or an eager module) runs its code with the server's rights, so this needs an "
        "admin token and the server accepts only files in <home>/models-in/ or a directory given to "
        "`veloxserve serve --model-dir DIR`.",
    )
    deploy.add_argument("--name", required=True, help="model name")
    deploy.add_argument("--framework", required=True, choices=["callable", "sklearn", "torch", "onnx"])
    deploy.add_argument(
        "--model",
        required=True,
        help="model file on the server, in <home>/models-in/ or a "
        "--model-dir of `serve`; its code runs with the server's rights",
    )
    deploy.add_argument(
        "--method", help="estimator method / ONNX output (default: the serving version's, else sklearn predict)"
    )
    deploy.add_argument(
        "--sample",
        type=json.loads,
        help="JSON example input: run once per replica at deploy time; "
        "its shape is the input shape queries are checked against (default: the shape the model "
        "declares, e.g. scikit-learn's n_features_in_)",
    )
    deploy.add_argument("--replicas", type=int, default=1)
    deploy.add_argument("--objective-ms", type=float, default=20.0, help="batch latency objective (default 20)")
    deploy.add_argument("--delay-ms", type=float, default=0.0, help="wait this long for a batch to fill (default 0)")
    deploy.add_argument("--no-batching", action="store_true", help="batches of one")
    deploy.add_argument(
        "--approximate",
        type=json.loads,
        help='JSON LSH settings for approximate caching of numeric inputs, e.g. \'{"tables": 4, "bits": 16}\' '
        "(docs/approximate-caching.md; default: exact caching only)",
    )
    deploy.set_defaults(
        clipper_run=lambda a: _client(
            a,
            "POST",
            "/containers",
            json={
                "name": a.name,
                "framework": a.framework,
                "model": str(Path(a.model).resolve()),
                "method": a.method,
                "replicas": a.replicas,
                "sample": a.sample,
                "objective_ms": a.objective_ms,
                "delay_ms": a.delay_ms,
                "adaptive": not a.no_batching,
                "approximate": a.approximate,
            },
        )
    )

    listing = sub.add_parser("list", help="deployed models: versions, replicas, batch sizes, queues")
    listing.set_defaults(clipper_run=lambda a: _client(a, "GET", "/containers"))

    scale = sub.add_parser("scale", help="set a deployed model's number of container replicas")
    scale.add_argument("--name", required=True)
    scale.add_argument("--replicas", required=True, type=int)
    scale.set_defaults(
        clipper_run=lambda a: _client(a, "POST", f"/containers/{a.name}/scale", json={"replicas": a.replicas})
    )

    rollback = sub.add_parser("rollback", help="serve a deployed model's previous version (or --version)")
    rollback.add_argument("--name", required=True)
    rollback.add_argument("--version")
    rollback.set_defaults(
        clipper_run=lambda a: _client(
            a, "POST", f"/containers/{a.name}/rollback", json={"version": a.version} if a.version else {}
        )
    )

    remove = sub.add_parser("remove", help="stop a deployed model's containers and delete its versions")
    remove.add_argument("--name", required=True)
    remove.set_defaults(clipper_run=lambda a: _client(a, "DELETE", f"/containers/{a.name}"))

    app = sub.add_parser("app", help="create an application over deployed models")
    app.add_argument("--name", required=True)
    app.add_argument("--models", required=True, help="comma-separated model names")
    app.add_argument("--policy", default="single", choices=["single", "exp3", "exp4", "personalised"])
    app.add_argument("--objective-ms", type=float, default=20.0, help="answer by this latency (default 20)")
    app.add_argument("--default", type=json.loads, default=0.0, help="JSON output when no model answers in time")
    app.add_argument("--loss", default="zero_one", choices=["zero_one", "absolute", "squared"])
    app.set_defaults(
        clipper_run=lambda a: _client(
            a,
            "POST",
            "/apps",
            json={
                "name": a.name,
                "models": a.models.split(","),
                "policy": a.policy,
                "objective_ms": a.objective_ms,
                "default": a.default,
                "loss": a.loss,
            },
        )
    )

    for parser in (deploy, listing, scale, rollback, remove, app):
        parser.add_argument("--url", default=default_url, help=f"server address (default {default_url})")
        parser.add_argument("--token", help="admin API token (default: $VELOXSERVE_TOKEN)")


def _client(args: argparse.Namespace, method: str, path: str, **kwargs: Any) -> int:
    from veloxserve.cli import _client as request

    return request(args, method, path, **kwargs)
