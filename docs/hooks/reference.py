"""MkDocs hook: the reference pages' tables, generated at build time from the code they describe.

A page asks for a table with a marker on a line of its own, so the prose around it stays hand-written
and the table can never drift from the code:

    <!-- generated: config veloxserve.config -->             every dataclass defined in that module
    <!-- generated: config veloxserve.serving.admission:AdmissionConfig -->   one class
    <!-- generated: config ?veloxserve.settings -->            the same, once that module exists
    <!-- generated: routes -->                                the route table (veloxserve/api/routes.py)
    <!-- generated: request-types -->                         the request bodies and queries it names
    <!-- generated: cli -->                                   every `veloxserve` command's --help

A field's documentation is, in this order: `field(metadata={"help": ...})` (or "doc"), its attribute
docstring (a string on the line after it), or the comments on its line and right above it.

The hook also turns links that leave docs/ (`[nginx.conf](../deploy/nginx.conf)`: right on GitHub,
a missing page to MkDocs) into the file's path in code, so `mkdocs build --strict` still fails on a
broken link between pages and never on a page that points at the source.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import importlib
import importlib.util
import inspect
import io
import posixpath
import re
import sys
import tokenize
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # document this checkout, whatever veloxserve the environment installed
    sys.path.insert(0, str(ROOT))

MARKER = re.compile(r"^<!-- generated: (?P<kind>[\w-]+)(?P<args>[^>]*?) -->$", re.MULTILINE)
LINK = re.compile(r"(?<!!)\[(?P<text>[^\]\n]+)\]\((?P<target>[^)\s#]+)(?P<anchor>#[^)\s]*)?\)")


def _cell(text: object) -> str:
    """Text fit for one cell of a Markdown table: on one line, its pipes escaped (but not inside code
    spans, where Python-Markdown's tables leave them alone and an escape would show)."""
    parts = re.split(r"(`[^`]*`)", " ".join(str(text).split()))
    return "".join(p if p.startswith("`") else p.replace("|", "\\|") for p in parts)


# ---- configuration objects -------------------------------------------------------------------------


def _field_comments(cls: type) -> dict[str, str]:
    """Each field's documentation from the class's source (see the module docstring for the order)."""
    try:
        source = inspect.getsource(cls)
    except (OSError, TypeError):
        return {}
    source = inspect.cleandoc("\n" + source) if source[:1].isspace() else source
    comments: dict[int, str] = {}
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type == tokenize.COMMENT:
            comments[token.start[0]] = token.string.lstrip("#").strip()
    body = next(n for n in ast.parse(source).body if isinstance(n, ast.ClassDef)).body
    docs: dict[str, str] = {}
    for index, node in enumerate(body):
        if not (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)):
            continue
        following = body[index + 1] if index + 1 < len(body) else None
        if (
            isinstance(following, ast.Expr)
            and isinstance(following.value, ast.Constant)
            and isinstance(following.value.value, str)
        ):
            docs[node.target.id] = inspect.cleandoc(following.value.value)
            continue
        lines = list(range(node.lineno, (node.end_lineno or node.lineno) + 1))
        above = node.lineno - 1
        while above in comments and comments[above] and source.splitlines()[above - 1].lstrip().startswith("#"):
            lines.insert(0, above)  # a comment block right above the field
            above -= 1
        docs[node.target.id] = " ".join(comments[n] for n in lines if n in comments)
    return docs


def _default(f: dataclasses.Field) -> str:
    if f.default is not dataclasses.MISSING:
        value = f.default
    elif f.default_factory is not dataclasses.MISSING:
        value = f.default_factory()
    else:
        return "required"
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) >= 10_000:
        return f"`{value:_}`"
    if dataclasses.is_dataclass(value):
        return f"`{type(value).__name__}` (below)"
    return f"`{value!r}`"


def _type_name(annotation: Any) -> str:
    if isinstance(annotation, str):
        return annotation
    return getattr(annotation, "__name__", None) or str(annotation).replace("typing.", "")


def config_table(cls: type) -> str:
    """One dataclass: its docstring, then a row per field (name, type, default, documentation)."""
    docs = _field_comments(cls)
    rows = ["| setting | type | default | what it does |", "| --- | --- | --- | --- |"]
    for f in dataclasses.fields(cls):
        if f.name.startswith("_") or not f.init:
            continue
        doc = f.metadata.get("doc") or f.metadata.get("help") or docs.get(f.name, "")
        rows.append(f"| `{f.name}` | `{_cell(_type_name(f.type))}` | {_cell(_default(f))} | {_cell(doc)} |")
    where = f"{cls.__module__}.{cls.__qualname__}"
    doc = inspect.cleandoc(cls.__doc__ or "") if cls.__doc__ and not cls.__doc__.startswith(cls.__name__ + "(") else ""
    return "\n".join([f"### `{cls.__name__}`", "", f"`{where}`" + (f": {doc}" if doc else ""), "", *rows, ""])


def config_classes(targets: list[str], seen: set[type] | None = None) -> list[type]:
    """The dataclasses named by `targets` ("module" for all defined there, "module:Class" for one; a
    leading "?" for a module that may not exist yet), with the dataclasses their fields default to (a
    nested table), each once, in order, leaving out those in `seen` (already on the page)."""
    found: list[type] = []
    seen = set() if seen is None else seen

    def add(cls: type) -> None:
        if cls in seen:
            return
        seen.add(cls)
        found.append(cls)
        for f in dataclasses.fields(cls):
            factory = f.default_factory if f.default_factory is not dataclasses.MISSING else None
            value = factory() if factory is not None else f.default
            if dataclasses.is_dataclass(value) and not isinstance(value, type):
                add(type(value))

    for target in targets:
        optional = target.startswith("?")
        module_name, _, class_name = target.removeprefix("?").partition(":")
        if optional and importlib.util.find_spec(module_name) is None:
            continue
        module = importlib.import_module(module_name)
        if class_name:
            add(getattr(module, class_name))
            continue
        for _, cls in inspect.getmembers(module, inspect.isclass):
            if dataclasses.is_dataclass(cls) and cls.__module__ == module.__name__:
                add(cls)
    return found


def config_reference(targets: list[str], seen: set[type] | None = None) -> str:
    return "\n".join(config_table(cls) for cls in config_classes(targets, seen))


# ---- the HTTP API ----------------------------------------------------------------------------------


def routes_reference() -> str:
    """A row per route of the one route table: what dispatch, auth and /openapi.json derive from."""
    from veloxserve.api.openapi import body_type
    from veloxserve.api.routes import ROUTES
    from veloxserve.config import ServingConfig

    max_batch = ServingConfig().max_batch
    rows = [
        "| method | path | what it does | access | request | answer | statuses |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in ROUTES:
        if r.query is not None:
            request = f"query [`{r.query.__name__}`](#{r.query.__name__.lower()})"
        elif r.body == "observe":
            request = "body [`Observation`](#observation) or [`ObserveBatch`](#observebatch)"
        elif r.body is not None:
            kind = body_type(r, max_batch)
            name = kind.__name__ if kind is not None else str(r.body)
            request = f"body [`{name}`](#{name.lower()})" + ("" if r.body_required else " (optional)")
        else:
            request = ""
        statuses = ", ".join(str(s) for s in (r.status, *r.errors))
        rows.append(
            f"| {r.method} | `{r.path}` | {_cell(r.summary)} | {r.access.value} | {request} | `{r.response}` | "
            f"{statuses} |"
        )
    return "\n".join(rows) + "\n"


def _schema_type(schema: dict[str, Any]) -> str:
    if "$ref" in schema:
        name = schema["$ref"].rsplit("/", 1)[-1]
        return f"[`{name}`](#{name.lower()})"
    for key in ("anyOf", "oneOf"):
        if key in schema:
            return " or ".join(_schema_type(s) for s in schema[key])
    kind = schema.get("type", "any")
    if kind == "array":
        return f"array of {_schema_type(schema.get('items', {}))}"
    if "enum" in schema:
        return " \\| ".join(f"`{v!r}`" for v in schema["enum"])
    return f"`{kind}`" if isinstance(kind, str) else " or ".join(f"`{k}`" for k in kind)


_LIMITS = ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "minLength", "maxLength", "minItems",
           "maxItems", "pattern")  # fmt: skip


def request_types_reference() -> str:
    """Every request type of /openapi.json's components: a row per field."""
    from veloxserve.api.openapi import openapi_schema

    components = openapi_schema()["components"]["schemas"]
    out = []
    for name, schema in sorted(components.items()):
        properties = schema.get("properties")
        if not properties or name == "Error":  # Error is an answer: the page's prose describes it
            continue
        required = set(schema.get("required", ()))
        out += [f"### {name}", ""]
        if schema.get("description"):
            out += [_cell(schema["description"]), ""]
        out += ["| field | type | required | default | limits |", "| --- | --- | --- | --- | --- |"]
        for field, spec in properties.items():
            limits = ", ".join(f"{k} `{spec[k]}`" for k in _LIMITS if k in spec)
            default = f"`{spec['default']!r}`" if "default" in spec else ""
            out.append(
                f"| `{field}` | {_schema_type(spec)} | {'yes' if field in required else ''} | {_cell(default)} | "
                f"{_cell(limits)} |"
            )
        out.append("")
    return "\n".join(out)


# ---- the command line ------------------------------------------------------------------------------


def _commands(parser: argparse.ArgumentParser, prefix: str) -> list[tuple[str, argparse.ArgumentParser]]:
    found = [(prefix, parser)]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                found += _commands(sub, f"{prefix} {name}")
    return found


def cli_reference() -> str:
    """Every command's --help, as `veloxserve` prints it (from cli.build_parser)."""
    from veloxserve import cli

    out = []
    for name, parser in _commands(cli.build_parser(), "veloxserve"):
        parser.formatter_class = lambda prog: argparse.HelpFormatter(prog, width=100)
        out += [f"### `{name}`", "", "```text", parser.format_help().rstrip(), "```", ""]
    return "\n".join(out)


def expand(markdown: str) -> str:
    """Every marker of `markdown` replaced by its generated table; a class is documented once per page."""
    seen: set[type] = set()
    generators = {
        "config": lambda args: config_reference(args, seen),
        "routes": lambda args: routes_reference(),
        "request-types": lambda args: request_types_reference(),
        "cli": lambda args: cli_reference(),
    }

    def one(match: re.Match[str]) -> str:
        kind = match["kind"]
        if kind not in generators:
            raise ValueError(f"unknown generated table {kind!r}; expected one of {sorted(generators)}")
        return generators[kind](match["args"].split())

    return MARKER.sub(one, markdown)


def source_links(markdown: str, page_path: str) -> str:
    """Links from the page at `page_path` (relative to docs/) to files outside docs/ as code paths."""

    def one(match: re.Match[str]) -> str:
        target = match["target"]
        if "://" in target or target.startswith(("/", "mailto:")):
            return match[0]
        resolved = posixpath.normpath(posixpath.join(posixpath.dirname(page_path), target))
        if not resolved.startswith("../"):
            return match[0]
        path = resolved.removeprefix("../")
        text = match["text"]
        return f"`{path}`" if text.strip("`") == path else f"{text} (`{path}`)"

    return LINK.sub(one, markdown)


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    return source_links(expand(markdown), page.file.src_uri)
