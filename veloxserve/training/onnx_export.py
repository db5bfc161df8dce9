"""A model version as an ONNX graph, so that another runtime can score it (docs/model-exchange.md).

The split model score(u, x) = σ(w_u · f(x; θ)) becomes a graph holding f(x) of every catalogue
item and the trained weights of every user, plus one row for a new user (the prior mean w0):

    inputs ids (default)   user_index int64 [N], item_index int64 [N]
    inputs weights         user_weights [N, k], item_index int64 [N]   (weights from elsewhere,
                           e.g. a user's online state)
    output                 score [N] = Sigmoid(ReduceSum(Gather(W, user) * Gather(F, item), 1))
                           (no Sigmoid under the identity link)

The rows of the tables are the version's: `item_ids` / `user_ids` in the model's metadata_props
(JSON lists) map ids to indices, and `new_user_index` is the prior's row. Weights are the
version's trained ones: online learning since training is not in the file (pass
`inputs="weights"` to score with weights taken from a running server). The graph is built with
onnx.helper (pip install 'veloxserve[exchange]'); tests/training/test_onnx_export.py checks it
against veloxserve's own scores with onnxruntime.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from veloxserve.config import HomeLayout, check_model_name
from veloxserve.errors import InvalidInput
from veloxserve.storage.version_catalog import VersionCatalog

OPSET = 17
INPUTS = ("ids", "weights")
PRECISIONS = ("float32", "float64")


def export_onnx(
    layout: HomeLayout,
    model: str,
    out: Path,
    *,
    version: str | None = None,
    inputs: str = "ids",
    precision: str = "float32",
) -> dict[str, Any]:
    """Write `model`'s `version` (default: the active one) as an ONNX file at `out`; what was written."""
    check_model_name(model, "export-onnx")
    if inputs not in INPUTS:
        raise InvalidInput(f"inputs must be one of {', '.join(INPUTS)}; got {inputs!r}.", field="inputs")
    if precision not in PRECISIONS:
        raise InvalidInput(f"precision must be one of {', '.join(PRECISIONS)}; got {precision!r}.", field="precision")
    catalog = VersionCatalog(layout.model_dir(model))
    version = version or catalog.active()
    if version is None:
        raise InvalidInput(f"Model {model!r} has no version under {layout.root}: train one first.", field="model")
    catalog.entry(version)  # NotFound naming the versions there are
    arrays, meta = catalog.versions.read_arrays(version), catalog.versions.read_meta(version)
    proto = build_graph(arrays, meta, inputs=inputs, precision=precision)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(proto.SerializeToString())
    return {
        "model": model,
        "version": version,
        "out": str(out),
        "inputs": inputs,
        "precision": precision,
        "bytes": out.stat().st_size,
        "n_items": int(arrays["item_ids"].size),
        "n_users": int(arrays["user_ids"].size),
    }


def build_graph(
    arrays: dict[str, np.ndarray], meta: dict[str, Any], *, inputs: str = "ids", precision: str = "float32"
) -> Any:
    """The ONNX ModelProto of a version's arrays and meta.json (the version-directory contract)."""
    try:
        from onnx import TensorProto, checker, helper, numpy_helper
    except ImportError:
        raise InvalidInput(
            "Exporting to ONNX needs the onnx package: pip install 'veloxserve[exchange]'.", field="onnx"
        ) from None
    # Imported here, not at the top: `veloxserve --help` and every client command build this parser, and a
    # version's features import scikit-learn (about 2 s of start-up that no command but this one needs).
    from veloxserve.models.version import Link, ModelVersion

    dtype = np.dtype(precision)
    elem = TensorProto.FLOAT if dtype == np.float32 else TensorProto.DOUBLE
    features = ModelVersion.from_arrays(arrays, meta).features.matrix  # f(x) of every item, any kind of version
    k = features.shape[1]
    weights = np.vstack([arrays["user_weights"].reshape(-1, k), arrays["prior_mean"].reshape(1, k)])
    initializers = [numpy_helper.from_array(features.astype(dtype), "item_features")]
    nodes = [helper.make_node("Gather", ["item_features", "item_index"], ["f"], axis=0)]
    graph_inputs = [helper.make_tensor_value_info("item_index", TensorProto.INT64, ["N"])]
    if inputs == "ids":
        initializers.append(numpy_helper.from_array(weights.astype(dtype), "user_table"))
        nodes.insert(0, helper.make_node("Gather", ["user_table", "user_index"], ["w"], axis=0))
        graph_inputs.insert(0, helper.make_tensor_value_info("user_index", TensorProto.INT64, ["N"]))
        w = "w"
    else:
        graph_inputs.insert(0, helper.make_tensor_value_info("user_weights", elem, ["N", k]))
        w = "user_weights"
    initializers.append(numpy_helper.from_array(np.array([1], dtype=np.int64), "axis"))
    logistic = Link(meta.get("link", Link.IDENTITY.value)) is Link.LOGISTIC
    nodes += [
        helper.make_node("Mul", [w, "f"], ["wf"]),
        helper.make_node("ReduceSum", ["wf", "axis"], ["z" if logistic else "score"], keepdims=0),
    ]
    if logistic:
        nodes.append(helper.make_node("Sigmoid", ["z"], ["score"]))
    graph = helper.make_graph(
        nodes,
        f"{meta['model']}_{meta['version']}",
        graph_inputs,
        [helper.make_tensor_value_info("score", elem, ["N"])],
        initializers,
    )
    proto = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET)],
        producer_name="veloxserve",
        doc_string="score(u, x) = σ(w_u · f(x; θ)); see docs/model-exchange.md",
    )
    proto.ir_version = min(proto.ir_version, 9)  # readable by onnxruntime releases of the last two years
    helper.set_model_props(
        proto,
        {
            "model": str(meta["model"]),
            "version": str(meta["version"]),
            "link": "logistic" if logistic else "identity",
            "k": str(k),
            "inputs": inputs,
            "new_user_index": str(weights.shape[0] - 1),
            "item_ids": json.dumps([str(x) for x in arrays["item_ids"].tolist()]),
            "user_ids": json.dumps([str(x) for x in arrays["user_ids"].tolist()]),
        },
    )
    checker.check_model(proto)
    return proto


# ---- the command (cli.py delegates to these) ----------------------------------------------
def add_command(sub: Any, home: Callable[[argparse.ArgumentParser], None]) -> None:
    """`veloxserve export-onnx --model M [--version V] --out FILE` on the CLI's subparsers."""
    p = sub.add_parser("export-onnx", help="write a model version as an ONNX graph another runtime can score")
    home(p)
    p.add_argument("--model", required=True)
    p.add_argument("--version", help="the version to export (default: the active one)")
    p.add_argument("--out", required=True, type=Path, help="the .onnx file to write")
    p.add_argument("--inputs", choices=INPUTS, default="ids", help="user_index or user_weights in (default ids)")
    p.add_argument("--precision", choices=PRECISIONS, default="float32", help="tensor type (default float32)")
    p.set_defaults(run=run_command)


def run_command(args: argparse.Namespace) -> int:
    written = export_onnx(
        HomeLayout(Path(args.home)),
        args.model,
        args.out,
        version=args.version,
        inputs=args.inputs,
        precision=args.precision,
    )
    print(json.dumps(written, indent=2), file=sys.stdout)
    return 0
