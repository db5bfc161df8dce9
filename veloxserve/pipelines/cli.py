"""`veloxserve pipeline deploy FILE | list | show NAME | remove NAME`: the client's pipeline verbs."""

from __future__ import annotations

import argparse
import sys
from typing import Any


def add_commands(sub: Any, default_url: str) -> None:
    """`default_url` is kept for callers; the client's DEFAULT_URL is the same address."""
    from veloxserve.client.cli import connection_arguments, run

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
    listing.set_defaults(clipper_run=run(lambda c, a: c.list_pipelines()))
    show = actions.add_parser("show", help="one pipeline: plan, stages, latency, the tuner's scale actions")
    show.add_argument("name")
    show.set_defaults(clipper_run=run(lambda c, a: c.describe_pipeline(a.name)))
    remove = actions.add_parser("remove", help="stop a pipeline's stages and forget it")
    remove.add_argument("name")
    remove.set_defaults(clipper_run=run(lambda c, a: c.remove_pipeline(a.name)))
    for parser in (deploy, listing, show, remove):
        connection_arguments(parser, "admin API token (default: $VELOXSERVE_TOKEN)")


def _deploy(args: argparse.Namespace) -> int:
    """The file is read before any request: one that cannot be read exits 2 and contacts nobody."""
    from veloxserve.client.cli import run
    from veloxserve.errors import VeloxError
    from veloxserve.pipelines.spec import load_file

    try:
        spec = load_file(args.file)
    except VeloxError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 2
    return run(lambda c, a: c.deploy_pipeline(spec))(args)
