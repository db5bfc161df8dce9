"""Deploying runs a model file's code, so only files under <home>/models-in or a --model-dir deploy."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.clipper.conftest import constant_model, write_callable
from veloxserve.clipper import Clipper
from veloxserve.clipper.model_files import INCOMING, ModelDirectories
from veloxserve.errors import Forbidden, NotFound


def _outside_marker(tmp_path: Path) -> Path:
    """A pickle that, if ever loaded, leaves a file behind: proof that its code ran."""
    marker = tmp_path / "ran"

    def evil(batch):
        open(marker, "w").close()
        return [0.0] * len(batch)

    outside = tmp_path / "outside"
    outside.mkdir()
    return write_callable(outside / "evil.pkl", evil)


def test_a_model_file_outside_the_model_directories_is_refused_and_never_loaded(tmp_path: Path) -> None:
    home, allowed = tmp_path / "home", tmp_path / "allowed"
    allowed.mkdir()
    evil = _outside_marker(tmp_path)
    (allowed / "link.pkl").symlink_to(evil)  # a link inside an allowed directory to a file outside
    with Clipper(home, model_dirs=[allowed]) as clipper:
        for path in (evil, allowed / "link.pkl", allowed / ".." / "outside" / "evil.pkl"):
            with pytest.raises(Forbidden) as error:
                clipper.deploy("evil", "callable", path)
            assert error.value.field == "model" and error.value.status == 403
            assert str(home.resolve() / INCOMING) in error.value.message and "--model-dir" in error.value.message
            assert "runs its code" in error.value.message
        assert clipper.list_models() == [] and not (clipper.runtime.registry.models / "evil").exists()
    assert not (tmp_path / "ran").exists()


def test_a_missing_file_outside_is_refused_before_it_is_looked_for(tmp_path: Path) -> None:
    """A refused path is 403 whether or not it exists: the server is no oracle for other files."""
    with Clipper(tmp_path / "home") as clipper:
        for path in ("/etc/passwd", "/no/such/file"):
            with pytest.raises(Forbidden):
                clipper.deploy("m", "callable", path)
        with pytest.raises(NotFound):
            clipper.deploy("m", "callable", tmp_path / "home" / INCOMING / "missing.pkl")


def test_files_in_models_in_and_in_an_operators_directory_deploy(tmp_path: Path) -> None:
    home, extra = tmp_path / "home", tmp_path / "extra"
    extra.mkdir()
    with Clipper(home, model_dirs=[extra]) as clipper:
        assert (home / INCOMING).is_dir()  # created at start, so an operator finds it
        write_callable(home / INCOMING / "one.pkl", constant_model(1.0))
        assert clipper.deploy("one", "callable", home / INCOMING / "one.pkl")["version"] == "v1"
        (extra / "sub").mkdir()
        write_callable(extra / "sub" / "two.pkl", constant_model(2.0))
        (extra / "alias.pkl").symlink_to(extra / "sub" / "two.pkl")  # a link that stays inside is fine
        assert clipper.deploy("two", "callable", extra / "alias.pkl")["version"] == "v1"


_SEGMENT = st.sampled_from(["a", "b", "..", ".", "in", "out", "link-in", "link-out"])


@settings(max_examples=200, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(segments=st.lists(_SEGMENT, min_size=1, max_size=6))
def test_the_check_agrees_with_realpath(tmp_path: Path, segments: list[str]) -> None:
    """Accepted exactly when os.path.realpath of the path lies under an allowed root's realpath."""
    base = tmp_path / "tree"
    if not base.exists():
        for d in ("home/models-in/a", "allowed/b", "out"):
            (base / d).mkdir(parents=True)
        (base / "allowed" / "in").symlink_to(base / "allowed" / "b")
        (base / "allowed" / "link-in").symlink_to(base / "home" / "models-in")
        (base / "allowed" / "link-out").symlink_to(base / "out")
        (base / "allowed" / "b" / "link-out").symlink_to(base / "out")
    dirs = ModelDirectories(base / "home", [base / "allowed"])
    path = base / "allowed" / Path(*segments)
    real = os.path.realpath(path)
    roots = [os.path.realpath(base / "home" / "models-in"), os.path.realpath(base / "allowed")]
    expected = any(os.path.commonpath([real, root]) == root for root in roots)
    try:
        resolved = dirs.check(path)
    except Forbidden:
        assert not expected, (path, real)
    else:
        assert expected and str(resolved) == real, (path, real)
