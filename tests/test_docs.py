"""The docs site builds with --strict, its generated tables match the code they are generated from,
and every `veloxserve` command the README and the docs show parses with today's CLI."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[1]
HOOK = ROOT / "docs" / "hooks" / "reference.py"


def _hook() -> ModuleType:
    spec = importlib.util.spec_from_file_location("docs_reference_hook", HOOK)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _table_rows(markdown: str) -> list[list[str]]:
    rows = []
    for line in markdown.splitlines():
        if line.startswith("| ") and not line.startswith("| ---"):
            rows.append([cell.strip() for cell in re.split(r"(?<!\\)\|", line)[1:-1]])
    return rows


def _require_docs_tools() -> None:
    """The docs extra (mkdocs and its plugins, PyYAML with them): make test installs it; under CI its absence
    fails, elsewhere it skips."""
    if any(importlib.util.find_spec(m) is None for m in ("mkdocs", "mkdocstrings", "material", "yaml")):
        if os.environ.get("CI") == "true":
            pytest.fail("the docs tools are not installed: make test installs the docs extra ('.[test,spark,docs]')")
        pytest.skip("the docs tools are not installed (pip install '.[docs]')")


def test_the_site_builds_strictly_and_a_page_missing_from_nav_does_not_break_it(tmp_path: Path) -> None:
    """The build CI runs, on a copy with one more page that nav does not list (what every engineer's new
    docs/<topic>.md is until the lead adds its nav line) and that links to the source, as pages do."""
    _require_docs_tools()
    copy = tmp_path / "repo"
    copy.mkdir()
    shutil.copy(ROOT / "mkdocs.yml", copy / "mkdocs.yml")
    shutil.copytree(ROOT / "docs", copy / "docs", ignore=shutil.ignore_patterns("__pycache__"))
    (copy / "veloxserve").symlink_to(ROOT / "veloxserve")
    (copy / "docs" / "not-in-nav.md").write_text(
        "# A page nav does not list\n\nIt points at [the route table](../veloxserve/api/routes.py) and at "
        "[the HTTP reference](reference/http-api.md#routes).\n"
    )
    site = tmp_path / "site"
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1", "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(copy / "mkdocs.yml"), "-d", str(site)],
        cwd=copy,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    routes = (site / "reference" / "http-api" / "index.html").read_text()
    from veloxserve.api.routes import ROUTES

    assert all(f"<code>{r.path}</code>" in routes for r in ROUTES)
    config = (site / "reference" / "configuration" / "index.html").read_text()
    from veloxserve.config import ServingConfig

    assert all(f"<code>{f.name}</code>" in config for f in dataclasses.fields(ServingConfig))
    python_api = (site / "reference" / "python-api" / "index.html").read_text()
    assert "top_k" in python_api and "VeloxError" in python_api  # mkdocstrings rendered the docstrings
    unlisted = (site / "not-in-nav" / "index.html").read_text()
    assert "<code>veloxserve/api/routes.py</code>" in unlisted
    assert not (site / "hooks").exists()  # the hook is build code, not a page


def test_the_route_table_page_has_one_row_per_route_as_the_table_declares_it() -> None:
    from veloxserve.api.routes import ROUTES

    rows = _table_rows(_hook().routes_reference())[1:]
    assert [(row[0], row[1].strip("`"), row[3]) for row in rows] == [(r.method, r.path, r.access.value) for r in ROUTES]
    assert all(row[5] == f"`{r.response}`" for row, r in zip(rows, ROUTES))
    assert [row[6].split(", ") for row in rows] == [[str(s) for s in (r.status, *r.errors)] for r in ROUTES]


def test_every_request_type_the_routes_name_is_documented_field_by_field() -> None:
    from veloxserve.api.openapi import openapi_schema

    page = _hook().request_types_reference()
    components = openapi_schema()["components"]["schemas"]
    for name, schema in components.items():
        if name == "Error" or not schema.get("properties"):
            continue
        section = page.split(f"### {name}\n", 1)[1].split("\n### ", 1)[0]
        fields = [row[0].strip("`") for row in _table_rows(section)[1:]]
        assert fields == list(schema["properties"]), name


def test_the_configuration_page_lists_every_field_of_every_config_dataclass_with_its_default() -> None:
    import veloxserve.config as config

    hook = _hook()
    classes = [c for c in vars(config).values() if isinstance(c, type) and dataclasses.is_dataclass(c)]
    classes = [c for c in classes if c.__module__ == config.__name__]
    assert {c.__name__ for c in hook.config_classes(["veloxserve.config"])} >= {c.__name__ for c in classes}
    page = hook.config_reference(["veloxserve.config"])
    for cls in classes:
        section = page.split(f"### `{cls.__name__}`\n", 1)[1].split("\n### ", 1)[0]
        rows = {row[0].strip("`"): row for row in _table_rows(section)[1:]}
        for f in dataclasses.fields(cls):
            if not f.init or f.name.startswith("_"):
                continue
            default = f.default if f.default is not dataclasses.MISSING else dataclasses.MISSING
            if default is dataclasses.MISSING and f.default_factory is not dataclasses.MISSING:
                default = f.default_factory()
            cell = rows[f.name][2].strip("`")
            if default is dataclasses.MISSING:
                assert cell == "required"
            elif dataclasses.is_dataclass(default):
                assert type(default).__name__ in cell
            else:
                assert cell.replace("_", "") == repr(default).replace("_", ""), (cls.__name__, f.name, cell)


def test_a_fields_docstring_metadata_or_comment_is_its_documentation(tmp_path: Path, monkeypatch) -> None:
    (tmp_path / "docsample_config.py").write_text(
        "from dataclasses import dataclass, field\n\n\n"
        "@dataclass(frozen=True)\n"
        "class Inner:\n"
        '    """Nested settings."""\n\n'
        "    depth: int = 3  # how deep\n\n\n"
        "@dataclass(frozen=True)\n"
        "class Sample:\n"
        '    """Sample settings."""\n\n'
        "    plain: int = 1\n"
        "    commented: float = 0.5  # the comment on its line\n"
        "    # the comment block\n"
        "    # above it\n"
        "    above: str = 'x'\n"
        "    documented: int = 20_000\n"
        '    """Its attribute docstring."""\n'
        '    described: bool = field(default=True, metadata={"doc": "From metadata."})\n'
        "    inner: Inner = field(default_factory=Inner)\n"
        "    needed: str = field(default='')  # | a pipe\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    hook = _hook()
    page = hook.config_reference(["docsample_config:Sample"])
    rows = {row[0].strip("`"): row for row in _table_rows(page)}
    assert rows["plain"][3] == ""
    assert rows["commented"][3] == "the comment on its line"
    assert rows["above"][3] == "the comment block above it"
    assert rows["documented"][2:] == ["`20_000`", "Its attribute docstring."]
    assert rows["described"][3] == "From metadata."
    assert rows["needed"][3] == "\\| a pipe"
    assert "`Inner` (below)" in rows["inner"][2] and "### `Inner`" in page and rows["depth"][3] == "how deep"


def test_links_out_of_docs_become_code_paths_and_links_between_pages_stay() -> None:
    links = _hook().source_links
    page = "See [deploy/nginx.conf](../../deploy/nginx.conf), [the table](../../veloxserve/api/routes.py#L1), "
    page += "[Redis](../operations/redis.md#running-redis) and [the web](https://example.org/a)."
    assert links(page, "operations/x.md") == (
        "See `deploy/nginx.conf`, the table (`veloxserve/api/routes.py`), "
        "[Redis](../operations/redis.md#running-redis) and [the web](https://example.org/a)."
    )
    assert links("[up](../README.md)", "index.md") == "up (`README.md`)"
    assert links("![figure](../bench/results/regret.png)", "index.md") == "![figure](../bench/results/regret.png)"


def test_an_unknown_generated_table_is_refused_by_name() -> None:
    with pytest.raises(ValueError, match="unknown generated table 'nope'"):
        _hook().expand("<!-- generated: nope -->")


def _shown_commands() -> list[tuple[str, list[str]]]:
    """Every `veloxserve …` line of the README's and the docs' shell blocks, with where it was shown."""
    found = []
    for path in [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]:
        for block in re.findall(r"```sh\n(.*?)```", path.read_text(), re.S):
            for line in block.replace("\\\n", " ").splitlines():
                line = re.sub(r"\s+#\s.*$", "", line).strip().removesuffix("&").strip()  # a comment, a background job
                words = shlex.split(line) if "veloxserve " in line else []
                if words and words[0].endswith("bin/veloxserve") or words[:1] == ["veloxserve"]:
                    found.append((f"{path.relative_to(ROOT)}: {line}", words[1:]))
    return found


def test_every_veloxserve_command_the_readme_and_docs_show_parses() -> None:
    from veloxserve.cli import build_parser

    shown = _shown_commands()
    assert len(shown) > 20
    for where, argv in shown:
        try:
            build_parser().parse_args(argv)
        except SystemExit as exc:
            pytest.fail(f"{where}: the CLI refuses it (exit {exc.code})")


def test_the_clipper_tours_script_writes_the_models_and_bodies_it_names(tmp_path: Path) -> None:
    import joblib

    done = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "clipper_models.py"), "--home", str(tmp_path / "home"),
         "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    written = [Path(line) for line in done.stdout.split()]
    models_in = tmp_path / "home" / "models-in"
    assert sorted(p.name for p in models_in.iterdir()) == ["lr.joblib", "lr2.joblib", "rf.joblib"]
    assert set(written) == set(models_in.iterdir()) | {tmp_path / "digit-predict.json", tmp_path / "digit-observe.json"}
    predict = json.loads((tmp_path / "digit-predict.json").read_text())
    observe = json.loads((tmp_path / "digit-observe.json").read_text())
    assert predict["user"] == observe["user"] and predict["input"] == observe["input"] and len(predict["input"]) == 64
    for name in ("lr", "lr2", "rf"):
        probabilities = joblib.load(models_in / f"{name}.joblib").predict_proba([predict["input"]])
        assert probabilities.shape == (1, 10)
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    row = next(i for i in range(len(x)) if x[i].tolist() == predict["input"])
    assert row >= 600 and observe["label"] == y[row]  # a digit none of the models was fitted on, truly labelled


def test_the_readmes_links_into_docs_lead_to_pages_the_site_builds() -> None:
    """The README is the two commands, the tour and links: each link is a file of the checkout, and each
    page it links to under docs/ is one the site builds (in nav)."""
    _require_docs_tools()
    import yaml

    links = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", (ROOT / "README.md").read_text())
    assert len(links) > 15
    missing = [link for link in links if "://" not in link and not (ROOT / link).is_file()]
    assert not missing, f"README links to files that do not exist: {missing}"

    def pages(nav: object) -> list[str]:
        if isinstance(nav, str):
            return [nav]
        if isinstance(nav, list):
            return [p for entry in nav for p in pages(entry)]
        if isinstance(nav, dict):
            return [p for value in nav.values() for p in pages(value)]
        return []

    in_nav = set(pages(yaml.safe_load((ROOT / "mkdocs.yml").read_text())["nav"]))
    linked = {link.removeprefix("docs/") for link in links if link.startswith("docs/")}
    assert linked <= in_nav, f"README links to pages nav does not list: {sorted(linked - in_nav)}"
