"""Which engine can retrain which kind of version, checked in one place: when a retrain policy is
set, when a retrain starts (serving/retraining.py) and by the trainer itself (training/trainer.py).

A matrix-factorisation version retrains on either engine: Spark MLlib replaces only the ALS fit of
θ. A black-box basis version (kind black_box) has no θ for MLlib to fit: its feature model is
refitted by its basis method (oracle-mtl, first-order, fixed or multilevel, training/basis_trainer.py)
in the trainer process, and none of them runs on Spark. Refusing `engine: spark` for it says so,
where running it locally anyway would serve a version that never touched the Spark master it names.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from veloxserve.errors import InvalidInput

BLACK_BOX = "black_box"  # models/basis.py KIND, without importing the basis machinery


def check_engine(engine: str, meta: Mapping[str, Any], model: str) -> None:
    """InvalidInput (field `engine`) when `engine` cannot retrain a version with this `meta`."""
    if engine == "local" or meta.get("kind") != BLACK_BOX:
        return
    method = (meta.get("basis") or {}).get("training", "its basis method")
    raise InvalidInput(
        f"The 'engine' parameter of the retrain policy of {model!r} must be local. Got {engine!r} instead: "
        f"{model!r} serves a black-box basis version, whose feature model is refitted by {method} "
        "(training/basis_trainer.py) in the trainer process, which has no Spark engine (Spark MLlib fits only "
        f"ALS's θ). Set engine to local (veloxserve policy --model {model} --engine local).",
        field="engine",
    )
