"""The bag students (ngram, static) behind one interface, picked by the `arch` in a directory's config.json:

- `load(model_dir)`: a trained student (the student or baseline stage's directory), numpy only;
- `load_onnx(export_dir, variant, threads, spinning)`: an exported one in onnxruntime;
- `export(model_dir, out_dir)`: write the export files (model.onnx, model.int8.onnx, the featurizer or tokenizer,
  config.json) into out_dir and return the config written.

Each loaded object has `config`, `labels`, `predict_logits(texts_a, texts_b=None, batch_size)` and
`predict_proba(...)`; none of this imports PyTorch.
"""

from __future__ import annotations

import json
from pathlib import Path

from stages.errors import StageError

BAG_ARCHS = ("ngram", "static")


def config_arch(model_dir: Path) -> str:
    """The arch a model or export directory holds (bilstm where its config.json predates the key or is unreadable:
    the BiLSTM loaders then report what is wrong)."""
    try:
        config = json.loads((Path(model_dir) / "config.json").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return "bilstm"
    return config.get("arch", "bilstm") if isinstance(config, dict) else "bilstm"


def _module(arch: str):
    if arch == "ngram":
        from stages.models import ngram_model

        return ngram_model
    if arch == "static":
        from stages.models import static_model

        return static_model
    raise StageError(f"{arch!r} is not a bag student; the bag students are {', '.join(BAG_ARCHS)}")


def load(model_dir: Path):
    arch = config_arch(model_dir)
    module = _module(arch)
    return module.NgramStudent(model_dir) if arch == "ngram" else module.StaticStudent(model_dir)


def load_onnx(export_dir: Path, variant: str = "fp32", threads: int | None = None, spinning: bool = True):
    arch = config_arch(export_dir)
    module = _module(arch)
    cls = module.OnnxNgram if arch == "ngram" else module.OnnxStatic
    return cls(export_dir, variant, threads=threads, spinning=spinning)


def export(model_dir: Path, out_dir: Path) -> dict:
    return _module(config_arch(model_dir)).export(model_dir, out_dir)
