"""An exported student run with onnxruntime and `tokenizers` alone, without PyTorch: what a service ships.

An export directory (the `export` stage) holds model.onnx, model.int8.onnx, tokenizer.json and config.json.
The graph takes token ids of one length per batch (`ids`, or `ids_a` and `ids_b` for pairs), as the student
runs at inference, so sentences are grouped by length here: no final state ever reads a padding step.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from stages.errors import StageError
from stages.models.predictor import EVAL_BATCH, Predictor
from stages.models.vocab import PAD_ID, Vocab

MODEL_FILES = {"fp32": "model.onnx", "int8": "model.int8.onnx"}
ONNX_BACKENDS = {"onnx": "fp32", "onnx-int8": "int8"}  # backend name (predict --backend, serve) -> MODEL_FILES key
TOKENIZER_FILE, CONFIG_FILE = "tokenizer.json", "config.json"


def length_groups(lengths_a: np.ndarray, lengths_b: np.ndarray | None, batch_size: int) -> list[np.ndarray]:
    """Row indices in batches of at most batch_size whose rows share one length (one pair of lengths)."""
    keys = lengths_a if lengths_b is None else lengths_a * (int(lengths_b.max(initial=0)) + 1) + lengths_b
    order = np.argsort(keys, kind="stable")
    cuts = np.flatnonzero(np.diff(keys[order])) + 1
    return [chunk for group in np.split(order, cuts) if len(group)
            for chunk in np.split(group, range(batch_size, len(group), batch_size))]


def quantize_int8(fp32: Path, int8: Path) -> None:
    """onnxruntime's dynamic quantisation: int8 weights (LSTM, MatMul), activations quantised on the fly."""
    import logging

    from onnxruntime.quantization import QuantType, quantize_dynamic

    logging.getLogger().setLevel(logging.ERROR)  # it suggests a pre-processing step meant for CNNs
    quantize_dynamic(str(fp32), str(int8), weight_type=QuantType.QInt8)


def softmax(logits: np.ndarray) -> np.ndarray:
    exp = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return exp / exp.sum(axis=-1, keepdims=True)


# what predict reads from an export's config.json, and the type of each
CONFIG_KEYS = {"task": str, "label_names": list, "num_labels": int, "pair": bool, "max_length": int}


def read_config(path: Path) -> dict:
    """An export's config.json, checked: a corrupt or hand-edited file is a StageError naming it."""
    try:
        config = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise StageError(f"{path} is not readable JSON ({e}); rerun the export stage") from None
    if not isinstance(config, dict):
        raise StageError(f"{path} holds a {type(config).__name__}, not an object; rerun the export stage")
    bad = [key for key, kind in CONFIG_KEYS.items()
           if not isinstance(config.get(key), kind) or (kind is int and isinstance(config.get(key), bool))]
    if not bad and (len(config["label_names"]) != config["num_labels"] or config["num_labels"] < 2
                    or not all(isinstance(n, str) for n in config["label_names"]) or config["max_length"] < 1):
        bad = ["label_names", "num_labels", "max_length"]
    if bad:
        raise StageError(f"{path} has missing or malformed key(s) {bad} (expected {', '.join(CONFIG_KEYS)}); "
                         "rerun the export stage")
    return config


def session_options(threads: int | None = None, spinning: bool = True):
    """onnxruntime's session options: `threads` intra-op threads (None: one per core). spinning=False stops the
    threads from busy-waiting for the next call, which a service between requests should not pay for: on a
    small machine the spinning threads take the cores that parse the requests."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    if not spinning:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.add_session_config_entry("session.inter_op.allow_spinning", "0")
    return options


class OnnxStudent(Predictor):
    """Raw texts in, logits or class probabilities out, through onnxruntime (a `Predictor`)."""

    def __init__(self, model_dir: Path, variant: str = "fp32", threads: int | None = None, spinning: bool = True):
        import onnxruntime as ort

        model_dir = Path(model_dir)
        if variant not in MODEL_FILES:
            raise StageError(f"unknown ONNX variant {variant!r}; choose one of {', '.join(MODEL_FILES)}")
        needed = [MODEL_FILES[variant], TOKENIZER_FILE, CONFIG_FILE]
        missing = [name for name in needed if not (model_dir / name).is_file()]
        if missing:
            raise StageError(f"{model_dir} is not an exported student (missing {', '.join(missing)}); "
                             "run the export stage first")
        self.config = read_config(model_dir / CONFIG_FILE)
        self.vocab = Vocab.load(model_dir / TOKENIZER_FILE)
        options = session_options(threads, spinning)
        try:
            self.session = ort.InferenceSession(str(model_dir / MODEL_FILES[variant]), options,
                                                providers=["CPUExecutionProvider"])
        except Exception as e:  # onnxruntime raises its own exception types for corrupt graphs
            raise StageError(f"{model_dir / MODEL_FILES[variant]} is not a loadable ONNX model ({e})") from None

    def encode_ids(self, texts: list[str]) -> tuple[list[list[int]], np.ndarray]:
        """Each text's token ids (an empty text is read as one <pad> step, as the PyTorch student reads it)
        and their lengths."""
        ids = [row or [PAD_ID] for row in self.vocab.encode_batch(list(texts), self.config["max_length"])]
        return ids, np.array([len(row) for row in ids], dtype=np.int64)

    def compute_logits(self, texts_a: list[str], texts_b: list[str] | None,
                       batch_size: int = EVAL_BATCH) -> np.ndarray:
        ids_a, len_a = self.encode_ids(texts_a)
        ids_b, len_b = self.encode_ids(texts_b) if texts_b is not None else (None, None)
        logits = np.zeros((len(texts_a), self.config["num_labels"]), dtype=np.float32)
        for rows in length_groups(len_a, len_b, batch_size):
            feed = {"ids_a" if ids_b is not None else "ids": np.array([ids_a[r] for r in rows], dtype=np.int64)}
            if ids_b is not None:
                feed["ids_b"] = np.array([ids_b[r] for r in rows], dtype=np.int64)
            logits[rows] = self.session.run(None, feed)[0]
        return logits
