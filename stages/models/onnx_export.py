"""Turning a trained student into the files that ship: ONNX fp32 and int8, its tokenizer and config.json.

`EXPORTERS` maps a student arch to the function that writes its shippable directory, the seam through which
`export` (what ships) and `compare` (what is timed) treat every arch alike: the BiLSTM and the CNN go through
torch.onnx; an arch that ships in another format registers its own writer here.
"""

from __future__ import annotations

import json
import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from stages.errors import StageError
from stages.models.onnx_student import CONFIG_FILE, MODEL_FILES, TOKENIZER_FILE, quantize_int8
from stages.models.student_model import count_parameters

OPSET = 17


class DenseStudent(nn.Module):
    """The student's inference graph for export: ids of one length per batch in, logits out (no packing)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model.eval()

    def forward(self, ids_a: torch.Tensor, ids_b: torch.Tensor | None = None) -> torch.Tensor:
        return self.model.dense_logits(ids_a, ids_b)


def export_onnx(student, path: Path) -> None:
    """model.onnx of a loaded student (stages/student.py's Student) with dynamic batch and length (each input
    its own length for pairs), one file.

    TorchScript-based export: it maps nn.LSTM to ONNX's LSTM op with a dynamic number of steps, where the
    dynamo exporter unrolls the recurrence for the example's length."""
    graph = DenseStudent(student.model.cpu())
    pair = student.config["pair"]
    example = (torch.randint(3, 10, (2, 5)),) + ((torch.randint(3, 10, (2, 4)),) if pair else ())
    names = ["ids_a", "ids_b"] if pair else ["ids"]
    axes = {name: {0: "batch", 1: f"length_{name}"} for name in names} | {"logits": {0: "batch"}}
    with warnings.catch_warnings(), torch.inference_mode(False):
        warnings.simplefilter("ignore")
        torch.onnx.export(graph, example, str(path), input_names=names, output_names=["logits"],
                          dynamic_axes=axes, dynamo=False, opset_version=OPSET)
    _inline_shared_weights(path)


def _inline_shared_weights(path: Path) -> None:
    """The exporter passes a weight used twice (the siamese LSTM) through Identity nodes; the quantiser only
    quantises weights read straight from the initializers, so point every reader at the initializer itself."""
    import onnx

    model = onnx.load(str(path))
    graph, initializers = model.graph, {init.name for init in model.graph.initializer}
    alias = {n.output[0]: n.input[0] for n in graph.node if n.op_type == "Identity" and n.input[0] in initializers}
    if not alias or any(output.name in alias for output in graph.output):
        return
    keep = [n for n in graph.node if not (n.op_type == "Identity" and n.output[0] in alias)]
    for node in keep:
        node.input[:] = [alias.get(name, name) for name in node.input]
    del graph.node[:]
    graph.node.extend(keep)
    onnx.save(model, str(path))


def write_onnx_student(student, model_dir: Path, out_dir: Path, extra: dict | None = None) -> dict:
    """out_dir/{model.onnx, model.int8.onnx, tokenizer.json, config.json} for a loaded BiLSTM or CNN student
    (stages/student.py's Student, saved in model_dir); returns the config written."""
    out_dir = Path(out_dir)
    export_onnx(student, out_dir / MODEL_FILES["fp32"])
    quantize_int8(out_dir / MODEL_FILES["fp32"], out_dir / MODEL_FILES["int8"])
    shutil.copy(Path(model_dir) / TOKENIZER_FILE, out_dir / TOKENIZER_FILE)
    config = {**student.config, **(extra or {}), "inputs": ["ids_a", "ids_b"] if student.config["pair"] else ["ids"],
              **{f"params_{k}": v for k, v in count_parameters(student.model).items()}}
    (out_dir / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")
    return config


@dataclass(frozen=True)
class ArchExport:
    """How one student arch ships: the writer of its directory, what runs it there, and the files it needs."""

    write: Callable[..., dict]  # (loaded student, its model_dir, out_dir, extra config) -> the config written
    loader: str  # "module.Class" called as (model_dir, variant, threads=...): a predictor with predict_proba
    runtime: str  # named in compare.json
    files: dict[str, tuple[str, ...]]  # variant -> the files that ship with it (its disk size)


ONNX_STUDENT = ArchExport(write_onnx_student, "stages.models.onnx_student.OnnxStudent", "onnxruntime",
                          {v: (f, TOKENIZER_FILE, CONFIG_FILE) for v, f in MODEL_FILES.items()})


def _bag_writer(arch: str) -> Callable[..., dict]:
    """The ngram and static students' writer: their own exporter (stages/models/registry.py's EXPORTERS, the bag
    graph of stages/models/bag_onnx.py) plus `extra` in config.json."""

    def write(student, model_dir: Path, out_dir: Path, extra: dict | None = None) -> dict:
        from stages.models.registry import exporter as bag_exporter

        config = {**bag_exporter(arch)(model_dir, out_dir), **(extra or {})}
        (Path(out_dir) / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")
        return config

    return write


def _bag_export(arch: str, loader: str, side_file: str) -> ArchExport:
    return ArchExport(_bag_writer(arch), loader, "onnxruntime",
                      {v: (f, side_file, CONFIG_FILE) for v, f in MODEL_FILES.items()})


# student arch -> how it ships (what `export` writes, what `compare` times)
EXPORTERS: dict[str, ArchExport] = {
    "bilstm": ONNX_STUDENT, "cnn": ONNX_STUDENT,
    "ngram": _bag_export("ngram", "stages.models.ngram_model.OnnxNgram", "features.json"),
    "static": _bag_export("static", "stages.models.static_model.OnnxStatic", TOKENIZER_FILE),
}


def exporter(arch: str) -> ArchExport:
    if arch not in EXPORTERS:
        raise StageError(f"no exporter for student arch {arch!r}; known: {', '.join(EXPORTERS)}")
    return EXPORTERS[arch]
