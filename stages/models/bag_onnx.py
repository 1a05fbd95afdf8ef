"""The exported graph of the bag students (ngram, static): weighted rows of one table summed per sentence,
then a small head. Written with `onnx.helper` (no PyTorch) and run with onnxruntime.

A sentence is a bag of (row, weight) entries, fed flat for a whole batch in CSR order:

    indices_a (int64, N)  rows of `table` (the n-gram columns, or the word-piece ids)
    weights_a (float, N)  their weights (tf-idf values; 1 / length for a mean)
    rows_a    (int64, N)  which sentence of the batch each entry belongs to (0 .. batch - 1)
    batch     (int64, 1)  the number of sentences (a sentence may have no entry: its bag is zero)

pooled = Σ weights · table[indices] per sentence (Gather, Mul, ScatterElements with reduction "add"). Pair
models (`pair_features`) take a second bag (indices_b, weights_b, rows_b) and feed the head the paper's
siamese features [u, v, |u - v|, u * v]. The head: Linear layers with ReLU between them, output `logits`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from stages.errors import StageError

OPSET = 17
MODEL_FILES = {"fp32": "model.onnx", "int8": "model.int8.onnx"}


def build_graph(path: Path, table: np.ndarray, layers: list[tuple[np.ndarray | None, np.ndarray]], *,
                pair_features: bool) -> None:
    """Write the graph to `path`. layers: (W (in, out) or None for a bias alone, b (out,)), ReLU between two."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    sides = ("a", "b") if pair_features else ("a",)
    inits = [numpy_helper.from_array(np.ascontiguousarray(table, np.float32), "table"),
             numpy_helper.from_array(np.array([table.shape[1]], np.int64), "width")]
    nodes = [helper.make_node("Concat", ["batch", "width"], ["pooled_shape"], axis=0),
             helper.make_node("ConstantOfShape", ["pooled_shape"], ["zeros"],
                              value=helper.make_tensor("zero", TensorProto.FLOAT, [1], [0.0])),
             helper.make_node("Constant", [], ["axis1"], value=helper.make_tensor("one", TensorProto.INT64, [1], [1]))]
    inputs = [helper.make_tensor_value_info("batch", TensorProto.INT64, [1])]
    for s in sides:
        inputs += [helper.make_tensor_value_info(f"indices_{s}", TensorProto.INT64, ["entries_" + s]),
                   helper.make_tensor_value_info(f"weights_{s}", TensorProto.FLOAT, ["entries_" + s]),
                   helper.make_tensor_value_info(f"rows_{s}", TensorProto.INT64, ["entries_" + s])]
        nodes += [helper.make_node("Gather", ["table", f"indices_{s}"], [f"picked_{s}"], axis=0),
                  helper.make_node("Unsqueeze", [f"weights_{s}", "axis1"], [f"w2_{s}"]),
                  helper.make_node("Mul", [f"picked_{s}", f"w2_{s}"], [f"weighted_{s}"]),
                  helper.make_node("Unsqueeze", [f"rows_{s}", "axis1"], [f"r2_{s}"]),
                  helper.make_node("Shape", [f"weighted_{s}"], [f"wshape_{s}"]),
                  helper.make_node("Expand", [f"r2_{s}", f"wshape_{s}"], [f"where_{s}"]),
                  helper.make_node("ScatterElements", ["zeros", f"where_{s}", f"weighted_{s}"], [f"bag_{s}"],
                                   axis=0, reduction="add")]
    if pair_features:
        nodes += [helper.make_node("Sub", ["bag_a", "bag_b"], ["diff"]), helper.make_node("Abs", ["diff"], ["absdiff"]),
                  helper.make_node("Mul", ["bag_a", "bag_b"], ["prod"]),
                  helper.make_node("Concat", ["bag_a", "bag_b", "absdiff", "prod"], ["h0"], axis=1)]
    else:
        nodes.append(helper.make_node("Identity", ["bag_a"], ["h0"]))
    current = "h0"
    for i, (weight, bias) in enumerate(layers):
        if weight is not None:
            inits.append(numpy_helper.from_array(np.ascontiguousarray(weight, np.float32), f"W{i}"))
            nodes.append(helper.make_node("MatMul", [current, f"W{i}"], [f"m{i}"]))
            current = f"m{i}"
        inits.append(numpy_helper.from_array(np.ascontiguousarray(bias, np.float32), f"b{i}"))
        out = "logits" if i == len(layers) - 1 else f"z{i}"
        nodes.append(helper.make_node("Add", [current, f"b{i}"], [out]))
        if i < len(layers) - 1:
            nodes.append(helper.make_node("Relu", [out], [f"h{i + 1}"]))
            out = f"h{i + 1}"
        current = out
    outputs = [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", int(layers[-1][1].shape[0])])]
    graph = helper.make_graph(nodes, "bag_student", inputs, outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="bert-distill")
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def quantize_int8(fp32: Path, int8: Path) -> None:
    """onnxruntime's dynamic quantisation: the table (Gather) and the head's MatMuls in int8."""
    import logging

    from onnxruntime.quantization import QuantType, quantize_dynamic

    logging.getLogger().setLevel(logging.ERROR)
    quantize_dynamic(str(fp32), str(int8), weight_type=QuantType.QInt8)


def bag_inputs(pair_features: bool) -> list[str]:
    """The graph's input names, as an export's config.json lists them."""
    return ["batch"] + [f"{kind}_{side}" for side in ("ab" if pair_features else "a") for kind in ("indices", "weights", "rows")]


def write_export(out_dir: Path, table: np.ndarray, layers: list[tuple[np.ndarray | None, np.ndarray]], *,
                 pair_features: bool, copy: Path, config: dict) -> dict:
    """An export directory's files: model.onnx, model.int8.onnx, `copy` (the featurizer or tokenizer) and
    config.json (`config`, returned)."""
    import json
    import shutil

    build_graph(out_dir / MODEL_FILES["fp32"], table, layers, pair_features=pair_features)
    quantize_int8(out_dir / MODEL_FILES["fp32"], out_dir / MODEL_FILES["int8"])
    shutil.copy(copy, out_dir / Path(copy).name)
    (out_dir / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    return config


def csr_feed(indptr: np.ndarray, indices: np.ndarray, weights: np.ndarray, side: str = "a") -> dict[str, np.ndarray]:
    """The graph's inputs for one side of a batch, from CSR arrays (row i's entries: indptr[i] .. indptr[i + 1])."""
    counts = np.diff(indptr)
    return {f"indices_{side}": np.asarray(indices, np.int64), f"weights_{side}": np.asarray(weights, np.float32),
            f"rows_{side}": np.repeat(np.arange(len(counts), dtype=np.int64), counts)}


class BagSession:
    """One exported bag graph in onnxruntime (CPU), without PyTorch."""

    def __init__(self, model_dir: Path, variant: str = "fp32", threads: int | None = None, spinning: bool = True):
        import onnxruntime as ort

        from stages.models.onnx_student import session_options

        if variant not in MODEL_FILES:
            raise StageError(f"unknown ONNX variant {variant!r}; choose one of {', '.join(MODEL_FILES)}")
        path = Path(model_dir) / MODEL_FILES[variant]
        if not path.is_file():
            raise StageError(f"{model_dir} is not an exported student (missing {MODEL_FILES[variant]}); "
                             "run the export stage first")
        try:
            self.session = ort.InferenceSession(str(path), session_options(threads, spinning),
                                                providers=["CPUExecutionProvider"])
        except Exception as e:  # onnxruntime raises its own exception types for corrupt graphs
            raise StageError(f"{path} is not a loadable ONNX model ({e})") from None

    def run(self, batch: int, *sides: dict[str, np.ndarray]) -> np.ndarray:
        feed = {"batch": np.array([batch], np.int64)}
        for side in sides:
            feed.update(side)
        return self.session.run(None, feed)[0]
