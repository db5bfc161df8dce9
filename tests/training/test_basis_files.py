"""A black-box basis saved with its version and attached again when the version is read."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from sklearn.linear_model import Ridge

from tests.conftest import synthetic_version_arrays
from veloxserve.errors import ModelStateInvalid
from veloxserve.models.basis import BasisFeatures, BasisInputs, BlackBoxBasis
from veloxserve.models.version import ModelVersion
from veloxserve.storage.versions import VersionStore
from veloxserve.training.basis_files import BASIS_FILE, attach_basis, basis_files, load_basis

X = np.random.default_rng(0).normal(size=(6, 2))


def written(tmp_path: Path) -> tuple[VersionStore, str, BlackBoxBasis, dict]:
    basis = BlackBoxBasis(
        Ridge().fit(X, X[:, 0]), framework="sklearn", inputs=BasisInputs(numeric=("a", "b")), outputs=1
    )
    arrays, meta = synthetic_version_arrays()
    arrays = {k: v for k, v in arrays.items() if k not in ("item_factors", "item_bias")}
    arrays["item_features"] = np.ones((len(arrays["item_ids"]), arrays["user_weights"].shape[1]))
    meta = {**meta, "kind": "black_box", "basis": basis.describe()}
    store = VersionStore(tmp_path / "versions")
    return store, store.write(arrays, meta, files=basis_files(basis)), basis, meta


def test_round_trip_and_attach(tmp_path: Path) -> None:
    store, version, basis, _ = written(tmp_path)
    meta = store.read_meta(version)
    loaded = load_basis(store.directory / version, meta)
    np.testing.assert_allclose(loaded.transform(X), basis.transform(X))
    served = attach_basis(ModelVersion.from_arrays(store.read_arrays(version), meta), store.directory / version)
    assert isinstance(served.features, BasisFeatures) and served.content is not None
    np.testing.assert_allclose(served.content.transform(X), basis.transform(X))


def test_a_damaged_basis_file_is_a_clear_error(tmp_path: Path) -> None:
    store, version, _, meta = written(tmp_path)
    (store.directory / version / BASIS_FILE).write_bytes(b"not a pickle")
    with pytest.raises(ModelStateInvalid, match="cannot be loaded"):
        load_basis(store.directory / version, store.read_meta(version))
    (store.directory / version / BASIS_FILE).unlink()
    with pytest.raises(ModelStateInvalid, match="Retrain the model or restore the file"):
        load_basis(store.directory / version, store.read_meta(version))


def test_other_versions_are_left_alone(tmp_path: Path) -> None:
    arrays, meta = synthetic_version_arrays()
    version = ModelVersion.from_arrays(arrays, meta)
    assert attach_basis(version, tmp_path) is version


def test_a_fixed_basis_from_a_file_is_probed_for_its_width(tmp_path: Path) -> None:
    import cloudpickle

    from tests.clipper.conftest import write_linear_onnx
    from veloxserve.errors import InvalidInput
    from veloxserve.training.basis_files import fixed_basis

    inputs = BasisInputs(numeric=("a", "b"))
    W = np.arange(6.0).reshape(2, 3)
    onnx = fixed_basis(write_linear_onnx(tmp_path, W, np.zeros(3)), inputs, "lin")
    assert onnx.framework == "onnx" and onnx.outputs == 3
    np.testing.assert_allclose(onnx.transform(X)[:, :3], X @ W, rtol=1e-5, atol=1e-5)
    multi = Ridge().fit(X, X @ W)
    (tmp_path / "ridge.pkl").write_bytes(cloudpickle.dumps(multi))
    sklearn_basis = fixed_basis(tmp_path / "ridge.pkl", inputs, "ridge")
    assert sklearn_basis.outputs == 3 and sklearn_basis.dim == 4
    with pytest.raises(InvalidInput, match="does not run on the declared inputs"):
        fixed_basis(tmp_path / "ridge.pkl", BasisInputs(numeric=("a",)), "ridge")
    with pytest.raises(InvalidInput, match="Cannot read the feature model"):
        fixed_basis(tmp_path / "missing.pkl", inputs, "x")
