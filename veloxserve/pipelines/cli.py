"""`veloxserve pipeline deploy FILE | list | show NAME | remove NAME`: thin HTTP clients of /pipelines."""

from __future__ import annotations

import argparse
import sys
from typing import Any

DEPLOY_TIMEOUT_S = 600.0  # deploying profiles every stage whose model version has no profile yet


def add_commands(sub: Any, default_url: str) -> None:
    pipeline = sub.add_parser(
        "pipeline",
        help="pipelines of deployed models under one end-to-end objective (docs/pipelines.md)",
        description="Deploy, list, show or remove pipelines on a running server (deploy and remove need an "
        "admin token).",
    )
    actions = pipeline.add_subparsers(dest="pipeline_command", required=True, metavar="ACTION")
    deploy = actions.add_parser("deploy", help="deploy the pipeline a TOML or JSON file declares")
    deploy.add_argument("file", help="the pipeline file (.toml, else JSON)")
    deploy.set_defaults(clipper_run=_deploy)
    listing = actions.add_parser("list", help="every pipeline with its plan and stages")
    listing.set_defaults(clipper_run=lambda a: _client(a, "GET", "/pipelines"))
    show = actions.add_parser("show", help="one pipeline: plan, stages, latency, the tuner's scale actions")
    show.add_argument("name")
    show.set_defaults(clipper_run=lambda a: _client(a, "GET", f"/pipelines/{a.name}"))
    remove = actions.add_parser("remove", help="stop a pipeline's stages and forget it")
    remove.add_argument("name")
    remove.set_defaults(clipper_run=lambda a: _client(a, "DELETE", f"/pipelines/{a.name}"))
    for parser in (deploy, listing, show, remove):
        parser.add_argument("--url", default=default_url, help=f"server address (default {default_url})")
        parser.add_argument("--token", help="admin API token (default: $VELOXSERVE_TOKEN)")


def _deploy(args: argparse.Namespace) -> int:
    from veloxserve.errors import VeloxError
    from veloxserve.pipelines.spec import load_file

    try:
        body = load_file(args.file)
    except VeloxError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 2
    return _client(args, "POST", "/pipelines", json=body, timeout=DEPLOY_TIMEOUT_S)


def _client(args: argparse.Namespace, method: str, path: str, **kwargs: Any) -> int:
    from veloxserve.cli import _client as request

    return request(args, method, path, **kwargs)
