"""A version exported to ONNX scores as veloxserve does, run by onnxruntime."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from tests.conftest import synthetic_version_arrays
from veloxserve.cli import main
from veloxserve.config import HomeLayout, ServingConfig
from veloxserve.errors import InvalidInput, NotFound
from veloxserve.serving.velox import Velox
from veloxserve.storage.versions import VersionStore
from veloxserve.training.onnx_export import export_onnx


def _home(tmp_path: Path, link: str) -> HomeLayout:
    layout = HomeLayout(tmp_path)
    arrays, meta = synthetic_version_arrays(link=link)
    VersionStore(layout.versions_dir("songs")).write(arrays, meta)
    return layout


def _indices(session: ort.InferenceSession, queries: list[tuple[str, str]]) -> dict[str, np.ndarray]:
    props = session.get_modelmeta().custom_metadata_map
    user_row = {u: i for i, u in enumerate(json.loads(props["user_ids"]))}
    item_row = {x: i for i, x in enumerate(json.loads(props["item_ids"]))}
    new = int(props["new_user_index"])
    return {
        "user_index": np.array([user_row.get(u, new) for u, _ in queries], dtype=np.int64),
        "item_index": np.array([item_row[x] for _, x in queries], dtype=np.int64),
    }


@pytest.mark.parametrize("link", ["identity", "logistic"])
@pytest.mark.parametrize("precision", ["float32", "float64"])
def test_onnx_scores_equal_veloxserves_for_trained_and_new_users(tmp_path: Path, link: str, precision: str) -> None:
    layout = _home(tmp_path, link)
    out = tmp_path / "songs.onnx"
    written = export_onnx(layout, "songs", out, precision=precision)
    assert written["version"] == "v1" and written["bytes"] == out.stat().st_size
    onnx.checker.check_model(onnx.load(str(out)))
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    queries = [(u, x) for u in ["0", "7", "29", "someone-new", "another"] for x in ["100", "117", "149"]]
    with Velox(tmp_path, config=ServingConfig(fsync=False)) as velox:
        expected = np.array(velox.predict_many("songs", queries))
    [scores] = session.run(["score"], _indices(session, queries))
    assert scores.dtype == np.dtype(precision) and scores.shape == (len(queries),)
    assert np.allclose(scores, expected, rtol=1e-5 if precision == "float32" else 1e-12)
    if link == "logistic":
        assert ((scores > 0) & (scores < 1)).all()


def test_weights_input_scores_a_users_online_state(tmp_path: Path) -> None:
    layout = _home(tmp_path, "identity")
    out = tmp_path / "songs.onnx"
    export_onnx(layout, "songs", out, inputs="weights", precision="float64")
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    with Velox(tmp_path, config=ServingConfig(fsync=False)) as velox:
        velox.observe_many("songs", [("0", "101", 5.0), ("fresh", "102", 1.0)])  # learned online
        queries = [("0", "110"), ("fresh", "120"), ("fresh", "101")]
        expected = np.array(velox.predict_many("songs", queries))
        weights = np.array([velox.server("songs").users.weights(u) for u, _ in queries])
    item_index = _indices(session, queries)["item_index"]
    [scores] = session.run(["score"], {"user_weights": weights, "item_index": item_index})
    assert np.allclose(scores, expected, rtol=1e-12)


def test_the_command_writes_the_file_and_bad_requests_say_what_to_do(tmp_path: Path, capsys) -> None:
    _home(tmp_path, "identity")
    out = tmp_path / "exported" / "m.onnx"
    assert main(["export-onnx", "--home", str(tmp_path), "--model", "songs", "--version", "v1", "--out", str(out)]) == 0
    assert json.loads(capsys.readouterr().out)["out"] == str(out) and out.is_file()
    assert main(["export-onnx", "--home", str(tmp_path), "--model", "songs", "--version", "v9", "--out", str(out)]) == 2
    assert "v9" in capsys.readouterr().err
    with pytest.raises(NotFound):
        export_onnx(HomeLayout(tmp_path), "songs", out, version="v9")
    with pytest.raises(InvalidInput, match="has no version"):
        export_onnx(HomeLayout(tmp_path), "other", out)
    with pytest.raises(InvalidInput, match="inputs must be one of ids, weights"):
        export_onnx(HomeLayout(tmp_path), "songs", out, inputs="rows")


def test_a_black_box_basis_version_exports_its_item_features(tmp_path: Path) -> None:
    """Versions of kind black_box hold f(x) as `item_features` (docs/personalise-any-model.md):
    the graph scores with those, checked against w_u · f(x) computed here."""
    from veloxserve.models.basis import KIND as BLACK_BOX
    from veloxserve.training.onnx_export import build_graph

    arrays, meta = synthetic_version_arrays()
    features = np.random.default_rng(5).normal(size=(arrays["item_ids"].size, arrays["user_weights"].shape[1]))
    arrays = {k: v for k, v in arrays.items() if k not in ("item_factors", "item_bias")} | {"item_features": features}
    meta = {**meta, "kind": BLACK_BOX}
    out = tmp_path / "bb.onnx"
    out.write_bytes(build_graph(arrays, meta, precision="float64").SerializeToString())
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    users, items = np.array([0, 3, 30]), np.array([1, 2, 49])  # 30: the prior's row
    [scores] = session.run(["score"], {"user_index": users, "item_index": items})
    table = np.vstack([arrays["user_weights"], arrays["prior_mean"]])
    assert np.allclose(scores, np.einsum("ij,ij->i", table[users], features[items]))
