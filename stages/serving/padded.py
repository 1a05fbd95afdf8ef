"""One model call per batch of mixed-length sentences: the exported BiLSTM graph with its LSTMs' lengths exposed.

The export's graph takes rows of one length (no padding), so `OnnxStudent` splits a batch into one call per
length: a batch of 64 dev sentences of ~30 different lengths is ~30 calls of 2 rows, and batching gains little.
Here the graph is rewritten in memory (the files are not touched): each LSTM (or int8 DynamicQuantizeLSTM)
node gets its ONNX `sequence_lens` input, fed with each row's true length, so rows padded with <pad> to the
batch's longest read exactly their own tokens: the forward pass stops at the row's last token, the backward
pass starts there, as the packed sequences of the PyTorch student. Same logits (to float rounding), one call.
A graph this does not recognise (the CNN student, whose max over time would read the padding) keeps the
length-grouped calls.
"""

from __future__ import annotations

import numpy as np

from stages.models.onnx_student import OnnxStudent, session_options
from stages.models.predictor import softmax
from stages.models.vocab import PAD_ID

LSTM_OPS = {"LSTM", "DynamicQuantizeLSTM"}


def _with_lengths(model_path) -> tuple[bytes, dict[str, str]] | None:
    """The graph with a `<input>_lengths` (int32, batch) input per id input feeding its LSTMs, or None."""
    import onnx
    from onnx import TensorProto, helper

    model = onnx.load(str(model_path))
    graph = model.graph
    inputs = {i.name for i in graph.input} - {init.name for init in graph.initializer}
    producer = {out: node for node in graph.node for out in node.output}
    lstms = [node for node in graph.node if node.op_type in LSTM_OPS]
    if not lstms:
        return None

    def sources(name: str, seen: set) -> set[str]:
        if name in inputs:
            return {name}
        node = producer.get(name)
        if node is None or id(node) in seen:
            return set()
        seen.add(id(node))
        return set().union(*(sources(i, seen) for i in node.input if i))

    names = {}
    for node in lstms:
        found = sources(node.input[0], set())
        if len(found) != 1 or (len(node.input) > 4 and node.input[4]):
            return None  # an LSTM fed by two inputs, or one that already has lengths: leave the graph alone
        (source,) = found
        names[source] = f"{source}_lengths"
        while len(node.input) < 5:
            node.input.append("")
        node.input[4] = names[source]
    for source, lengths in names.items():
        graph.input.append(helper.make_tensor_value_info(lengths, TensorProto.INT32, ["batch"]))
    return model.SerializeToString(), names


def padded_chunks(lengths: np.ndarray, max_waste: float = 0.3, min_rows: int = 8) -> list[np.ndarray]:
    """Row indices sorted by length, cut where padding would add more than max_waste of the chunk's real
    steps (a chunk keeps at least min_rows rows): few calls, little computation spent on <pad>."""
    order = np.argsort(lengths, kind="stable")
    chunks, start, steps = [], 0, 0
    for i, row in enumerate(order):
        length = int(lengths[row])
        rows = i - start + 1
        if rows > min_rows and length * rows > (1 + max_waste) * (steps + length):
            chunks.append(order[start:i])
            start, steps = i, 0
        steps += length
    chunks.append(order[start:])
    return chunks


class PaddedStudent:
    """`predict_proba(texts_a, texts_b)` as OnnxStudent's, in one onnxruntime call per batch when the graph allows."""

    def __init__(self, student: OnnxStudent, model_path, threads: int | None = None):
        import onnxruntime as ort

        self.student, self.config = student, student.config
        rewritten = _with_lengths(model_path)
        self.session, self.lengths = None, {}
        if rewritten is not None:
            self.session = ort.InferenceSession(rewritten[0], session_options(threads, spinning=False),
                                                providers=["CPUExecutionProvider"])
            self.lengths = rewritten[1]

    @property
    def padded(self) -> bool:
        return self.session is not None

    def _run(self, ids_a, len_a, ids_b, len_b) -> np.ndarray:
        feed = {}
        for name, ids, lengths in (("ids" if ids_b is None else "ids_a", ids_a, len_a), ("ids_b", ids_b, len_b)):
            if ids is None:
                continue
            batch = np.full((len(ids), int(lengths.max())), PAD_ID, dtype=np.int64)
            for row, tokens in enumerate(ids):
                batch[row, :len(tokens)] = tokens
            feed[name] = batch
            if name in self.lengths:
                feed[self.lengths[name]] = lengths.astype(np.int32)
        return self.session.run(None, feed)[0]

    def predict_logits(self, texts_a: list[str], texts_b: list[str] | None = None) -> np.ndarray:
        if self.session is None or len(texts_a) == 1 or (self.config["pair"] != (texts_b is not None)):
            return self.student.predict_logits(texts_a, texts_b)  # one row: the export's own graph, unchanged
        ids_a, len_a = self.student.encode_ids(texts_a)
        ids_b, len_b = self.student.encode_ids(texts_b) if texts_b is not None else (None, None)
        logits = np.zeros((len(texts_a), self.config["num_labels"]), dtype=np.float32)
        for rows in padded_chunks(len_a if len_b is None else np.maximum(len_a, len_b)):
            logits[rows] = self._run([ids_a[r] for r in rows], len_a[rows],
                                     None if ids_b is None else [ids_b[r] for r in rows],
                                     None if len_b is None else len_b[rows])
        return logits

    def predict_proba(self, texts_a: list[str], texts_b: list[str] | None = None) -> np.ndarray:
        return softmax(self.predict_logits(texts_a, texts_b))
