"""The `veloxserve` command: train, serve, a demo, and thin HTTP client commands."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

DEFAULT_HOME = "./veloxserve-home"
DEFAULT_URL = "http://127.0.0.1:8000"


def _id(text: str) -> str | int:
    """Command-line ids that look like integers are sent as JSON integers."""
    try:
        return int(text)
    except ValueError:
        return text


def _objective(text: str) -> tuple[str | None, float]:
    """`--objective-ms 50` (every model) or `--objective-ms catify=50`."""
    model, _, ms = text.rpartition("=")
    try:
        return model or None, float(ms)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected MS or MODEL=MS, got {text!r}") from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="veloxserve",
        description="Personalised predictions that learn online: score = σ(w_u · f(x; θ)).",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def home(p: argparse.ArgumentParser) -> None:
        p.add_argument("--home", default=DEFAULT_HOME, help=f"state directory (default {DEFAULT_HOME})")

    def net(p: argparse.ArgumentParser) -> None:
        p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
        p.add_argument("--port", type=int, default=8000, help="port to listen on (default 8000)")

    demo = sub.add_parser("demo", help="generate Catify, train on it, and serve it with example curl commands")
    home(demo)
    net(demo)
    demo.add_argument("--users", type=int, default=2000, help="Catify users (default 2000)")
    demo.add_argument("--songs", type=int, default=2000, help="Catify songs (default 2000)")
    demo.add_argument("--ratings", type=int, default=200_000, help="Catify ratings (default 200000)")
    demo.add_argument("--seed", type=int, default=0, help="Catify seed (default 0)")

    train = sub.add_parser(
        "train",
        help="train a new model version from a ratings file and make it active",
        description="Train a new version from every rating in the file and make it active. The held-out RMSE it "
        "reports comes from a separate fit without a random 10% of the ratings; the served version (θ "
        "and every user) is then fitted on all of them, so every user and item in the file is served "
        "(meta.json 'evaluation' says so). --engine spark still serves its 90% training split.",
    )
    home(train)
    train.add_argument(
        "--ratings",
        required=True,
        type=Path,
        help="CSV or Parquet (user,item,score[,timestamp]) or MovieLens u.data / ratings.dat",
    )
    train.add_argument("--model", required=True, help="model name, e.g. catify")
    train.add_argument(
        "--items",
        type=Path,
        help="item table (CSV or Parquet, 'item' column): attributes for top-k filters; a 'text' "
        "column also trains content features, to score items known only by their text",
    )
    train.add_argument("--rank", type=int, help="latent dimensions of f(x; θ)")
    train.add_argument("--reg", type=float, help="ridge regularisation of the item factors")
    train.add_argument("--prior-precision", type=float, help="ridge precision λ of the user prior")
    train.add_argument("--iterations", type=int, help="ALS sweeps")
    train.add_argument(
        "--link",
        choices=["identity", "logistic"],
        default="identity",
        help="σ: identity for ratings (default), logistic for 0/1 labels",
    )
    train.add_argument("--seed", type=int, help="random seed")
    train.add_argument(
        "--score-range",
        type=float,
        nargs=2,
        metavar=("LO", "HI"),
        help="scores observe accepts (default: the ratings' min and max widened by 10%% of their span)",
    )
    train.add_argument(
        "--engine",
        choices=["local", "spark"],
        default="local",
        help="local: compiled ALS on this machine (default); spark: Spark MLlib ALS",
    )
    train.add_argument(
        "--master",
        default="local[2]",
        help="Spark master URL with --engine spark (default local[2]; e.g. spark://host:7077)",
    )

    serve = sub.add_parser("serve", help="serve every model under --home over HTTP/JSON")
    home(serve)
    net(serve)
    serve.add_argument(
        "--store",
        default="lmdb",
        help="users' state: lmdb (embedded, one process per home; default) or "
        "redis://host:port/db[?prefix=name] (shared by several processes)",
    )
    serve.add_argument(
        "--instance",
        help="this process's id when several serve one home over Redis "
        "(its own log and lock; default: the home's main log)",
    )
    serve.add_argument(
        "--model-dir",
        action="append",
        default=[],
        type=Path,
        metavar="DIR",
        help="Clipper may deploy model files from DIR (repeatable) besides <home>/models-in/. "
        "Deploying a pickle or a torch file runs its code with the server's rights: give only "
        "directories that only trusted operators can write",
    )
    for p in (serve, demo):
        p.add_argument(
            "--no-auth",
            action="store_true",
            help="DANGEROUS, local development only: admin routes (retrain, activate, policy, forget, "
            "and Clipper's deploy, which runs model code) need no token",
        )
        p.add_argument(
            "--allow-remote-no-auth",
            action="store_true",
            help="with --no-auth, listen on a non-loopback --host anyway (refused without this)",
        )
        p.add_argument(
            "--require-key",
            action="append",
            default=[],
            metavar="MODEL",
            help="predict/top_k/observe on MODEL need a key (`token create --model MODEL`) or an admin "
            "token; repeat for several models, '*' for all (default: open)",
        )
        p.add_argument(
            "--objective-ms",
            action="append",
            default=[],
            type=_objective,
            metavar="[MODEL=]MS",
            help="latency objective: requests that cannot be served within it get 503 + Retry-After at once",
        )
        p.add_argument(
            "--max-in-flight",
            type=int,
            default=512,
            help="requests per model in flight (e.g. awaiting the log's fsync) before 503 (default 512)",
        )

    token = sub.add_parser("token", help="API tokens for admin routes and per-model keys (stored hashed under --home)")
    token_sub = token.add_subparsers(dest="token_command", required=True, metavar="ACTION")
    token_create = token_sub.add_parser("create", help="make a token and print it (its only copy)")
    token_create.add_argument("--name", default="", help="a label to recognise and revoke it by")
    token_create.add_argument("--model", help="a key for predict/top_k/observe on this model only (default: admin)")
    token_list = token_sub.add_parser("list", help="every token's id, name, scope and creation time")
    token_revoke = token_sub.add_parser("revoke", help="revoke a token by id, or every token with a name")
    token_revoke.add_argument("target", metavar="ID_OR_NAME")
    for p in (token_create, token_list, token_revoke):
        home(p)

    predict = sub.add_parser("predict", help="ask a running server for one score")
    predict.add_argument("--model", required=True)
    predict.add_argument("--user", required=True, type=_id)
    predict.add_argument("--item", required=True, type=_id)

    top_k = sub.add_parser("top-k", help="ask a running server for a user's k best items")
    top_k.add_argument("--model", required=True)
    top_k.add_argument("--user", required=True, type=_id)
    top_k.add_argument("-k", type=int, default=10, help="how many items (default 10)")
    top_k.add_argument("--exclude-seen", action="store_true", help="leave out items the user has rated")

    observe = sub.add_parser("observe", help="report one observation to a running server")
    observe.add_argument("--model", required=True)
    observe.add_argument("--user", required=True, type=_id)
    observe.add_argument("--item", required=True, type=_id)
    observe.add_argument("--score", required=True, type=float)
    observe.add_argument("--id", help="idempotency key: retrying with the same id is acknowledged, not learned twice")
    observe.add_argument("--decision", help="the decision id of the top-k answer this observation answers")

    log_cmd = sub.add_parser("log", help="the observation log as data")
    log_sub = log_cmd.add_subparsers(dest="log_command", required=True, metavar="ACTION")
    export = log_sub.add_parser("export", help="write a model's logged observations as Parquet partitioned by date")
    home(export)
    export.add_argument("--model", required=True)
    export.add_argument("--out", required=True, type=Path, help="output directory (date=YYYY-MM-DD/*.parquet)")
    export.add_argument("--after-lsn", type=int, default=0, help="only observations after this log position")

    versions = sub.add_parser("versions", help="list, show, promote or roll back a model's versions (running server)")
    versions_sub = versions.add_subparsers(dest="versions_command", required=True, metavar="ACTION")
    listing = versions_sub.add_parser("list", help="every version with its status")
    show = versions_sub.add_parser("show", help="one version's metadata, lineage and status")
    activate = versions_sub.add_parser("activate", help="serve a version: promote a ready one or roll back")
    for p in (show, activate):
        p.add_argument("version", help="e.g. v3")

    retrain = sub.add_parser("retrain", help="retrain a running server's model from its base data and log")
    retrain.add_argument(
        "--promote",
        choices=["if_better", "always", "never"],
        default="if_better",
        help="promote the new version if it beats the active one (default), always, or never",
    )
    retrain.add_argument("--wait", action="store_true", help="wait for the retrain to finish and print its outcome")

    policy = sub.add_parser("policy", help="show or set when a running server's model retrains by itself")
    policy.add_argument("--every-observations", type=int, help="retrain after this many new observations")
    policy.add_argument(
        "--every-seconds", type=float, help="retrain when this much time has passed (and feedback came)"
    )
    policy.add_argument("--drift", choices=["on", "off"], help="retrain when Page-Hinkley sees the live error rise")
    policy.add_argument("--promote", choices=["if_better", "always", "never"])

    forget = sub.add_parser("forget", help="remove a user's data from a running server (one model or all)")
    forget.add_argument("--user", required=True, type=_id)
    forget.add_argument("--model", help="only this model (default: every model)")

    from veloxserve.clipper.cli import add_commands as add_clipper_commands

    add_clipper_commands(sub, DEFAULT_URL)
    from veloxserve.pipelines.cli import add_commands as add_pipeline_commands

    add_pipeline_commands(sub, DEFAULT_URL)
    for p in (listing, show, activate, retrain, policy):
        p.add_argument("--model", required=True)
    for client in (predict, top_k, observe, listing, show, activate, retrain, policy, forget):
        client.add_argument("--url", default=DEFAULT_URL, help=f"server address (default {DEFAULT_URL})")
        client.add_argument("--token", help="API token for admin routes or a model key (default: $VELOXSERVE_TOKEN)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if getattr(args, "token", False) is None:  # a client command: the environment is read here only
        args.token = os.environ.get("VELOXSERVE_TOKEN")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per request is noise here
    from veloxserve.errors import VeloxError

    try:
        if hasattr(args, "clipper_run"):
            return args.clipper_run(args)
        return _COMMANDS[args.command](args)
    except VeloxError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 2


def _train(args: argparse.Namespace) -> int:
    from veloxserve.config import HomeLayout
    from veloxserve.serving.velox import check_model_name
    from veloxserve.storage.version_catalog import VersionCatalog
    from veloxserve.training.trainer import config_from, train_version

    layout = HomeLayout(Path(args.home))
    name = check_model_name(args.model)
    overrides = {key: getattr(args, key) for key in ("rank", "reg", "prior_precision", "iterations", "seed")}
    if args.engine == "spark" and args.items is not None:
        print("error: --items (filters, content features) needs --engine local for now", file=sys.stderr)
        return 2
    if args.engine == "spark":
        from veloxserve.training.spark_als import train_version_spark

        meta = train_version_spark(layout, name, args.ratings, config_from(overrides), master=args.master)
    else:
        meta = train_version(
            layout,
            name,
            args.ratings,
            config_from(overrides),
            link=args.link,
            items=args.items,
            progress=True,
            score_range=args.score_range,
        )
    VersionCatalog(layout.model_dir(name)).activate(meta["version"])
    print(json.dumps(meta, indent=2))
    return 0


def _refuse_remote_no_auth(args: argparse.Namespace) -> bool:
    """--no-auth on a non-loopback --host opens the admin routes to the network: refuse unless forced."""
    if not args.no_auth or args.allow_remote_no_auth or _is_loopback(args.host):
        return False
    print(
        f"error: --no-auth on --host {args.host} would let anyone who can reach it retrain, activate, change "
        "policies and erase users. Serve on 127.0.0.1 (the default), drop --no-auth and use tokens "
        "(`veloxserve token create`), or add --allow-remote-no-auth if you really mean it.",
        file=sys.stderr,
        flush=True,
    )
    return True


def _is_loopback(host: str) -> bool:
    """Whether `host` only listens on this machine: a loopback address or "localhost"."""
    import ipaddress

    if host.lower() in ("localhost", "localhost."):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:  # a host name: it may resolve to anything
        return False


def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    from veloxserve.api import create_app
    from veloxserve.api.auth import AuthConfig
    from veloxserve.serving.admission import AdmissionConfig
    from veloxserve.serving.velox import Velox

    if _refuse_remote_no_auth(args):
        return 2
    objectives = dict(args.objective_ms)
    admission = AdmissionConfig(
        max_in_flight=args.max_in_flight, default_objective_ms=objectives.pop(None, None), objectives_ms=objectives
    )
    auth = AuthConfig(enabled=not args.no_auth, keyed_models=frozenset(args.require_key))
    store = None
    if getattr(args, "store", "lmdb") != "lmdb":  # `demo` serves the embedded store
        from veloxserve.storage.redis_client import RedisSettings
        from veloxserve.storage.redis_store import RedisUserStore

        store = RedisUserStore(RedisSettings.from_url(args.store))
    velox = Velox(
        args.home, store=store, instance=getattr(args, "instance", None), home_lock=getattr(args, "home_lock", None)
    )
    try:
        app = create_app(velox, auth=auth, admission=admission, model_dirs=getattr(args, "model_dir", []))
        config = uvicorn.Config(
            app,
            host=args.host,
            port=args.port,
            access_log=False,
            log_level="warning",
            http="httptools",
            loop="uvloop",
            lifespan="on",  # lifespan starts Clipper's containers
        )
        server = uvicorn.Server(config)
        if args.no_auth:
            print(
                "WARNING: --no-auth: anyone who can reach this port can retrain, activate, change policies, "
                "erase users and deploy model files (running their code). Local development only.",
                file=sys.stderr,
                flush=True,
            )
        elif not app.guard.tokens.has_admin():
            print(
                f"note: no admin token yet; admin routes answer 401 until you run "
                f"`veloxserve token create --home {args.home}`",
                file=sys.stderr,
                flush=True,
            )
        print(f"serving {', '.join(velox.model_names()) or 'no models'} on http://{args.host}:{args.port}", flush=True)
        listen = getattr(args, "listen_socket", None)  # `demo` bound the port before changing anything
        server.run(sockets=[listen] if listen is not None else None)
    finally:
        velox.close()
    return 0


def _demo(args: argparse.Namespace) -> int:
    from veloxserve.config import HomeLayout
    from veloxserve.training.als import ALSConfig

    if _refuse_remote_no_auth(args):  # before training, not after
        return 2
    # Catify is denser and less noisy than MovieLens: lighter regularisation fits it best.
    catify_config = ALSConfig(rank=8, reg=1.0, prior_precision=1.0, iterations=10)
    layout = HomeLayout(Path(args.home))
    # Before changing anything: a demo already serving this home (or anything on the port) must
    # keep its data, versions and token.
    # Both stay held and are handed to the server: no window for another process to take them.
    args.listen_socket = _bind(args.host, args.port)
    try:
        args.home_lock = _lock_home(layout)
    except BaseException:
        args.listen_socket.close()
        raise
    try:
        _prepare_demo(args, layout, catify_config)
    except BaseException:
        args.listen_socket.close()
        args.home_lock.release()
        raise
    return _serve(args)


def _bind(host: str, port: int) -> Any:
    """A listening socket on host:port, or a Conflict that says what to do."""
    import socket

    from veloxserve.errors import Conflict

    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does: TIME_WAIT is no owner
        sock.bind((host, port))
        sock.listen(2048)
    except OSError as exc:
        sock.close()
        raise Conflict(
            f"Cannot listen on {host}:{port}: {exc.strerror or exc}. Another process (perhaps a "
            f"running demo) has the port; stop it, or pass another --port. Nothing was changed.",
            field="port",
        ) from None
    return sock


def _lock_home(layout: Any) -> Any:
    from veloxserve.errors import Conflict
    from veloxserve.storage.home_lock import HomeLock

    layout.root.mkdir(parents=True, exist_ok=True)
    try:
        return HomeLock(layout.root / ".lock")
    except Conflict as exc:
        raise Conflict(
            f"{exc.message} A second demo needs its own --home (and --port). Nothing was changed.", field="home"
        ) from None


def _prepare_demo(args: argparse.Namespace, layout: Any, catify_config: Any) -> None:
    """Generate Catify, train and activate it, print the commands to try (and a demo token)."""
    import pyarrow as pa
    import pyarrow.csv as pacsv

    from veloxserve.storage.version_catalog import VersionCatalog
    from veloxserve.training.catify import catify_items, generate_catify
    from veloxserve.training.ratings import write_ratings_csv
    from veloxserve.training.trainer import train_version

    data_path = layout.root / "data" / f"catify-seed{args.seed}.csv"
    data = generate_catify(n_users=args.users, n_items=args.songs, n_ratings=args.ratings, seed=args.seed)
    data_path.parent.mkdir(parents=True, exist_ok=True)
    write_ratings_csv(data.ratings, data_path)
    items_path = data_path.with_name(f"catify-seed{args.seed}-songs.csv")  # genre and a description per song
    items = catify_items(data, seed=args.seed)
    pacsv.write_csv(pa.table(items), items_path)
    print(f"Catify: {len(data.ratings)} ratings by {args.users} users of {args.songs} songs -> {data_path}")
    meta = train_version(layout, "catify", data_path, catify_config, items=items_path, progress=True)
    VersionCatalog(layout.model_dir("catify")).activate(meta["version"])
    print(
        f"trained catify {meta['version']}: held-out RMSE {meta['heldout_rmse']:.3f} "
        f"(planted noise {data.noise}), {meta['train_seconds']:.2f} s"
    )
    base = f"http://{args.host}:{args.port}/models/catify"
    user, song = data.ratings.users[0], data.ratings.items[0]
    print("\nTry, in another terminal:\n")
    print(f"  curl '{base}/predict?user={user}&item={song}'")
    print(f"  curl '{base}/top_k?user={user}&k=5&exclude_seen=true&filter=genre:jazz|soul'")
    words = "+".join(items["text"][int(song)].split()[:12])
    print(f"  curl '{base}/predict?user={user}&text={words}'")
    print(
        f"  curl -X POST {base}/observe -H 'content-type: application/json' "
        f'-d \'{{"user": {user}, "item": {song}, "score": 5.0}}\'\n'
    )
    if not args.no_auth:
        from veloxserve.storage.tokens import TokenStore

        tokens = TokenStore(layout.tokens_file)
        tokens.revoke("demo")  # one demo token at a time
        token = tokens.create(name="demo")
        print("Admin routes (retrain, versions activate, policy, forget) need this token, shown once:\n")
        print(f"  export VELOXSERVE_TOKEN={token}")
        print("  .venv/bin/veloxserve retrain --model catify --wait")
        print(f"  # or: curl -X POST {base}/retrain -H 'authorization: Bearer {token}'\n")


def _client(args: argparse.Namespace, method: str, path: str, **kwargs: Any) -> int:
    """One request to a running server; `path` is under /models/{model}/ unless it starts with '/'."""
    import httpx

    url = f"{args.url}{path}" if path.startswith("/") else f"{args.url}/models/{args.model}/{path}"
    try:
        response = httpx.request(method, url, timeout=kwargs.pop("timeout", 30), headers=_auth(args), **kwargs)
    except httpx.HTTPError as exc:
        print(f"error: cannot reach {args.url}: {exc}. Is `veloxserve serve` running?", file=sys.stderr)
        return 2
    print(json.dumps(response.json(), indent=2))
    return 0 if response.is_success else 1


def _auth(args: argparse.Namespace) -> dict[str, str]:
    return {"authorization": f"Bearer {args.token}"} if args.token else {}


def _token(args: argparse.Namespace) -> int:
    from veloxserve.config import HomeLayout
    from veloxserve.storage.tokens import ADMIN, TokenStore

    tokens = TokenStore(HomeLayout(Path(args.home)).tokens_file)
    if args.token_command == "create":
        print(tokens.create(name=args.name, scope=ADMIN if args.model is None else f"model:{args.model}"))
        print(
            "Shown once: only its hash is stored. Send it as 'Authorization: Bearer <token>' "
            "or set VELOXSERVE_TOKEN for the CLI.",
            file=sys.stderr,
        )
        return 0
    if args.token_command == "list":
        print(json.dumps([record.public() for record in tokens.records()], indent=2))
        return 0
    revoked = tokens.revoke(args.target)
    if not revoked:
        print(f"error: no token with id or name {args.target!r}", file=sys.stderr)
        return 2
    print(json.dumps({"revoked": revoked}))
    return 0


def _log(args: argparse.Namespace) -> int:
    from veloxserve.config import HomeLayout
    from veloxserve.storage.log_export import export_parquet

    layout = HomeLayout(Path(args.home))
    if not layout.log_dir(args.model).is_dir():
        print(f"error: model {args.model!r} has no observation log under {layout.root}", file=sys.stderr)
        return 2
    print(json.dumps(export_parquet(layout.log_dir(args.model), args.out, after_lsn=args.after_lsn), indent=2))
    return 0


def _versions(args: argparse.Namespace) -> int:
    if args.versions_command == "list":
        return _client(args, "GET", "versions")
    if args.versions_command == "show":
        return _client(args, "GET", f"versions/{args.version}")
    return _client(args, "POST", f"versions/{args.version}/activate", timeout=600)


def _retrain(args: argparse.Namespace) -> int:
    if not args.wait:
        return _client(args, "POST", "retrain", json={"promote": args.promote})
    import time

    import httpx

    code = _client(args, "POST", "retrain", json={"promote": args.promote})
    while code == 0:
        job = httpx.get(f"{args.url}/models/{args.model}/retrain", timeout=30, headers=_auth(args)).json()["retrain"]
        if job["state"] != "running":
            print(json.dumps(job, indent=2))
            return 0 if job["state"] != "failed" else 1
        time.sleep(0.5)
    return code


def _policy(args: argparse.Namespace) -> int:
    changes = {
        "every_observations": args.every_observations,
        "every_seconds": args.every_seconds,
        "drift": None if args.drift is None else args.drift == "on",
        "promote": args.promote,
    }
    changes = {k: v for k, v in changes.items() if v is not None}
    if not changes:
        return _client(args, "GET", "policy")
    import httpx

    try:
        current = httpx.get(f"{args.url}/models/{args.model}/policy", timeout=30, headers=_auth(args)).json()["policy"]
    except (httpx.HTTPError, KeyError):
        return _client(args, "GET", "policy")  # prints the reason
    return _client(args, "PUT", "policy", json={**current, **changes})


def _forget(args: argparse.Namespace) -> int:
    path = f"/users/{args.user}" if args.model is None else f"/models/{args.model}/users/{args.user}"
    return _client(args, "DELETE", path, timeout=600)


_COMMANDS = {
    "versions": _versions,
    "retrain": _retrain,
    "policy": _policy,
    "forget": _forget,
    "demo": _demo,
    "train": _train,
    "serve": _serve,
    "log": _log,
    "token": _token,
    "predict": lambda a: _client(a, "GET", "predict", params={"user": a.user, "item": a.item}),
    "top-k": lambda a: _client(a, "GET", "top_k", params={"user": a.user, "k": a.k, "exclude_seen": a.exclude_seen}),
    "observe": lambda a: _client(
        a,
        "POST",
        "observe",
        json={
            "user": a.user,
            "item": a.item,
            "score": a.score,
            **{k: v for k, v in (("id", a.id), ("decision", a.decision)) if v is not None},
        },
    ),
}

if __name__ == "__main__":
    sys.exit(main())
