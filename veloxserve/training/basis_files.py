"""A black-box basis in its version directory: saved with the version's files, loaded back.

models/basis.py does no I/O, so this is where a BlackBoxBasis (its fitted models of whatever
framework, its input declaration and layout) becomes `basis.pkl` in the version directory — one
cloudpickle file written and fsynced by storage/versions.VersionStore like the arrays — and where
a version read by serving or by a retrain gets its basis attached again.
"""

from __future__ import annotations

import dataclasses
import pickle
from pathlib import Path
from typing import Any, BinaryIO

import cloudpickle
import numpy as np

from veloxserve.errors import InvalidInput, ModelStateInvalid
from veloxserve.models.basis import KIND, BasisInputs, BlackBoxBasis
from veloxserve.models.version import ModelVersion

BASIS_FILE = "basis.pkl"


def basis_files(basis: BlackBoxBasis) -> dict[str, Any]:
    """The `files` argument of VersionStore.write for a version served by `basis`."""
    payload = cloudpickle.dumps(basis)

    def write(fh: BinaryIO) -> None:
        fh.write(payload)

    return {BASIS_FILE: write}


def load_basis(version_dir: Path, meta: dict[str, Any]) -> BlackBoxBasis:
    """The basis saved with a black-box version; ModelStateInvalid if it is missing or is not the
    basis meta.json describes (a half-copied or hand-edited version directory)."""
    path = Path(version_dir) / BASIS_FILE
    try:
        with open(path, "rb") as fh:
            basis = cloudpickle.load(fh)
    except (OSError, EOFError, ValueError, AttributeError, ImportError, pickle.UnpicklingError) as exc:
        raise ModelStateInvalid(
            f"Version {meta.get('version')!r} of {meta.get('model')!r} is a black-box version but its "
            f"basis file {path} cannot be loaded ({type(exc).__name__}: {exc}). Retrain the model or restore the file."
        ) from None
    described = (meta.get("basis") or {}).get("outputs")
    if not isinstance(basis, BlackBoxBasis) or (described is not None and basis.outputs != int(described)):
        raise ModelStateInvalid(f"{path} does not hold the basis meta.json describes ({meta.get('basis')}).")
    return basis


def fixed_basis(path: Path, inputs: BasisInputs, name: str) -> BlackBoxBasis:
    """A pre-fitted feature model from a file, for `train --basis fixed:PATH`: an ONNX graph
    (.onnx), or a cloudpickle/joblib file holding a BlackBoxBasis or any object with `predict`
    (one multi-output estimator). Its width is probed on one all-zero input; InvalidInput if
    the file cannot be read or the model cannot run on the declared inputs."""
    path = Path(path)
    try:
        if path.suffix == ".onnx":
            model, framework = path.read_bytes(), "onnx"
        else:
            with open(path, "rb") as fh:
                model = cloudpickle.load(fh)
            if isinstance(model, BlackBoxBasis):
                return model
            framework = "sklearn"
    except (OSError, EOFError, ValueError, AttributeError, ImportError, pickle.UnpicklingError) as exc:
        raise InvalidInput(
            f"Cannot read the feature model {path}: {type(exc).__name__}: {exc}.", field="basis"
        ) from None
    probe = BlackBoxBasis(model, framework=framework, inputs=inputs, outputs=0, name=name)
    zero = [""] if inputs.text is not None else np.zeros((1, len(inputs.numeric)))
    try:
        width = sum(part.shape[1] for part in probe.raw_unchecked(probe.design(zero)))
    except Exception as exc:  # a model that cannot run on the declared inputs: say which and why
        raise InvalidInput(
            f"The feature model {path} does not run on the declared inputs {list(inputs.columns)} "
            f"({type(exc).__name__}: {exc}).",
            field="basis",
        ) from None
    return BlackBoxBasis(model, framework=framework, inputs=inputs, outputs=int(width), name=name)


def attach_basis(version: ModelVersion, version_dir: Path) -> ModelVersion:
    """`version` with its black-box basis attached as its content features (new items by their
    text go through it and the feature cache); other versions unchanged."""
    if version.meta.get("kind") != KIND:
        return version
    return dataclasses.replace(version, content=load_basis(version_dir, version.meta))
