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

from veloxserve.errors import ModelStateInvalid
from veloxserve.models.basis import KIND, BlackBoxBasis
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


def attach_basis(version: ModelVersion, version_dir: Path) -> ModelVersion:
    """`version` with its black-box basis attached as its content features (new items by their
    text go through it and the feature cache); other versions unchanged."""
    if version.meta.get("kind") != KIND:
        return version
    return dataclasses.replace(version, content=load_basis(version_dir, version.meta))
