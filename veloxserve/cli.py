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


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """`--help` shows every option's default, unless its help already says it (or it has none)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        field = getattr(action, "als_field", None)
        if field is not None:  # `train`'s hyperparameters: None on the command line means ALSConfig's default
            from veloxserve.training.als import ALSConfig

            return f"{text} (default: {getattr(ALSConfig(), field)})"
        if "default" in text or action.default in (None, False, argparse.SUPPRESS) or action.required:
            return text
        return super()._get_help_string(action)


class _Parser(argparse.ArgumentParser):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", _HelpFormatter)
        super().__init__(*args, **kwargs)


def _columns(text: str) -> dict[str, str]:
    """`--columns user=uid,item=iid,score=rating`: the file's names of the ratings' columns."""
    mapping = {}
    for pair in filter(None, text.split(",")):
        name, sep, column = pair.partition("=")
        if not sep or not name or not column:
            raise argparse.ArgumentTypeError(f"expected NAME=COLUMN[,NAME=COLUMN...], got {pair!r} in {text!r}")
        mapping[name.strip()] = column.strip()
    return mapping


def _objective(text: str) -> tuple[str | None, float]:
    """`--objective-ms 50` (every model) or `--objective-ms catify=50`."""
    model, _, ms = text.rpartition("=")
    try:
        return model or None, float(ms)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected MS or MODEL=MS, got {text!r}") from None


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="veloxserve",
        description="Personalised predictions that learn online: score = σ(w_u · f(x; θ)).",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    from veloxserve.serving.admission import AdmissionConfig
    from veloxserve.settings import HTTP_SERVERS, ServerSettings

    server = ServerSettings()

    def home(p: argparse.ArgumentParser) -> None:
        p.add_argument("--home", default=DEFAULT_HOME, help="state directory")

    def settings_flag(p: argparse.ArgumentParser, *names: str, help: str, default: Any, **kwargs: Any) -> None:
        """A flag of serve/demo that overrides the config file: absent unless given (SUPPRESS), its
        default (the settings object's) stated in the help."""
        shown = f" (default: {default})" if default not in (None, False, (), []) else ""
        p.add_argument(*names, default=argparse.SUPPRESS, help=help + shown, **kwargs)

    def net(p: argparse.ArgumentParser) -> None:
        settings_flag(p, "--home", help="state directory", default=DEFAULT_HOME)
        settings_flag(p, "--host", help="address to listen on", default=server.host)
        settings_flag(p, "--port", type=int, help="port to listen on", default=server.port)
        settings_flag(
            p,
            "--http-server",
            choices=HTTP_SERVERS,
            help="HTTP server that runs the app (docs/deployment.md#http-server)",
            default=server.http_server,
        )

    demo = sub.add_parser("demo", help="generate Catify, train on it, and serve it with example curl commands")
    net(demo)
    demo.add_argument("--users", type=int, default=2000, help="Catify users")
    demo.add_argument("--songs", type=int, default=2000, help="Catify songs")
    demo.add_argument("--ratings", type=int, default=200_000, help="Catify ratings")
    demo.add_argument("--seed", type=int, default=0, help="Catify seed")

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
    train.add_argument(
        "--columns",
        type=_columns,
        metavar="NAME=COLUMN,...",
        help="the file's names of the columns, e.g. user=uid,item=iid,score=rating[,timestamp=ts] "
        "(default: user,item,score,timestamp)",
    )
    train.add_argument("--json", action="store_true", help="print the new version's meta.json instead of a summary")
    train.add_argument("--model", required=True, help="model name, e.g. catify")
    train.add_argument(
        "--items",
        type=Path,
        help="item table (CSV or Parquet, 'item' column): attributes for top-k filters; a 'text' "
        "column also trains content features, to score items known only by their text",
    )
    # Training's defaults come from ALSConfig when help is shown (importing it at parse time costs numba).
    for flag, kind, text in (
        ("--rank", int, "latent dimensions of f(x; θ)"),
        ("--reg", float, "ridge regularisation of the item factors"),
        ("--prior-precision", float, "ridge precision λ of the user prior"),
        ("--iterations", int, "ALS sweeps"),
        ("--seed", int, "random seed"),
    ):
        train.add_argument(flag, type=kind, help=text).als_field = flag[2:].replace("-", "_")  # type: ignore[attr-defined]
    train.add_argument(
        "--link",
        choices=["identity", "logistic"],
        default="identity",
        help="σ: identity for ratings, logistic for 0/1 labels",
    )
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
        help="local: compiled ALS on this machine; spark: Spark MLlib ALS",
    )
    train.add_argument(
        "--master",
        default="local[2]",
        help="Spark master URL with --engine spark, e.g. spark://host:7077",
    )
    train.add_argument(
        "--basis",
        metavar="METHOD:WHAT",
        help="a Shared Basis of black-box feature models instead of ALS (docs/personalise-any-model.md): "
        "oracle-mtl:sklearn.linear_model.Ridge (any estimator class with sample weights), "
        "multilevel:CLASS, first-order:module.pt (torch.save of a module) or fixed:model.onnx|model.pkl; needs --items",
    )
    train.add_argument(
        "--basis-inputs", default="text", help="item-table columns f reads: text, or COL,COL,... numeric"
    )
    train.add_argument("--basis-k", type=int, default=8, help="basis functions f_1..f_k (oracle-mtl, first-order)")
    train.add_argument("--basis-params", help="JSON keyword arguments of the oracle-mtl estimator class")

    serve = sub.add_parser(
        "serve",
        help="serve every model under --home over HTTP/JSON",
        description="Serve every model under the home over HTTP/JSON. Every setting can be given in a TOML file "
        "(--config; see docs/configuration.md); a flag overrides the file's value of its key.",
    )
    serve.add_argument(
        "--config", type=Path, metavar="FILE", help="TOML settings: [server], [auth], [admission], [serving]"
    )
    net(serve)
    settings_flag(
        serve,
        "--store",
        help="users' state: lmdb (embedded, one process per home) or redis://host:port/db[?prefix=name] "
        "(shared by several processes)",
        default=server.store,
    )
    settings_flag(
        serve,
        "--instance",
        help="this process's id when several serve one home over Redis "
        "(its own log and lock; default: the home's main log)",
        default=None,
    )
    serve.add_argument(
        "--workers",
        type=int,
        default=1,
        help="processes serving the home on one port (embedded store only): worker 0 learns and logs, the "
        "others answer predict and top-k from what it publishes and forward the rest (docs/deployment.md)",
    )
    # set by the supervisor for each worker (workers.py)
    serve.add_argument("--worker-index", type=int, default=None, help=argparse.SUPPRESS)
    serve.add_argument("--worker0-socket", default=None, help=argparse.SUPPRESS)
    settings_flag(
        serve,
        "--model-dir",
        action="append",
        type=Path,
        metavar="DIR",
        help="Clipper may deploy model files from DIR (repeatable) besides <home>/models-in/. "
        "Deploying a pickle or a torch file runs its code with the server's rights: give only "
        "directories that only trusted operators can write",
        default=None,
    )
    for p in (serve, demo):
        settings_flag(
            p,
            "--no-auth",
            action="store_true",
            help="DANGEROUS, local development only: admin routes (retrain, activate, policy, forget, "
            "and Clipper's deploy, which runs model code) need no token",
            default=None,
        )
        settings_flag(
            p,
            "--allow-remote-no-auth",
            action="store_true",
            help="with --no-auth, listen on a non-loopback --host anyway (refused without this)",
            default=None,
        )
        settings_flag(
            p,
            "--require-key",
            action="append",
            metavar="MODEL",
            help="predict/top_k/observe on MODEL need a key (`token create --model MODEL`) or an admin "
            "token; repeat for several models, '*' for all (default: open)",
            default=None,
        )
        settings_flag(
            p,
            "--objective-ms",
            action="append",
            type=_objective,
            metavar="[MODEL=]MS",
            help="latency objective: requests that cannot be served within it get 503 + Retry-After at once "
            "(default: none)",
            default=None,
        )
        settings_flag(
            p,
            "--max-in-flight",
            type=int,
            help="requests per model in flight (e.g. awaiting the log's fsync) before 503",
            default=AdmissionConfig().max_in_flight,
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

    log_cmd = sub.add_parser("log", help="the observation log as data")
    log_sub = log_cmd.add_subparsers(dest="log_command", required=True, metavar="ACTION")
    export = log_sub.add_parser("export", help="write a model's logged observations as Parquet partitioned by date")
    home(export)
    export.add_argument("--model", required=True)
    export.add_argument("--out", required=True, type=Path, help="output directory (date=YYYY-MM-DD/*.parquet)")
    export.add_argument("--after-lsn", type=int, default=0, help="only observations after this log position")

    from veloxserve.client.cli import add_commands as add_client_commands
    from veloxserve.clipper.cli import add_commands as add_clipper_commands

    # The command groups, one line each: predict, top-k, observe, versions, retrain, policy, forget;
    # Clipper's container, deploy, list, scale, rollback, remove, app.
    add_client_commands(sub)
    add_clipper_commands(sub, DEFAULT_URL)
    from veloxserve.pipelines.cli import add_commands as add_pipeline_commands
    from veloxserve.training.onnx_export import add_command as add_export_onnx

    add_pipeline_commands(sub, DEFAULT_URL)
    add_export_onnx(sub, home)
    return parser


def main(argv: list[str] | None = None) -> int:
    try:
        return _main(argv)
    except BrokenPipeError:
        # `veloxserve ... | head -1`: the reader has gone. Nothing more can be said on stdout, so say
        # nothing: point it at /dev/null so the interpreter's final flush does not fail again.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 141  # as a shell reports a command ended by SIGPIPE


def _main(argv: list[str] | None) -> int:
    args = build_parser().parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # `serve --workers N` gives it to each worker
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per request is noise here
    from veloxserve.errors import VeloxError

    try:
        run = getattr(args, "run", None) or getattr(args, "clipper_run", None) or _COMMANDS[args.command]
        code = run(args)
        sys.stdout.flush()  # here, where a closed pipe is handled, not at exit
        return int(code)
    except VeloxError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 2


def _train_basis(args: argparse.Namespace, layout: Any, name: str) -> dict[str, Any] | None:
    """`train --basis`: a black-box basis version (training/basis_trainer.py); None: refused."""
    from veloxserve.training.basis_trainer import recipe_from_spec, train_basis_version
    from veloxserve.training.oracle_mtl import OracleConfig

    if args.items is None:
        print("error: --basis needs --items, the item table holding the inputs f reads", file=sys.stderr)
        return None
    recipe = recipe_from_spec(args.basis, args.basis_inputs, name=name, params=args.basis_params)
    settings = {
        "k": args.basis_k,
        "iterations": args.iterations,
        "seed": args.seed,
        "prior_precision": args.prior_precision,
    }
    config = OracleConfig(**{key: value for key, value in settings.items() if value is not None})
    ratings = args.ratings
    if args.columns:
        from veloxserve.training.ratings import load_ratings

        ratings = load_ratings(args.ratings, args.columns)
    return train_basis_version(
        layout, name, ratings, items=args.items, recipe=recipe, config=config, score_range=args.score_range
    )


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
    if args.basis is not None:
        basis_meta = _train_basis(args, layout, name)
        if basis_meta is None:
            return 2
        meta = basis_meta
    elif args.engine == "spark":
        from veloxserve.training.ratings import load_ratings
        from veloxserve.training.spark_als import train_version_spark

        ratings = load_ratings(args.ratings, args.columns) if args.columns else args.ratings
        meta = train_version_spark(layout, name, ratings, config_from(overrides), master=args.master)
    else:
        meta = train_version(
            layout,
            name,
            args.ratings,
            config_from(overrides),
            link=args.link,
            items=args.items,
            progress=True,  # a tqdm bar on a terminal only (tqdm's disable=None)
            score_range=args.score_range,
            columns=args.columns,
        )
    VersionCatalog(layout.model_dir(name)).activate(meta["version"])
    print(json.dumps(meta, indent=2, default=str) if args.json else _summary(meta, args))
    return 0


def _summary(meta: dict[str, Any], args: argparse.Namespace) -> str:
    """What a person wants after `train`: which version, how good, how long; then where the rest is."""

    def figure(key: str) -> str:
        value = meta.get(key)
        return "-" if value is None else f"{value:.4f}"

    return (
        f"trained {meta['model']} {meta['version']} (now active): {meta.get('rows_trained', '?')} ratings, "
        f"{meta.get('n_users', '?')} users, {meta.get('n_items', '?')} items, rank {meta.get('rank', '?')}\n"
        f"  held-out RMSE {figure('heldout_rmse')}, training RMSE {figure('train_rmse')}, "
        f"{meta.get('train_seconds', 0):.1f} s ({meta.get('engine', 'local')})\n"
        f"  details: {Path(args.home) / 'models' / meta['model'] / 'versions' / meta['version'] / 'meta.json'} "
        f"(or `train --json`)"
    )


def _settings(args: argparse.Namespace) -> Any:
    """serve/demo: the config file (--config), then the flags given on the command line."""
    from veloxserve.settings import load_settings

    given = vars(args)
    server = {key: given[flag] for key, flag in _SERVER_FLAGS if flag in given}
    if "model_dir" in given:
        server["model_dirs"] = tuple(given["model_dir"])
    auth: dict[str, Any] = {}
    if given.get("no_auth"):
        auth["enabled"] = False
    if given.get("allow_remote_no_auth"):
        auth["allow_remote_no_auth"] = True
    if "require_key" in given:
        auth["keyed_models"] = tuple(given["require_key"])
    admission: dict[str, Any] = {}
    if "max_in_flight" in given:
        admission["max_in_flight"] = given["max_in_flight"]
    if "objective_ms" in given:
        objectives = dict(given["objective_ms"])
        if None in objectives:
            admission["default_objective_ms"] = objectives.pop(None)
        if objectives:
            admission["objectives_ms"] = objectives
    overrides = {"server": server, "auth": auth, "admission": admission}
    return load_settings(getattr(args, "config", None), overrides)


_SERVER_FLAGS = (
    ("home", "home"),
    ("host", "host"),
    ("port", "port"),
    ("store", "store"),
    ("instance", "instance"),
    ("http_server", "http_server"),
)


def _refuse_remote_no_auth(settings: Any) -> bool:
    """No auth on a non-loopback host opens the admin routes to the network: refuse unless forced."""
    host = settings.server.host
    if settings.auth.enabled or settings.auth.allow_remote_no_auth or _is_loopback(host):
        return False
    print(
        f"error: --no-auth on --host {host} would let anyone who can reach it retrain, activate, change "
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
    from veloxserve.api import create_app
    from veloxserve.api.auth import AuthConfig
    from veloxserve.api.forwarding import tag_worker
    from veloxserve.api.http_server import HTTPServer, serve
    from veloxserve.clipper.frontends import Frontend
    from veloxserve.serving.velox import Velox

    settings = getattr(args, "settings", None) or _settings(args)
    if _refuse_remote_no_auth(settings):
        return 2
    server_settings, no_auth = settings.server, not settings.auth.enabled
    index = getattr(args, "worker_index", None)
    if index is None and getattr(args, "workers", 1) != 1:
        return _supervise(args, server_settings)
    if index is not None and index > 0:
        return _serve_reader(args, settings, index)
    auth = AuthConfig(enabled=settings.auth.enabled, keyed_models=frozenset(settings.auth.keyed_models))
    store = None
    if server_settings.store != "lmdb":
        from veloxserve.storage.redis_client import RedisSettings
        from veloxserve.storage.redis_store import RedisUserStore

        store = RedisUserStore(RedisSettings.from_url(server_settings.store))
    home = server_settings.home
    published = sketches = None
    if index is not None:  # worker 0 of `serve --workers N`: it publishes for the readers, reports for them
        from veloxserve.storage.published_states import PublishedStates
        from veloxserve.storage.sketch_files import SketchFiles
        from veloxserve.workers import published_path, sketches_path

        published = PublishedStates(published_path(args.worker0_socket))
        sketches = SketchFiles(sketches_path(args.worker0_socket))
    velox = Velox(
        home,
        config=settings.serving,
        store=store,
        instance=server_settings.instance,
        home_lock=getattr(args, "home_lock", None),
        published=published,
        sketches=sketches,
    )
    try:
        frontend = None if index is None else Frontend(0, args.workers)  # worker 0: the Clipper owner
        app = create_app(
            velox, auth=auth, admission=settings.admission, model_dirs=server_settings.model_dirs, frontend=frontend
        )
        if no_auth:
            print(
                "WARNING: --no-auth: anyone who can reach this port can retrain, activate, change policies, "
                "erase users and deploy model files (running their code). Local development only.",
                file=sys.stderr,
                flush=True,
            )
        elif not app.guard.tokens.has_admin():
            print(
                f"note: no admin token yet; admin routes answer 401 until you run "
                f"`veloxserve token create --home {home}`",
                file=sys.stderr,
                flush=True,
            )
        served = ", ".join(velox.model_names()) or "no models"
        print(f"serving {served} on http://{server_settings.host}:{server_settings.port}", flush=True)
        base = f"http://{server_settings.host}:{server_settings.port}"
        print(f"dashboard: {base}/dashboard, API docs: {base}/docs", flush=True)
        listen = getattr(args, "listen_socket", None)  # `demo` bound the port before changing anything
        if index is not None:  # worker 0: the supervisor's port, and the readers' Unix socket
            app = tag_worker(app, index)
            sockets = [
                _bind(server_settings.host, server_settings.port, shared=True),
                _unix_listener(args.worker0_socket),
            ]
        else:
            sockets = [listen] if listen is not None else []
        serve(app, server_settings.host, server_settings.port, HTTPServer(server_settings.http_server), sockets)
    finally:
        velox.close()
    return 0


def _supervise(args: argparse.Namespace, server: Any) -> int:
    """`serve --workers N`: bind the port once and run N workers over it (veloxserve/workers.py)."""
    from veloxserve.errors import invalid_parameter
    from veloxserve.workers import MAX_WORKERS, Supervisor

    if not 1 <= args.workers <= MAX_WORKERS:
        raise invalid_parameter("workers", "serve", f"an int in [1, {MAX_WORKERS}]", args.workers)
    if server.store != "lmdb":
        raise invalid_parameter(
            "workers", "serve", "1 with a shared store: run one `serve --instance ID` per core over Redis instead", 2
        )
    if server.http_server != "uvicorn":
        raise invalid_parameter(
            "workers", "serve", "1 with --http-server granian (worker 0 listens on two sockets): drop one", 2
        )
    held = _bind(server.host, server.port, shared=True, listen=False)
    port = held.getsockname()[1]
    print(f"serving {server.home} on http://{server.host}:{port} with {args.workers} workers", flush=True)
    return Supervisor(args.argv, args.workers, held).run()


def _serve_reader(args: argparse.Namespace, settings: Any, index: int) -> int:
    """Worker `index` > 0 of `serve --workers N`: accept on the shared port, answer predictions from
    the weights worker 0 publishes, forward everything else to worker 0 (api/forwarding.py)."""
    from typing import cast

    from veloxserve.api.app import VeloxApp
    from veloxserve.api.auth import AuthConfig
    from veloxserve.api.forwarding import Forwarder, ReaderApp, tag_worker
    from veloxserve.api.http_server import HTTPServer, serve
    from veloxserve.clipper.frontends import Frontend
    from veloxserve.clipper.runtime import ClipperRuntime
    from veloxserve.serving.reader import Readers
    from veloxserve.serving.velox import Velox
    from veloxserve.storage.sketch_files import SketchFiles
    from veloxserve.storage.tokens import TokenStore
    from veloxserve.workers import published_path, sketches_path

    server = settings.server
    readers = Readers(
        server.home,
        published_path(args.worker0_socket),
        settings.serving,
        instance=f"worker-{index}",
        sketches=SketchFiles(sketches_path(args.worker0_socket)),
    )
    auth = AuthConfig(enabled=settings.auth.enabled, keyed_models=frozenset(settings.auth.keyed_models))
    velox = cast(Velox, readers)  # the prediction routes' part of Velox (serving/reader.py)
    # a Clipper frontend that attaches to worker 0's containers and batches this worker's queries
    clipper = ClipperRuntime(
        server.home, model_dirs=server.model_dirs, frontend=Frontend(index, args.workers, may_own=False)
    )
    local = VeloxApp(velox, TokenStore(readers.layout.tokens_file), clipper, auth=auth, admission=settings.admission)
    for model in readers.layout.model_names():  # loaded before the first request where published already
        readers.refresh(model, wait=True)
    app = tag_worker(ReaderApp(local, Forwarder(args.worker0_socket), readers), index)
    try:
        serve(app, server.host, server.port, HTTPServer.UVICORN, [_bind(server.host, server.port, shared=True)])
    finally:
        readers.close()
    return 0


def _unix_listener(path: str) -> Any:
    """Worker 0's socket for the readers' forwarded requests (a stale one from a killed worker 0 removed)."""
    import socket

    Path(path).unlink(missing_ok=True)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(path)
    sock.listen(2048)
    return sock


def _demo(args: argparse.Namespace) -> int:
    from veloxserve.config import HomeLayout
    from veloxserve.training.als import ALSConfig

    settings = args.settings = _settings(args)
    if _refuse_remote_no_auth(settings):  # before training, not after
        return 2
    # Catify is denser and less noisy than MovieLens: lighter regularisation fits it best.
    catify_config = ALSConfig(rank=8, reg=1.0, prior_precision=1.0, iterations=10)
    layout = HomeLayout(Path(settings.server.home))
    # Before changing anything: a demo already serving this home (or anything on the port) must
    # keep its data, versions and token.
    # Both stay held and are handed to the server: no window for another process to take them.
    args.listen_socket = _bind(settings.server.host, settings.server.port)
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


def _bind(host: str, port: int, *, shared: bool = False, listen: bool = True) -> Any:
    """A listening socket on host:port, or a Conflict that says what to do. `shared`: one of the
    sockets of `serve --workers N`, each worker's own on the same port (SO_REUSEPORT), among which
    the kernel spreads new connections evenly; `listen=False`: the supervisor's, which only holds the
    port (a socket that does not listen is given no connections)."""
    import socket

    from veloxserve.errors import Conflict

    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does: TIME_WAIT is no owner
        if shared:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
        if listen:
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
    base = f"http://{args.settings.server.host}:{args.settings.server.port}/models/catify"
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
    if args.settings.auth.enabled:
        from veloxserve.storage.tokens import TokenStore

        tokens = TokenStore(layout.tokens_file)
        tokens.revoke("demo")  # one demo token at a time
        token = tokens.create(name="demo")
        print("Admin routes (retrain, versions activate, policy, forget) need this token, shown once:\n")
        print(f"  export VELOXSERVE_TOKEN={token}")
        print("  .venv/bin/veloxserve retrain --model catify --wait")
        print(f"  # or: curl -X POST {base}/retrain -H 'authorization: Bearer {token}'\n")


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


_COMMANDS = {
    "demo": _demo,
    "train": _train,
    "serve": _serve,
    "log": _log,
    "token": _token,
    "export-onnx": lambda a: a.run(a),  # training/onnx_export.py
}

if __name__ == "__main__":
    sys.exit(main())
