"""`predict`: what users ship: a trained student classifying raw sentences or pairs.

Two backends: `torch` runs a student directory (models/<kind>/<task>/<arch>/seed-<n>; the ngram and static
students run there in numpy, without PyTorch); `onnx` / `onnx-int8` run an export directory
(models/export/<task>) with onnxruntime, and never import PyTorch.

Input is checked line by line (docs/reliability.md): a line that is not UTF-8, an empty argument, or a pair
line without exactly one tab gets an error in its place and the other lines are still answered; blank lines of a
file are skipped (training drops empty texts too).
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

from stages import paths
from stages.errors import StageError
from stages.models.predictor import Predictor
from stages.models.registry import TORCH_ARCHS, load_predictor, student_arch


@dataclass(frozen=True)
class Item:
    """One input to classify: where it came from ("line 3", "argument 2"), its text, or why it is refused."""

    where: str
    text: str | None = None
    error: str | None = None


def _utf8_error(where: str, raw: bytes, e: UnicodeDecodeError) -> str:
    return f"{where}: not valid UTF-8 (byte 0x{raw[e.start]:02x} at column {e.start + 1})"


def read_lines(data: bytes) -> list[Item]:
    """One item per non-blank line of `data` (a file or stdin, as bytes); a UTF-8 BOM is dropped."""
    items = []
    for number, raw in enumerate(data.removeprefix(b"\xef\xbb\xbf").split(b"\n"), 1):
        raw = raw.removesuffix(b"\r")
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            items.append(Item(f"line {number}", error=_utf8_error(f"line {number}", raw, e) + "; the line is skipped"))
            continue
        if text.strip():
            items.append(Item(f"line {number}", text))
    return items


def read_arguments(texts: list[str]) -> list[Item]:
    """Command-line texts; Python hands over an invalid byte as a lone surrogate, refused here."""
    items = []
    for number, text in enumerate(texts, 1):
        where = f"argument {number}"
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            raw = text.encode("utf-8", "surrogateescape")
            try:
                raw.decode("utf-8")
            except UnicodeDecodeError as e:
                items.append(Item(where, error=_utf8_error(where, raw, e)))
                continue
        items.append(Item(where, text) if text.strip() else Item(where, error=f"{where}: empty text (nothing to classify)"))
    return items


def split_pairs(lines: list[str], pair: bool) -> tuple[list[str], list[str] | None]:
    """Single sentences as given; pairs as 'first<TAB>second' (exactly one tab)."""
    if not pair:
        return lines, None
    parts = [line.split("\t") for line in lines]
    bad = [i + 1 for i, p in enumerate(parts) if not _is_pair(p)]
    if bad:
        raise StageError(f"this student classifies sentence pairs: line(s) {bad[:5]} are not 'first<TAB>second'")
    return [p[0] for p in parts], [p[1] for p in parts]


def _is_pair(parts: list[str]) -> bool:
    return len(parts) == 2 and bool(parts[0].strip()) and bool(parts[1].strip())


def _load(model_dir: Path, backend: str, device: str) -> Predictor:
    if backend == "torch" and student_arch(model_dir) in TORCH_ARCHS:
        from stages.runtime import resolve_device  # imports PyTorch: only for the torch backend

        return load_predictor(model_dir, backend, resolve_device(device))
    return load_predictor(model_dir, backend)


def answer(model_dir: Path, items: list[Item], device: str = "cpu", backend: str = "torch") -> list[dict]:
    """One row per item, in order: {"text", "label", "probabilities"}, or {"input", "error"} for a refused one."""
    student = _load(Path(model_dir), backend, device)
    label_names, pair = student.labels, student.pair
    checked = []
    for item in items:
        if item.error is None and pair and not _is_pair(item.text.split("\t")):
            item = Item(item.where, error=f"{item.where}: this student classifies sentence pairs: "
                                          "expected 'first<TAB>second'")
        checked.append(item)
    good = [item.text for item in checked if item.error is None]
    probabilities = iter([])
    if good:
        texts_a, texts_b = split_pairs(good, pair)
        probabilities = iter(student.predict_proba(texts_a, texts_b))
    rows = []
    for item in checked:
        if item.error is not None:
            rows.append({"input": item.where, "error": item.error})
            continue
        p = next(probabilities)
        rows.append({"text": item.text, "label": label_names[int(p.argmax())],
                     "probabilities": {name: round(float(v), 4) for name, v in zip(label_names, p)}})
    return rows


def _read_items(texts: list[str], file: Path | None) -> list[Item]:
    """The arguments, then the lines of `file` (- = stdin)."""
    items = read_arguments(list(texts))
    if file is not None:
        try:
            content = sys.stdin.buffer.read() if str(file) == "-" else Path(file).read_bytes()
        except OSError as e:
            raise StageError(f"cannot read {file}: {e.strerror}") from None
        items += read_lines(content)
    if not items:
        raise StageError("nothing to classify: give sentences as arguments or --file")
    return items


def _print_row(row: dict, json_lines: bool) -> None:
    if json_lines:
        print(json.dumps(row))
    elif "error" in row:
        print(f"ERROR\t{row['error']}")
    else:
        probs = "  ".join(f"{name}={p:.3f}" for name, p in row["probabilities"].items())
        print(f"{row['label']}\t{probs}\t{row['text']}")


def run(texts: list[str], model: Path | None, backend: str, file: Path | None, json_lines: bool, device: str) -> None:
    """`predict`: classify the arguments and the lines of `file`, one printed row each; a StageError after the
    answers when any input was refused. model None: models/student/rt/seed-1 (torch) or models/export/rt."""
    items = _read_items(texts, file)
    if model is None:
        model = paths.run_model_dir("student", "rt", "bilstm", 1) if backend == "torch" else paths.model_dir("export", "rt")
    rows = answer(model, items, device, backend)
    for row in rows:
        _print_row(row, json_lines)
    refused = sum("error" in row for row in rows)
    if refused:
        raise StageError(f"{refused} of {len(rows)} input(s) refused (their ERROR rows say why); the others were answered")
