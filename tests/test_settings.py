"""A TOML config file onto the frozen config objects: every key a documented field, unknown keys
and wrong types refused naming the key, overrides (the flags) applied after the file."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from veloxserve.config import ServingConfig
from veloxserve.errors import InvalidInput
from veloxserve.serving.admission import AdmissionConfig
from veloxserve.settings import TABLES, AuthSettings, ServerSettings, Settings, documented, load_settings


def _file(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "veloxserve.toml"
    path.write_text(text)
    return path


def test_no_file_is_the_defaults_and_every_setting_is_documented() -> None:
    assert load_settings() == Settings()
    assert set(TABLES) == {"server", "auth", "admission", "serving"}
    for cls in (ServerSettings, AuthSettings, AdmissionConfig, ServingConfig):
        for key, help_text, _ in documented(cls):
            assert help_text, f"{cls.__name__}.{key} has no help"


def test_a_file_sets_every_table_and_the_overrides_win(tmp_path: Path) -> None:
    path = _file(
        tmp_path,
        """
[server]
home = "/srv/vx"
port = 9001
model_dirs = ["/srv/models"]
[auth]
keyed_models = ["catify"]
[admission]
max_in_flight = 64
objectives_ms = { catify = 50 }
[serving]
max_batch = 100
fsync = false
checkpoint_seconds = 5
""",
    )
    settings = load_settings(path, {"server": {"port": 9002}, "auth": {"enabled": False}})
    assert settings.server == ServerSettings(home=Path("/srv/vx"), port=9002, model_dirs=(Path("/srv/models"),))
    assert settings.auth == AuthSettings(enabled=False, keyed_models=("catify",))
    assert settings.admission == AdmissionConfig(max_in_flight=64, objectives_ms={"catify": 50.0})
    assert settings.serving == dataclasses.replace(ServingConfig(), max_batch=100, fsync=False, checkpoint_seconds=5.0)
    assert isinstance(settings.serving.checkpoint_seconds, float)


@pytest.mark.parametrize(
    ("text", "named"),
    [
        ("[serving]\nmax_bach = 3\n", "serving.max_bach"),
        ("[servr]\nport = 1\n", "servr"),
        ("[server]\nport = '8000'\n", "server.port"),
        ("[serving]\nfsync = 1\n", "serving.fsync"),
        ("[admission]\nobjectives_ms = { catify = 'fast' }\n", "admission.objectives_ms"),
        ("[server]\nmodel_dirs = '/one'\n", "server.model_dirs"),
        ("server = 3\n", "server"),
        ("[serving]\nmax_batch = 0\n", "serving"),  # the object's own check
        ("[server]\nhttp_server = 'gunicorn'\n", "uvicorn, granian"),  # says what it may be
        ("[serving\n", "config"),  # not TOML
    ],
)
def test_a_bad_file_is_refused_naming_the_key(tmp_path: Path, text: str, named: str) -> None:
    with pytest.raises(InvalidInput) as refused:
        load_settings(_file(tmp_path, text))
    assert refused.value.field == named or named in refused.value.message


def test_a_missing_file_says_so(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match="Cannot read the config file"):
        load_settings(tmp_path / "nope.toml")
