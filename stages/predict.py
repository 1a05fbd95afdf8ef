"""`predict`: what users ship: a trained student classifying raw sentences or pairs."""

from __future__ import annotations

from pathlib import Path

import torch

from stages.errors import StageError
from stages.student import load_student


def split_pairs(lines: list[str], pair: bool) -> tuple[list[str], list[str] | None]:
    """Single sentences as given; pairs as 'first<TAB>second' (exactly one tab)."""
    if not pair:
        return lines, None
    parts = [line.split("\t") for line in lines]
    bad = [i + 1 for i, p in enumerate(parts) if len(p) != 2 or not p[0].strip() or not p[1].strip()]
    if bad:
        raise StageError(f"this student classifies sentence pairs: line(s) {bad[:5]} are not 'first<TAB>second'")
    return [p[0] for p in parts], [p[1] for p in parts]


def classify(model_dir: Path, lines: list[str], device: torch.device) -> list[dict]:
    student = load_student(model_dir, device)
    label_names = student.config["label_names"]
    texts_a, texts_b = split_pairs(lines, student.config["pair"])
    probabilities = student.predict_proba(texts_a, texts_b)
    return [
        {"text": line, "label": label_names[int(p.argmax())],
         "probabilities": {name: round(float(v), 4) for name, v in zip(label_names, p)}}
        for line, p in zip(lines, probabilities)
    ]
