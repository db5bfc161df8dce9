"""Black-box feature models: f(x; θ) = [f_1(x), …, f_k(x), 1] from any framework.

The Shared Basis model of the Velox papers: score(u, x) = σ(Σ_i w_{u,i} f_i(x; θ_i)), where each
f_i can be any model — a scikit-learn estimator (or one multi-output estimator for all of them),
a PyTorch module, an ONNX graph, or a plain function — over an item's raw inputs: its text
(hashed word n-grams, the same hashing as models/content.py) or numeric columns of the item
table. Because f is computed from inputs, not looked up by id, an item can be new at serving time.

This module only computes: it turns inputs into a design matrix, runs the models and checks what
they return (finite, of the declared width), in the version's float64 layout. Saving and loading
models is I/O and lives in training/basis_files.py; training θ lives in training/oracle_mtl.py.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.sparse as sp
import sklearn

from veloxserve.errors import InvalidInput
from veloxserve.models.content import text_vectorizer

KIND = "black_box"
FRAMEWORKS = ("sklearn", "torch", "onnx", "callable")


@dataclass(frozen=True)
class BasisInputs:
    """Which item-table columns f reads: one text column (hashed into `n_buckets` word
    1..`ngram_max`-grams), or numeric columns stacked into a dense vector."""

    text: str | None = None
    numeric: tuple[str, ...] = ()
    n_buckets: int = 1 << 14
    ngram_max: int = 2

    def __post_init__(self) -> None:
        if (self.text is None) == (not self.numeric):
            raise InvalidInput(
                "A feature model reads either one text column or numeric columns of the item table; "
                f"got text={self.text!r}, numeric={list(self.numeric)}.",
                field="inputs",
            )

    @property
    def columns(self) -> tuple[str, ...]:
        return (self.text,) if self.text is not None else self.numeric

    @property
    def width(self) -> int:
        """Columns of the design matrix the models see."""
        return self.n_buckets if self.text is not None else len(self.numeric)

    def as_dict(self) -> dict[str, Any]:
        return {
            "text": self.text,
            "numeric": list(self.numeric),
            "n_buckets": self.n_buckets,
            "ngram_max": self.ngram_max,
        }

    @classmethod
    def from_dict(cls, spec: dict[str, Any]) -> BasisInputs:
        return cls(spec.get("text"), tuple(spec.get("numeric") or ()), int(spec["n_buckets"]), int(spec["ngram_max"]))

    def check_columns(self, available: Sequence[str], where: str) -> None:
        """InvalidInput naming the first declared column the item table lacks."""
        for column in self.columns:
            if column not in available:
                raise InvalidInput(
                    f"The feature model reads the item-table column {column!r}, which {where} lacks "
                    f"(columns: {sorted(available)}). Add it, or declare the columns the table has.",
                    field=column,
                )


class BlackBoxBasis:
    """f(x; θ) of any framework's models, checked and laid out as [f_1 .. f_k, (x), 1].

    `models` is a list of k single-output models, or one model returning (n, k). `passthrough`
    appends the numeric inputs themselves (Multilevel Regression's w_u · x, training/multilevel.py);
    `constant` appends the 1 that carries each user's bias.
    """

    kind = KIND

    def __init__(
        self,
        models: Sequence[Any] | Any,
        *,
        framework: str,
        inputs: BasisInputs,
        outputs: int,
        name: str = "basis",
        constant: bool = True,
        passthrough: bool = False,
    ) -> None:
        if framework not in FRAMEWORKS:
            raise InvalidInput(
                f"Feature model {name!r}: framework must be one of {', '.join(FRAMEWORKS)}, got {framework!r}.",
                field="framework",
            )
        if passthrough and inputs.text is not None:
            raise InvalidInput(
                f"Feature model {name!r}: passthrough (w_u · x) needs numeric inputs, not text.", field="passthrough"
            )
        self.models = list(models) if isinstance(models, (list, tuple)) else [models]
        self.framework = framework
        self.inputs = inputs
        self.outputs = int(outputs)
        self.name = name
        self.constant = constant
        self.passthrough = passthrough
        self.dim = self.outputs + (len(inputs.numeric) if passthrough else 0) + (1 if constant else 0)
        self._vectorizer = text_vectorizer(inputs.n_buckets, inputs.ngram_max) if inputs.text is not None else None
        self._session: Any = None  # onnxruntime session, built on first use (not pickled)

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_session": None}

    # ---- inputs -------------------------------------------------------------------------
    def design(self, inputs: Sequence[str] | np.ndarray) -> Any:
        """The matrix the models see: hashed n-grams (sparse CSR) of texts, or numeric rows (dense)."""
        if self._vectorizer is not None:
            with sklearn.config_context(skip_parameter_validation=True):
                return self._vectorizer.transform(list(inputs))
        array = np.asarray(inputs, dtype=np.float64)
        if array.ndim != 2 or array.shape[1] != len(self.inputs.numeric):
            raise InvalidInput(
                f"Feature model {self.name!r} reads {len(self.inputs.numeric)} numeric inputs "
                f"({list(self.inputs.numeric)}) per item; got an array of shape {array.shape}.",
                field="inputs",
            )
        if not np.isfinite(array).all():
            raise InvalidInput(f"Feature model {self.name!r}: numeric inputs must be finite.", field="inputs")
        return array

    # ---- outputs ------------------------------------------------------------------------
    def raw_unchecked(self, design: Any) -> list[np.ndarray]:
        """Each model's outputs on a design matrix, as they came (a 1-D output as one column)."""
        n = design.shape[0]
        if self.framework == "sklearn" or self.framework == "callable":
            parts = [np.asarray(self._call(m, design), dtype=np.float64) for m in self.models]
            return [p.reshape(n, 1) if p.ndim == 1 and p.size == n else p for p in parts]
        if self.framework == "torch":
            return [self._torch(m, design) for m in self.models]
        return [self._onnx(design)]

    def per_model(self) -> list[Callable[[Any], np.ndarray]]:
        """One callable per model over a design matrix, so that serving can run the models as
        separate stragglers (anytime features: a late f_i is replaced by its mean). An ONNX graph
        is one model; a multi-output estimator is one model with several columns."""
        if self.framework == "torch":
            return [functools.partial(self._torch, m) for m in self.models]
        if self.framework == "onnx":
            return [self._onnx]
        return [functools.partial(self._call, m) for m in self.models]

    def raw(self, design: Any) -> np.ndarray:
        """[f_1(x) .. f_k(x)] of a design matrix, shape (n, k), checked: InvalidInput naming the
        model when an output is not finite or not of the declared width."""
        n = design.shape[0]
        parts = self.raw_unchecked(design)
        for i, part in enumerate(parts):
            if part.ndim != 2 or part.shape[0] != n:
                raise self._bad(f"returned shape {part.shape} for {n} inputs", i)
        out = np.hstack(parts) if len(parts) > 1 else parts[0]
        if out.shape != (n, self.outputs):
            raise self._bad(f"returned {out.shape[1]} outputs per input; it declared {self.outputs}", None)
        if not np.isfinite(out).all():
            bad = int(np.flatnonzero(~np.isfinite(out).all(axis=0))[0])
            raise self._bad(f"returned non-finite values (NaN or inf) in output {bad}", None)
        return out

    def transform(self, inputs: Sequence[str] | np.ndarray) -> np.ndarray:
        """f(x) of many inputs at once, shape (len(inputs), dim), float64 C-contiguous."""
        return self.layout(self.raw(self.design(inputs)), inputs)

    def layout(self, raw: np.ndarray, inputs: Sequence[str] | np.ndarray | None = None) -> np.ndarray:
        """The served layout [f_1 .. f_k, (x if passthrough), (1 if constant)] from the raw outputs."""
        n = raw.shape[0]
        out = np.empty((n, self.dim), dtype=np.float64)
        out[:, : self.outputs] = raw
        col = self.outputs
        if self.passthrough:
            width = len(self.inputs.numeric)
            out[:, col : col + width] = np.asarray(inputs, dtype=np.float64)
            col += width
        if self.constant:
            out[:, col] = 1.0
        return out

    def describe(self) -> dict[str, Any]:
        """What meta.json records of the basis (the models themselves are files)."""
        return {
            "kind": KIND,
            "name": self.name,
            "framework": self.framework,
            "inputs": self.inputs.as_dict(),
            "outputs": self.outputs,
            "constant": self.constant,
            "passthrough": self.passthrough,
            "models": len(self.models),
        }

    def _bad(self, what: str, index: int | None) -> InvalidInput:
        which = f" (model {index} of {len(self.models)})" if index is not None and len(self.models) > 1 else ""
        return InvalidInput(
            f"Feature model {self.name!r}{which} {what}: every f_i must return one finite float per input "
            "and keep its output width. Fix the model or its inputs.",
            field=self.name,
        )

    def _call(self, model: Any, design: Any) -> Any:
        if self.framework == "callable":
            return model(design)
        return model.predict(design)

    def _torch(self, module: Any, design: Any) -> np.ndarray:
        import torch

        dense = design.toarray() if sp.issparse(design) else design
        parameter = next(iter(module.parameters()), None)  # feed the module its own precision
        dtype = parameter.dtype if parameter is not None else torch.float32
        with torch.no_grad():
            out = module(torch.as_tensor(np.asarray(dense)).to(dtype))
        array = out.detach().cpu().numpy().astype(np.float64)
        return array.reshape(-1, 1) if array.ndim == 1 else array

    def _onnx(self, design: Any) -> np.ndarray:
        if self._session is None:
            import onnxruntime

            self._session = onnxruntime.InferenceSession(bytes(self.models[0]), providers=["CPUExecutionProvider"])
        session = self._session
        dense = design.toarray() if sp.issparse(design) else design
        name = session.get_inputs()[0].name
        out = session.run(None, {name: np.asarray(dense, dtype=np.float32)})[0]
        array = np.asarray(out, dtype=np.float64)
        return array.reshape(-1, 1) if array.ndim == 1 else array


class BasisFeatures:
    """f(x; θ) of every catalogue item, computed once at training and stored as `item_features`:
    what top-k and predict-by-id read, the same way as MatrixFactorizationFeatures.matrix."""

    kind = KIND

    def __init__(self, matrix: np.ndarray) -> None:
        matrix = np.ascontiguousarray(matrix, dtype=np.float64)
        if matrix.ndim != 2:
            raise ValueError(f"item_features must be 2-D, got shape {matrix.shape}")
        matrix.setflags(write=False)
        self.matrix = matrix
        self.dim = matrix.shape[1]

    def __len__(self) -> int:
        return self.matrix.shape[0]

    def of_rows(self, rows: np.ndarray) -> np.ndarray:
        return self.matrix[rows]
