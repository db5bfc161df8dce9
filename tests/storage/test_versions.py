from pathlib import Path

import numpy as np
import pytest

from veloxserve.errors import NotFound
from veloxserve.storage.versions import VersionStore


def test_versions_are_numbered_read_back_and_never_overwritten(tmp_path: Path) -> None:
    store = VersionStore(tmp_path)
    assert store.latest() is None and store.versions() == []
    a = {"x": np.arange(5.0), "ids": np.array(["a", "b"])}
    assert store.write(a, {"rank": 1}) == "v1"
    (tmp_path / "v2").mkdir()
    (tmp_path / "v2" / "meta.json").write_text('{"version": "v2", "rank": 99}')  # written by someone else
    assert store.write({"x": np.ones(2)}, {"rank": 2}) == "v3"
    assert store.read_meta("v2")["rank"] == 99  # untouched
    np.testing.assert_array_equal(store.read_arrays("v1")["x"], np.arange(5.0))
    assert store.read_arrays("v1")["ids"].tolist() == ["a", "b"]
    assert store.read_meta("v3") == {"rank": 2, "version": "v3"}
    assert store.versions() == ["v1", "v2", "v3"] and store.latest() == "v3"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".incoming")]


def test_unknown_version_lists_the_known_ones(tmp_path: Path) -> None:
    store = VersionStore(tmp_path)
    store.write({"x": np.ones(1)}, {})
    with pytest.raises(NotFound, match="v1"):
        store.read_meta("v9")
    with pytest.raises(NotFound):
        store.read_arrays("../etc")
