"""`predict`: what users ship: a trained student classifying raw sentences or pairs.

Two backends: `torch` runs a student directory (models/<kind>/<task>/seed-<n>); `onnx` / `onnx-int8` run an
export directory (models/export/<task>) with onnxruntime, and never import PyTorch.
"""

from __future__ import annotations

from pathlib import Path

from stages.errors import StageError

ONNX_BACKENDS = {"onnx": "fp32", "onnx-int8": "int8"}  # backend name -> exported file (onnx_student.MODEL_FILES)
BACKENDS = ("torch", *ONNX_BACKENDS)


def split_pairs(lines: list[str], pair: bool) -> tuple[list[str], list[str] | None]:
    """Single sentences as given; pairs as 'first<TAB>second' (exactly one tab)."""
    if not pair:
        return lines, None
    parts = [line.split("\t") for line in lines]
    bad = [i + 1 for i, p in enumerate(parts) if len(p) != 2 or not p[0].strip() or not p[1].strip()]
    if bad:
        raise StageError(f"this student classifies sentence pairs: line(s) {bad[:5]} are not 'first<TAB>second'")
    return [p[0] for p in parts], [p[1] for p in parts]


def _load(model_dir: Path, backend: str, device: str):
    if backend == "torch":
        from stages.runtime import resolve_device
        from stages.student import load_student

        return load_student(model_dir, resolve_device(device))
    if backend in ONNX_BACKENDS:
        from stages.models.onnx_student import OnnxStudent

        return OnnxStudent(model_dir, ONNX_BACKENDS[backend])
    raise StageError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")


def classify(model_dir: Path, lines: list[str], device: str = "cpu", backend: str = "torch") -> list[dict]:
    student = _load(Path(model_dir), backend, device)
    label_names = student.config["label_names"]
    texts_a, texts_b = split_pairs(lines, student.config["pair"])
    probabilities = student.predict_proba(texts_a, texts_b)
    return [
        {"text": line, "label": label_names[int(p.argmax())],
         "probabilities": {name: round(float(v), 4) for name, v in zip(label_names, p)}}
        for line, p in zip(lines, probabilities)
    ]
