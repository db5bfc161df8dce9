"""`veloxserve serve --config FILE`: a TOML file onto the frozen configuration objects.

Every setting of a server, in four tables, each a configuration object whose fields document
themselves (`field(metadata={"help": ...})`; the configuration reference is generated from them):

    [server]     ServerSettings     home, address, users' state store, instance, model directories
    [auth]       AuthSettings       tokens on or off (--no-auth), keyed models
    [admission]  AdmissionConfig    load shedding (serving/admission.py)
    [serving]    ServingConfig      batch limit, checkpoints, fsync, caches, idempotency (config.py)

A key that is not a field is refused naming it (a typo must not be silently ignored), and so is a
value of the wrong type; the objects' own checks run too. Flags override the file: the CLI passes
what was given on the command line as `overrides`, applied after the file. Read once by the entry
point, passed down by constructors (STYLE.md).
"""

from __future__ import annotations

import dataclasses
import tomllib
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from veloxserve.config import ServingConfig
from veloxserve.errors import InvalidInput, invalid_parameter
from veloxserve.serving.admission import AdmissionConfig

HTTP_SERVERS = ("uvicorn", "granian")  # api/http_server.py starts them; settings cannot import api/


def _help(text: str) -> dict[str, str]:
    return {"help": text}


@dataclass(frozen=True)
class ServerSettings:
    """Where the server keeps its state and listens (`[server]`)."""

    home: Path = field(default=Path("./veloxserve-home"), metadata=_help("state directory: models, logs, tokens"))
    host: str = field(default="127.0.0.1", metadata=_help("address to listen on"))
    port: int = field(default=8000, metadata=_help("port to listen on"))
    store: str = field(
        default="lmdb",
        metadata=_help(
            "users' state: lmdb (embedded, one process per home) or redis://host:port/db[?prefix=name] "
            "(shared by several processes)"
        ),
    )
    instance: str | None = field(
        default=None,
        metadata=_help("this process's id when several serve one home over Redis (its own log and lock)"),
    )
    model_dirs: tuple[Path, ...] = field(
        default=(),
        metadata=_help(
            "directories Clipper may deploy model files from besides <home>/models-in/; deploying a pickle "
            "or torch file runs its code: list only directories that only trusted operators can write"
        ),
    )
    http_server: str = field(
        default="uvicorn",
        metadata=_help("HTTP server that runs the app: uvicorn or granian (api/http_server.py)"),
    )

    def __post_init__(self) -> None:
        if self.http_server not in HTTP_SERVERS:
            raise ValueError(f"http_server must be one of {', '.join(HTTP_SERVERS)}, got {self.http_server!r}")


@dataclass(frozen=True)
class AuthSettings:
    """Who may call what (`[auth]`; api/auth.py's AuthConfig is built from it)."""

    enabled: bool = field(
        default=True,
        metadata=_help("false is --no-auth: DANGEROUS, local development only; admin routes need no token"),
    )
    allow_remote_no_auth: bool = field(
        default=False, metadata=_help("with enabled = false, listen on a non-loopback host anyway")
    )
    keyed_models: tuple[str, ...] = field(
        default=(),
        metadata=_help("models whose predict/top_k/observe need a key or an admin token; '*' for all"),
    )


@dataclass(frozen=True)
class Settings:
    """A server's whole configuration, one object per table."""

    server: ServerSettings = field(default_factory=ServerSettings)
    auth: AuthSettings = field(default_factory=AuthSettings)
    admission: AdmissionConfig = field(default_factory=AdmissionConfig)
    serving: ServingConfig = field(default_factory=ServingConfig)


TABLES: dict[str, type] = {f.name: f.default_factory for f in dataclasses.fields(Settings)}  # type: ignore[misc]


def load_settings(path: Path | None = None, overrides: Mapping[str, Mapping[str, Any]] | None = None) -> Settings:
    """The settings of `path` (TOML; None: the defaults), then `overrides` ({table: {key: value}})."""
    where = f"the config file {path}" if path is not None else "the command line"
    data: dict[str, Any] = {}
    if path is not None:
        try:
            with open(path, "rb") as fh:
                data = tomllib.load(fh)
        except OSError as exc:
            raise InvalidInput(f"Cannot read the config file {path}: {exc.strerror or exc}.", field="config") from None
        except tomllib.TOMLDecodeError as exc:
            raise InvalidInput(f"The config file {path} is not valid TOML: {exc}.", field="config") from None
    for name in data:
        if name not in TABLES:
            raise invalid_parameter(name, where, f"one of the tables [{'], ['.join(TABLES)}]", data[name])
    built = {}
    for name, cls in TABLES.items():
        table = data.get(name, {})
        if not isinstance(table, dict):
            raise invalid_parameter(name, where, f"a table [{name}]", table)
        values = {**_checked(cls, name, table, where), **_checked(cls, name, (overrides or {}).get(name, {}), where)}
        try:
            built[name] = cls(**values)
        except ValueError as exc:
            raise InvalidInput(f"[{name}] of {where}: {exc}.", field=name) from None
    return Settings(**built)


def _checked(cls: type, table: str, values: Mapping[str, Any], where: str) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    known = [f.name for f in dataclasses.fields(cls)]
    out = {}
    for key, value in values.items():
        name = f"{table}.{key}"
        if key not in known:
            raise invalid_parameter(name, where, f"a setting of [{table}]: {', '.join(known)}", value)
        ok, converted = _convert(value, hints[key])
        if not ok:
            raise invalid_parameter(name, where, _describe(hints[key]), value)
        out[key] = converted
    return out


def _convert(value: Any, hint: Any) -> tuple[bool, Any]:
    """(whether `value` fits the annotation `hint`, the value as the field holds it)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (types.UnionType, typing.Union):
        if value is None and type(None) in args:
            return True, None
        for arg in args:
            if arg is not type(None) and (fit := _convert(value, arg))[0]:
                return fit
        return False, value
    if hint is bool:
        return isinstance(value, bool), value
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool), value
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool), float(value) if _number(
            value
        ) else value
    if hint is str:
        return isinstance(value, str), value
    if hint is Path:
        return isinstance(value, (str, Path)), Path(value) if isinstance(value, (str, Path)) else value
    if dataclasses.is_dataclass(hint) and isinstance(hint, type) and isinstance(value, dict):
        return True, hint.from_json(value) if hasattr(hint, "from_json") else hint(
            **value
        )  # its own checks name the key
    if origin is tuple and isinstance(value, (list, tuple)):
        items = [_convert(v, args[0]) for v in value]
        return all(ok for ok, _ in items), tuple(v for _, v in items)
    if origin is dict and isinstance(value, dict):
        items = [_convert(v, args[1]) for v in value.values()]
        return all(ok for ok, _ in items) and all(isinstance(k, str) for k in value), dict(
            zip(value, (v for _, v in items))
        )
    return False, value


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


_WORDS = {bool: "true or false", int: "an integer", float: "a number", str: "a string", Path: "a path (a string)"}


def _describe(hint: Any) -> str:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (types.UnionType, typing.Union):
        return " or ".join("omitted" if a is type(None) else _describe(a) for a in args)
    if origin is tuple:
        return f"a list of {_describe(args[0]).removeprefix('a ').removeprefix('an ')}s"
    if origin is dict:
        return f"a table of {_describe(args[1]).removeprefix('a ').removeprefix('an ')}s by name"
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        return f"a table ({hint.__name__})"
    return _WORDS.get(hint, str(hint))


def documented(cls: type) -> list[tuple[str, str, Any]]:
    """(key, help, default) of every setting of a table's object, for docs and `--help`."""
    out = []
    for f in dataclasses.fields(cls):
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[operator]
        out.append((f.name, f.metadata.get("help", ""), default))
    return out
