"""The fine-tuned teacher as a user would ship it: ONNX fp32 and onnxruntime's dynamic int8, dynamic padding.

`export_teacher` writes teacher.onnx (torch.onnx, dynamic batch and length) and teacher.int8.onnx
(quantize_dynamic: int8 weights, activations quantised on the fly) with the teacher's tokenizer.json.
`OnnxTeacher` runs one of them with `tokenizers` and onnxruntime alone (no PyTorch): sentences are sorted
by length and each batch is padded only to its own longest row, the fair way to time a transformer on a CPU.
"""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import numpy as np

from stages.errors import StageError
from stages.data.text import for_teacher
from stages.models.onnx_student import quantize_int8, session_options, softmax

TEACHER_FILES = {"fp32": "teacher.onnx", "int8": "teacher.int8.onnx"}
TOKENIZER_FILE, CONFIG_FILE = "tokenizer.json", "config.json"
OPSET = 17


def export_teacher(teacher_dir: Path, out_dir: Path, max_length: int) -> None:
    """out_dir/{teacher.onnx, teacher.int8.onnx, tokenizer.json, config.json} from a save_pretrained teacher."""
    import torch

    from stages.models.teacher_model import ResolvedModel, load_for_classification

    teacher_dir, out_dir = Path(teacher_dir), Path(out_dir)
    if not (teacher_dir / "config.json").is_file():
        raise StageError(f"no trained teacher in {teacher_dir}: run the teacher stage first")
    if not (teacher_dir / TOKENIZER_FILE).is_file():
        raise StageError(f"{teacher_dir} has no {TOKENIZER_FILE} (a fast tokenizer's vocabulary), which the ONNX "
                         "teacher needs; retrain the teacher with a model that has a fast tokenizer")
    tokenizer, model = load_for_classification(ResolvedModel(str(teacher_dir), str(teacher_dir), "local path"))
    model = model.eval()
    names = [n for n in ("input_ids", "attention_mask", "token_type_ids") if n in tokenizer.model_input_names]
    example = tokenizer(["a short example", "another one"], return_tensors="pt", padding=True)
    axes = {n: {0: "batch", 1: "length"} for n in names} | {"logits": {0: "batch"}}
    with warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, tuple(example[n] for n in names), str(out_dir / TEACHER_FILES["fp32"]),
                          input_names=names, output_names=["logits"], dynamic_axes=axes, dynamo=False,
                          opset_version=OPSET)
    quantize_int8(out_dir / TEACHER_FILES["fp32"], out_dir / TEACHER_FILES["int8"])
    shutil.copy(teacher_dir / TOKENIZER_FILE, out_dir / TOKENIZER_FILE)
    config = {"inputs": names, "max_length": max_length, "num_labels": model.config.num_labels,
              "pad_token_id": tokenizer.pad_token_id, "mask_token": tokenizer.mask_token,
              "unk_token": tokenizer.unk_token}
    (out_dir / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")


class OnnxTeacher:
    """Texts in, logits or probabilities out: teacher.onnx or teacher.int8.onnx on onnxruntime."""

    runtime = "onnxruntime"

    def __init__(self, export_dir: str | Path, variant: str = "int8", threads: int | None = None):
        import onnxruntime as ort
        from tokenizers import Tokenizer

        export_dir = Path(export_dir)
        self.config = json.loads((export_dir / CONFIG_FILE).read_text())
        self.tokenizer = Tokenizer.from_file(str(export_dir / TOKENIZER_FILE))
        self.tokenizer.no_padding()
        self.tokenizer.enable_truncation(self.config["max_length"])
        self.session = ort.InferenceSession(str(export_dir / TEACHER_FILES[variant]), session_options(threads),
                                            providers=["CPUExecutionProvider"])

    def _encode(self, texts_a: list[str], texts_b: list[str] | None):
        c = self.config
        a = [for_teacher(t, c["mask_token"], c["unk_token"]) for t in texts_a]
        inputs = a if texts_b is None else list(zip(a, [for_teacher(t, c["mask_token"], c["unk_token"])
                                                         for t in texts_b]))
        return self.tokenizer.encode_batch(inputs)

    def predict_logits(self, texts_a: list[str], texts_b: list[str] | None = None, batch_size: int = 512) -> np.ndarray:
        encodings = self._encode(list(texts_a), list(texts_b) if texts_b is not None else None)
        lengths = np.fromiter((len(e.ids) for e in encodings), dtype=np.int64, count=len(encodings))
        order = np.argsort(lengths, kind="stable")
        out = np.zeros((len(encodings), self.config["num_labels"]), dtype=np.float32)
        for start in range(0, len(order), batch_size):
            rows = order[start:start + batch_size]
            width = int(lengths[rows].max())
            feed = {name: np.full((len(rows), width), self.config["pad_token_id"] if name == "input_ids" else 0,
                                  dtype=np.int64) for name in self.config["inputs"]}
            for j, row in enumerate(rows):
                e, n = encodings[row], lengths[row]
                feed["input_ids"][j, :n] = e.ids
                if "attention_mask" in feed:
                    feed["attention_mask"][j, :n] = 1
                if "token_type_ids" in feed:
                    feed["token_type_ids"][j, :n] = e.type_ids
            out[rows] = self.session.run(None, feed)[0]
        return out

    def predict_proba(self, texts_a: list[str], texts_b: list[str] | None = None, batch_size: int = 512) -> np.ndarray:
        return softmax(self.predict_logits(texts_a, texts_b, batch_size))
