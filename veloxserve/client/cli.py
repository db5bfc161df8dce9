"""The `veloxserve` commands that talk to a running server, over veloxserve.client.Client:
predict, top-k, observe, versions list/show/activate, retrain, policy, forget. Clipper's (deploy,
list, ...) live in clipper/cli.py and use the same `connect` and `emit`.

Answers print as the server's JSON (`--json` on `versions list`, which prints a table for people);
errors print as `error: <class>: <message>` on stderr with exit status 1 (2 when the server could
not be reached).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from veloxserve.client.clients import DEFAULT_URL, TOKEN_ENV, Client
from veloxserve.client.results import RetrainJob, Versions

POLICIES = ("greedy", "epsilon_greedy", "linucb", "thompson")
PROMOTE = ("if_better", "always", "never")


def parse_id(text: str) -> str | int:
    """Command-line ids that look like integers are sent as JSON integers."""
    try:
        return int(text)
    except ValueError:
        return text


def connection_arguments(parser: argparse.ArgumentParser, token_help: str | None = None) -> None:
    parser.add_argument("--url", default=DEFAULT_URL, help="server address")
    parser.add_argument(
        "--token",
        help=token_help or f"API token for admin routes or a model key (default: ${TOKEN_ENV})",
    )


def connect(args: argparse.Namespace) -> Client:
    """A client for the command: --url, and --token or $VELOXSERVE_TOKEN (read by the client)."""
    return Client(args.url, token=args.token)


def emit(value: Any) -> None:
    """The answer as JSON on stdout: a result's `raw` (the server's JSON), or lists of them."""
    print(json.dumps(_plain(value), indent=2))


def _plain(value: Any) -> Any:
    if hasattr(value, "raw"):
        return dict(value.raw)
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def table(rows: Sequence[Sequence[Any]], header: Sequence[str]) -> str:
    """Rows as aligned text columns (None shown as '-'), the way people read `versions list`."""
    cells = [[str(h) for h in header]] + [["-" if c is None else str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in cells)


def versions_table(versions: Versions) -> str:
    def figure(value: Any) -> str | None:
        return None if value is None else f"{value:.4f}"

    rows = [
        (
            ("* " if v.version == versions.active_version else "  ") + v.version,
            v.status,
            (v.get("created_at") or "")[:19].replace("T", " ") or None,
            v.get("parent"),
            v.get("reason") or (v.get("source") and "file"),
            figure(v.get("heldout_rmse")),
            v.get("rows_trained"),
        )
        for v in versions.versions
    ]
    return table(rows, ("  VERSION", "STATUS", "CREATED", "PARENT", "REASON", "HELDOUT_RMSE", "ROWS"))


def run(work: Callable[[Client, argparse.Namespace], Any]) -> Callable[[argparse.Namespace], int]:
    def command(args: argparse.Namespace) -> int:
        from veloxserve.errors import VeloxError

        try:
            with connect(args) as client:
                out = work(client, args)
        except VeloxError as exc:
            return report_error(exc)
        if isinstance(out, str):
            print(out)
        else:
            emit(out)
        return 1 if isinstance(out, RetrainJob) and out.state == "failed" else 0  # `retrain --wait` that failed

    return command


def _predict(client: Client, a: argparse.Namespace) -> Any:
    return client.predict(a.model, a.user, a.item, text=a.text)


def _top_k(client: Client, a: argparse.Namespace) -> Any:
    candidates = None if a.candidates is None else [parse_id(c) for c in a.candidates.split(",") if c]
    return client.recommend(
        a.model,
        a.user,
        a.k,
        candidates=candidates,
        exclude_seen=a.exclude_seen,
        filter=a.filter,
        policy=a.policy,
        epsilon=a.epsilon,
        alpha=a.alpha,
    )


def _versions(client: Client, a: argparse.Namespace) -> Any:
    if a.versions_command == "list":
        listing = client.versions(a.model)
        return listing if a.json else versions_table(listing)
    if a.versions_command == "show":
        return client.version(a.model, a.version)
    return {"model": a.model, "active_version": client.activate(a.model, a.version)}


def _retrain(client: Client, a: argparse.Namespace) -> Any:
    return client.retrain(a.model, promote=a.promote, wait=a.wait)


def _policy(client: Client, a: argparse.Namespace) -> Any:
    changes: Mapping[str, Any] = {
        "every_observations": a.every_observations,
        "every_seconds": a.every_seconds,
        "drift": None if a.drift is None else a.drift == "on",
        "promote": a.promote,
        "drift_detector": a.drift_detector,
        "engine": a.engine,
        "spark_master": a.spark_master,
        "spark_start_timeout": a.spark_start_timeout,
    }
    changes = {k: v for k, v in changes.items() if v is not None}
    current = client.policy(a.model)
    if not changes:
        return current
    return client.set_policy(a.model, {**current.as_dict(), **changes})  # PUT replaces: keep what is not changed


def add_commands(sub: Any) -> None:
    """Register the commands on the `veloxserve` subparsers."""
    predict = sub.add_parser("predict", help="ask a running server for one score")
    predict.add_argument("--model", required=True)
    predict.add_argument("--user", required=True, type=parse_id)
    what = predict.add_mutually_exclusive_group(required=True)
    what.add_argument("--item", type=parse_id, help="an item of the catalogue")
    what.add_argument("--text", help="an item known by its text (content features)")
    predict.set_defaults(run=run(_predict))

    top_k = sub.add_parser("top-k", help="ask a running server for a user's k best items")
    top_k.add_argument("--model", required=True)
    top_k.add_argument("--user", required=True, type=parse_id)
    top_k.add_argument("-k", type=int, default=10, help="how many items")
    top_k.add_argument("--exclude-seen", action="store_true", help="leave out items the user has rated")
    top_k.add_argument("--policy", choices=POLICIES, help="exploration policy (default: greedy)")
    top_k.add_argument("--epsilon", type=float, help="epsilon_greedy's exploration rate (default: the server's)")
    top_k.add_argument("--alpha", type=float, help="linucb's confidence width (default: the server's)")
    top_k.add_argument("--filter", help="item attributes, e.g. genre:jazz|soul,decade:1960 (default: none)")
    top_k.add_argument("--candidates", help="comma-separated item ids to rank (default: the whole catalogue)")
    top_k.set_defaults(run=run(_top_k))

    observe = sub.add_parser("observe", help="report one observation to a running server")
    observe.add_argument("--model", required=True)
    observe.add_argument("--user", required=True, type=parse_id)
    observe.add_argument("--item", required=True, type=parse_id)
    observe.add_argument("--score", required=True, type=float)
    observe.add_argument("--id", help="idempotency key: retrying with the same id is acknowledged, not learned twice")
    observe.add_argument("--decision", help="the decision id of the top-k answer this observation answers")
    observe.set_defaults(
        run=run(lambda c, a: c.observe(a.model, a.user, a.item, a.score, decision=a.decision, id=a.id))
    )

    versions = sub.add_parser("versions", help="list, show, promote or roll back a model's versions (running server)")
    versions_sub = versions.add_subparsers(dest="versions_command", required=True, metavar="ACTION")
    listing = versions_sub.add_parser("list", help="every version with its status, as a table (--json: the answer)")
    listing.add_argument("--json", action="store_true", help="print the server's JSON instead of a table")
    show = versions_sub.add_parser("show", help="one version's metadata, lineage and status")
    activate = versions_sub.add_parser("activate", help="serve a version: promote a ready one or roll back")
    for p in (show, activate):
        p.add_argument("version", help="e.g. v3")

    retrain = sub.add_parser("retrain", help="retrain a running server's model from its base data and log")
    retrain.add_argument(
        "--promote", choices=PROMOTE, default="if_better", help="promote the new version if it beats the active one"
    )
    retrain.add_argument("--wait", action="store_true", help="wait for the retrain to finish and print its outcome")
    retrain.set_defaults(run=run(_retrain))

    policy = sub.add_parser("policy", help="show or set when a running server's model retrains by itself")
    policy.add_argument("--every-observations", type=int, help="retrain after this many new observations")
    policy.add_argument(
        "--every-seconds", type=float, help="retrain when this much time has passed (and feedback came)"
    )
    policy.add_argument("--drift", choices=["on", "off"], help="retrain when Page-Hinkley sees the live error rise")
    policy.add_argument("--promote", choices=PROMOTE)
    policy.add_argument(
        "--drift-detector",
        metavar="NAME",
        help="which detector triggers a drift retrain: page_hinkley, adwin, ddm or kswin (docs/monitoring.md)",
    )
    policy.add_argument("--engine", choices=["local", "spark"], help="who fits θ when the model retrains")
    policy.add_argument(
        "--spark-master", metavar="URL", help="with --engine spark: local[N], local[*] or spark://host:port"
    )
    policy.add_argument(
        "--spark-start-timeout",
        type=float,
        metavar="SECONDS",
        help="a spark:// master not ready for a retrain within this (default 60) fails it, naming the master",
    )
    policy.set_defaults(run=run(_policy))

    forget = sub.add_parser("forget", help="remove a user's data from a running server (one model or all)")
    forget.add_argument("--user", required=True, type=parse_id)
    forget.add_argument("--model", help="only this model (default: every model)")
    forget.set_defaults(run=run(lambda c, a: c.forget_user(a.user, a.model)))

    for p in (listing, show, activate):
        p.set_defaults(run=run(_versions))
    for p in (listing, show, activate, retrain, policy):
        p.add_argument("--model", required=True)
    for p in (predict, top_k, observe, listing, show, activate, retrain, policy, forget):
        connection_arguments(p)


def report_error(exc: Exception) -> int:
    """A client error on stderr: 1 for an error the server answered, 2 for no answer."""
    from veloxserve.errors import ServerUnreachable

    print(f"error: {type(exc).__name__}: {exc}", file=sys.stderr)
    return 2 if isinstance(exc, ServerUnreachable) else 1
