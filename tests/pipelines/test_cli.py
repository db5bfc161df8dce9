"""`veloxserve pipeline …`: the commands parse, and a bad file is refused before any request."""

from __future__ import annotations

from pathlib import Path

import pytest

from veloxserve.cli import build_parser, main


def test_the_pipeline_commands_parse() -> None:
    parser = build_parser()
    assert parser.parse_args(["pipeline", "deploy", "p.toml"]).file == "p.toml"
    assert parser.parse_args(["pipeline", "show", "p"]).name == "p"
    assert parser.parse_args(["pipeline", "remove", "p", "--url", "http://x"]).url == "http://x"
    assert parser.parse_args(["pipeline", "list"]).pipeline_command == "list"
    with pytest.raises(SystemExit):
        parser.parse_args(["pipeline", "start"])


def test_an_unreadable_file_is_refused_without_contacting_a_server(tmp_path: Path, capsys) -> None:
    (tmp_path / "p.toml").write_text("name = ")
    # the URL is a closed port: reaching it would be a different error ("cannot reach")
    assert main(["pipeline", "deploy", str(tmp_path / "p.toml"), "--url", "http://127.0.0.1:9"]) == 2
    assert "Cannot read the pipeline file" in capsys.readouterr().err
