"""Load any trained student as a `Predictor` (stages/models/predictor.py): the one seam between the stages
that run students (evaluate, export, predict) and the architectures.

Backends: `torch` runs a student directory (models/<kind>/<task>/seed-<n>, written by the student and baseline
stages) with the code of its architecture; `onnx` / `onnx-int8` run an export directory (models/export/<task>)
with onnxruntime alone, whatever the architecture, and never import PyTorch.

Adding an architecture: write its module under stages/models/ with a function `(model_dir, device) -> Predictor`
that rebuilds a saved student from its directory, and add one entry to `STUDENTS` below, keyed by the
`student.arch` value that training writes into the directory's config.json:

    "ngram": "stages.models.ngram_model:load_student",

Entries are "module:function" strings, imported only when that architecture is loaded (so an ONNX run never
imports PyTorch). tests/test_dvc_deps.py reads these strings as imports, so dvc.yaml's code deps stay right.
"""

from __future__ import annotations

import importlib
import json
from pathlib import Path

from stages.errors import StageError
from stages.models.onnx_student import ONNX_BACKENDS, OnnxStudent
from stages.models.predictor import Predictor

# arch -> "module:function" loading a student directory of that architecture
STUDENTS = {
    "bilstm": "stages.models.torch_student:load_student",
    "cnn": "stages.models.torch_student:load_student",
    "ngram": "stages.models.ngram_model:NgramStudent",  # numpy and scipy: no PyTorch
    "static": "stages.models.static_model:StaticStudent",  # numpy: no PyTorch
}
TORCH_ARCHS = ("bilstm", "cnn")  # the archs whose `torch` backend needs PyTorch (a device)
# arch -> "module:function" (export_dir, variant, threads, spinning) -> Predictor, for archs whose export is not
# OnnxStudent's token-id graph (docs/students.md: the bag graph of stages/models/bag_onnx.py)
ONNX_STUDENTS = {
    "ngram": "stages.models.ngram_model:OnnxNgram",
    "static": "stages.models.static_model:OnnxStatic",
}
# arch -> "module:function" (model_dir, out_dir) -> config: writes the export files of a trained student of that
# arch into out_dir (bilstm and cnn: stages/export.py's export_onnx, which needs PyTorch)
EXPORTERS = {
    "ngram": "stages.models.ngram_model:export",
    "static": "stages.models.static_model:export",
}
BACKENDS = ("torch", *ONNX_BACKENDS)
DEFAULT_ARCH = "bilstm"  # what a config.json without `arch` (written before the CNN existed) holds


def student_arch(model_dir: Path) -> str:
    """The `arch` in model_dir/config.json; the default when the file or key is missing (the loader then says
    what is wrong with the directory)."""
    try:
        config = json.loads((Path(model_dir) / "config.json").read_text())
    except (OSError, ValueError):
        return DEFAULT_ARCH
    return config.get("arch", DEFAULT_ARCH) if isinstance(config, dict) else DEFAULT_ARCH


def _function(entry: str):
    module, function = entry.split(":")
    return getattr(importlib.import_module(module), function)


def exporter(arch: str):
    """The export function of `arch` ((model_dir, out_dir) -> config), or None where stages/export.py exports it."""
    return _function(EXPORTERS[arch]) if arch in EXPORTERS else None


def load_predictor(model_dir: Path, backend: str = "torch", device="cpu", threads: int | None = None,
                   spinning: bool = True) -> Predictor:
    """The student in model_dir as a Predictor. device: a torch device for the `torch` backend (ONNX runs on CPU);
    threads, spinning: onnxruntime's (onnx_student.session_options)."""
    if backend in ONNX_BACKENDS:
        arch = student_arch(model_dir)
        if arch in ONNX_STUDENTS:
            return _function(ONNX_STUDENTS[arch])(Path(model_dir), ONNX_BACKENDS[backend], threads, spinning)
        return OnnxStudent(Path(model_dir), ONNX_BACKENDS[backend], threads=threads, spinning=spinning)
    if backend != "torch":
        raise StageError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    arch = student_arch(model_dir)
    if arch not in STUDENTS:
        raise StageError(f"{Path(model_dir) / 'config.json'}: unknown student arch {arch!r}; known: {', '.join(STUDENTS)}")
    return _function(STUDENTS[arch])(Path(model_dir), device)
