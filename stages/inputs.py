"""`inputs` stage: what one student arch needs before training, built once per task and shared by its student
and baseline runs (every seed), and by `compare`'s alternatives:

- ngram: the featurizer (stages/models/ngram_model.py), its vocabulary and idf fitted on the training split;
- static: the static embeddings made from the task's fine-tuned teacher, for the distilled student, and in base/
  the same made from the pretrained encoder the teacher started from (`teacher.model`), for the models that use
  no teacher: the hard-label static student and compare's static + LR (stages/models/static_model.py);
- bilstm, cnn: nothing beyond their knobs (their vocabulary and GloVe rows are built in the student stage).

Every arch's directory also holds knobs.json, that arch's knobs, so its student and baseline depend on them alone.
"""

from __future__ import annotations

import json
from pathlib import Path

from stages.data.io import RAW_SCHEMA, atomic_path, read_parquet
from stages.data.tasks import Task
from stages import paths
from stages.errors import StageError
from stages.params import ARCHS, Params, arch_knobs
from stages.runtime import resolve_device

KNOBS_FILE = "knobs.json"


def _train_texts(task: Task, raw_dir: Path) -> list[str]:
    path = Path(raw_dir) / "train.parquet"
    table = read_parquet(path, RAW_SCHEMA, hint="run the download stage first")
    texts = table["text_a"].to_pylist()
    if task.is_pair:
        texts += [t for t in table["text_b"].to_pylist() if t is not None]
    if not texts:
        raise StageError(f"{path} has no rows to fit the n-gram features on")
    return texts


def build_inputs(task: Task, arch: str, raw_dir: Path, teacher_dir: Path, out_dir: Path, *, knobs: dict,
                 device=None, base_model: str | None = None) -> dict:
    """Write out_dir for one task and arch; returns a summary (printed by the CLI)."""
    with atomic_path(Path(out_dir), is_dir=True) as tmp:
        (tmp / KNOBS_FILE).write_text(json.dumps({"arch": arch, "task": task.name, "knobs": knobs}, indent=2) + "\n")
        if arch == "ngram":
            from stages.models.ngram_model import FEATURES_FILE, NgramFeaturizer

            featurizer = NgramFeaturizer.fit(_train_texts(task, raw_dir), knobs)
            featurizer.save(tmp / FEATURES_FILE)
            return {"arch": arch, "columns": featurizer.width,
                    "analyzers": {name: len(v) for name, v in featurizer.vocabularies.items()}}
        if arch == "static":
            from stages.models.static_model import build_embeddings, embeddings_dir

            if base_model is None:
                raise StageError("static inputs: name the pretrained encoder (teacher.model) for the tables of the "
                                 "models that use no teacher")
            info = build_embeddings(teacher_dir, embeddings_dir(tmp, teacher=True), device=device,
                                    **_table_knobs(knobs))
            return {**info, "base": pretrained_table(base_model, embeddings_dir(tmp, teacher=False), knobs=knobs,
                                                     device=device)}
    return {"arch": arch}


def _table_knobs(knobs: dict) -> dict:
    return {key: knobs[key] for key in ("dims", "weighting", "batch_size", "vocab_size")}


def pretrained_table(model: str, out_dir: Path, *, knobs: dict, device) -> dict:
    """Model2Vec's table of the pretrained encoder `model` (teacher.model: a packaged name, path or Hub id) with
    the `static:` knobs, into out_dir: what the models without a teacher read. Returns its info."""
    from stages.models.static_model import build_embeddings
    from stages.models.teacher_model import resolve_model

    base = resolve_model(model)
    return build_embeddings(base.location, out_dir, device=device, source=f"teacher.model {model!r} ({base.origin})",
                            hint="the pretrained encoder named by teacher.model", **_table_knobs(knobs))


def run(task: Task, params: Params, arch: str) -> None:
    """The `inputs` stage for one task and arch: models/inputs/<task>/<arch>/."""
    if arch not in ARCHS:
        raise StageError(f"--arch {arch!r}: choose one of {', '.join(ARCHS)}")
    summary = build_inputs(task, arch, paths.raw_dir(task.name), paths.model_dir("teacher", task.name),
                           paths.inputs_dir(task.name, arch), knobs=arch_knobs(params, arch),
                           device=resolve_device(params.device), base_model=params.teacher.model)
    print(f"inputs {task.name} {arch}: {summary}")
