"""`sources` stage: write data/sources/<task>.json for every task in `tasks`, what its download will read.

A built-in task's file names its source; a dataset declared in params.yaml's `datasets:` gets its row of the
task table (columns, label names, metrics), its declaration and the sha256 of each of its files. Each task's
`download` depends on its own file alone, so a changed file or declaration reruns that dataset's stages and
never another's: DVC cannot give one matrix stage per-task dependencies, this file stands in for them.
"""

from __future__ import annotations

import json
from pathlib import Path

from tqdm import tqdm

from stages import paths
from stages.data import datasets, unlabeled as unlabeled_text
from stages.data.io import atomic_path
from stages.data.tasks import TASKS
from stages.params import Params


def write_sources(tasks: list[str], declared: dict[str, datasets.DatasetSpec], out_dir: Path, *,
                  hub_dir: str | None = None,
                  unlabeled: dict[str, unlabeled_text.UnlabeledSpec] | None = None) -> dict[str, dict]:
    """Describe each task (reading and checking declared datasets' files) and write out_dir/<task>.json, and
    out_dir/<task>.unlabeled.json: its `unlabeled:` entry with its files' sha256 (what its augment depends on)."""
    unlabeled = unlabeled or {}
    extra = {name: unlabeled_text.describe(name, unlabeled.get(name), hub_dir) for name in tasks}
    described = {}
    for name in tqdm(tasks, desc="sources", unit="task", disable=len(tasks) < 2):
        if name in TASKS:
            described[name] = {"task": TASKS[name].to_dict(), "source": "built-in"}
        else:
            described[name] = {**datasets.describe(name, declared[name], hub_dir), "source": "datasets"}
    with atomic_path(Path(out_dir), is_dir=True) as tmp:
        for name, description in described.items():
            (tmp / f"{name}.json").write_text(json.dumps(description, indent=2) + "\n")
            (tmp / f"{name}.unlabeled.json").write_text(json.dumps(extra[name], indent=2) + "\n")
    return described


def run(params: Params) -> None:
    """The `sources` stage: data/sources/<task>.json and <task>.unlabeled.json for every task in `tasks`."""
    described = write_sources(params.tasks, params.datasets, paths.sources_dir(),
                              hub_dir=paths.outside_dir(params.data.hub_dir), unlabeled=params.unlabeled)
    for name, info in described.items():
        task = info["task"]
        print(f"{name}: {info['source']}, text {task['text_columns']}, labels {task['label_names']}")
