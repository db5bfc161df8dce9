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


def test_a_version_can_hold_other_files_written_like_its_arrays(tmp_path: Path) -> None:
    store = VersionStore(tmp_path)
    version = store.write({}, {"file": "model.pkl"}, files={"model.pkl": lambda fh: fh.write(b"weights")})
    assert (tmp_path / version / "model.pkl").read_bytes() == b"weights"
    assert store.read_meta(version) == {"file": "model.pkl", "version": "v1"}


def test_the_catalogue_annotates_without_touching_meta_and_forgets_a_discarded_version(tmp_path: Path) -> None:
    from veloxserve.storage.version_catalog import VersionCatalog

    catalog = VersionCatalog(tmp_path)
    version = catalog.versions.write({}, {"what": "m"})
    meta = (tmp_path / "versions" / version / "meta.json").read_bytes()
    assert catalog.pointed() is None and catalog.active() == version  # active() falls back to the latest
    catalog.annotate(version, input_shape=[3])
    assert catalog.entry(version)["input_shape"] == [3]
    assert (tmp_path / "versions" / version / "meta.json").read_bytes() == meta
    catalog.discard(version)
    again = catalog.versions.write({}, {"what": "m2"})
    assert again == version and "input_shape" not in catalog.entry(again)  # nothing inherited


_WRITER = """
import sys, time
from pathlib import Path
import numpy as np
from veloxserve.storage import versions

done = Path(sys.argv[2])
def slow_save(fh, array):  # a trainer writing a large array: it pauses mid-way until told
    print("writing", flush=True)
    while not done.exists():
        time.sleep(0.02)
    np.save(fh, array, allow_pickle=False)
versions._save_array = slow_save
versions.VersionStore(Path(sys.argv[1])).write({"x": np.ones(3)}, {"rank": 1})
print("written", flush=True)
"""


@pytest.mark.parametrize("killed", [False, True])
def test_cleaning_up_never_removes_a_version_another_process_is_writing(tmp_path: Path, killed: bool) -> None:
    """Several servers share a home: one cleaning up after a dead trainer must not delete what a
    live one is writing; what a writer killed -9 left is removed by the next cleanup."""
    import subprocess
    import sys

    store, done = VersionStore(tmp_path / "versions"), tmp_path / "done"
    writer = subprocess.Popen(
        [sys.executable, "-c", _WRITER, str(store.directory), str(done)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert writer.stdout is not None and writer.stdout.readline().strip() == "writing"
        assert store.clean_incoming() == 0  # it is alive and writing
        assert len(list(store.directory.glob(".incoming-*"))) == 1
        if killed:
            writer.kill()
            writer.wait(30)
            assert store.clean_incoming() == 1 and not list(store.directory.glob(".incoming-*"))
            assert store.versions() == []
        else:
            done.touch()
            assert writer.stdout.readline().strip() == "written" and writer.wait(30) == 0
            assert store.versions() == ["v1"] and store.read_meta("v1")["rank"] == 1
    finally:
        if writer.poll() is None:
            writer.kill()
            writer.wait()
