"""`teacher` stage: fine-tune a BERT-style encoder per task and keep the best dev checkpoint.

Built on transformers' Trainer, so the same code runs on CPU, one GPU, or data-parallel under
`accelerate launch` / `torchrun` with no change (see the README). With teacher.processes > 1 the stage
launches itself under torch's own launcher (`launch_data_parallel`), so dvc.yaml's command stays the same.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from stages import paths
from stages.errors import StageError
from stages.data.io import RAW_SCHEMA, atomic_path, read_parquet, write_json
from stages.report.metrics import task_metrics
from stages.params import Params, TeacherParams
from stages.runtime import resolve_device
from stages.data.tasks import Task
from stages.models.precision import Resolved, resolve_precision, say
from stages.models.teacher_model import encode_pairs, load_for_classification, resolve_model


class _Encoded(torch.utils.data.Dataset):
    """Tokenised examples as dicts (input_ids, attention_mask, labels); padded per batch later."""

    def __init__(self, encodings: dict, labels: np.ndarray, by_length: bool = False):
        self.rows = [
            {**{k: v[i] for k, v in encodings.items()}, "labels": int(labels[i])} for i in range(len(labels))
        ]
        if by_length:  # evaluation: batches of similar lengths pad little (metrics do not depend on the order)
            self.rows.sort(key=lambda row: len(row["input_ids"]))

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict:
        return self.rows[i]


def _read_split(raw_dir: Path, split: str, limit: int | None = None) -> pd.DataFrame:
    df = read_parquet(Path(raw_dir) / f"{split}.parquet", RAW_SCHEMA, hint="run the download stage first").to_pandas()
    return df.head(limit) if limit else df


def _dataset(tokenizer, df: pd.DataFrame, task: Task, max_length: int, by_length: bool = False) -> _Encoded:
    texts_b = df["text_b"].tolist() if task.is_pair else None
    return _Encoded(encode_pairs(tokenizer, df["text_a"].tolist(), texts_b, max_length), df["label"].to_numpy(),
                    by_length)


def _live_callbacks(live_dir: Path | None) -> list:
    """DVCLive's transformers callback writing the training curves to live_dir (none: no curves)."""
    if live_dir is None:
        return []
    from dvclive import Live
    from transformers.integrations import DVCLiveCallback

    return [DVCLiveCallback(live=Live(dir=str(live_dir), save_dvc_exp=False, dvcyaml=None))]


def _training_arguments(params: TeacherParams, scratch: Path, lr: float, device: torch.device, seed: int,
                        precision: Resolved, eval_steps: int, selection: str, world: int):
    """transformers' TrainingArguments for one teacher run: the paper's dev selection, length-grouped batches,
    bf16 autocast where teacher.precision resolved to bf16."""
    from transformers import TrainingArguments

    return TrainingArguments(
        output_dir=str(scratch),
        num_train_epochs=params.epochs,
        learning_rate=lr,
        per_device_train_batch_size=params.batch_size // world,
        per_device_eval_batch_size=max(64, params.batch_size),
        warmup_steps=params.warmup_ratio,  # a float below 1 is a ratio of all steps
        weight_decay=params.weight_decay,
        lr_scheduler_type="linear",
        eval_strategy="steps",
        eval_steps=eval_steps,
        save_strategy="steps",
        save_steps=eval_steps,
        save_total_limit=1,
        save_only_model=True,
        load_best_model_at_end=True,  # the paper's model selection: the best dev checkpoint
        metric_for_best_model=selection,
        greater_is_better=True,
        logging_steps=max(1, eval_steps // 4),
        train_sampling_strategy="group_by_length",  # similar lengths per batch: far less padding on CPU
        seed=seed,
        data_seed=seed,
        use_cpu=device.type == "cpu",
        bf16=precision.precision == "bf16",  # torch.autocast(bfloat16) around forward passes; fp32 weights
        report_to="none",
        dataloader_num_workers=0,
        ddp_backend=("gloo" if device.type == "cpu" else "nccl") if world > 1 else None,
    )


def _train_once(task: Task, resolved, raw_dir: Path, scratch: Path, params: TeacherParams, lr: float,
                device: torch.device, seed: int, live_dir: Path | None, precision: Resolved):
    from transformers import DataCollatorWithPadding, Trainer, set_seed

    set_seed(seed)
    tokenizer, model = load_for_classification(resolved, task.num_labels, task.label_names)
    train = _dataset(tokenizer, _read_split(raw_dir, "train", params.max_train_examples), task, params.max_length)
    evals = {name: _dataset(tokenizer, _read_split(raw_dir, name), task, params.max_length, by_length=True)
             for name in task.eval_splits}

    world = int(os.environ.get("WORLD_SIZE", "1"))  # data-parallel: teacher.batch_size stays the global batch
    batches_per_epoch = max(1, -(-len(train) // params.batch_size))
    # rounded up, so the last check of the run falls on its last step: transformers also checks at the last step
    # when it is not a multiple of eval_steps, and 319 // 2 = 159 cost a third dev pass at step 319 after 318
    eval_steps = max(1, -(-batches_per_epoch // params.evals_per_epoch))
    selection = f"eval_{task.selection_split}_{task.metrics[0]}"

    def compute_metrics(prediction) -> dict:
        return task_metrics(task, prediction.label_ids, prediction.predictions.argmax(-1))

    args = _training_arguments(params, scratch, lr, device, seed, precision, eval_steps, selection, world)
    callbacks = _live_callbacks(live_dir)
    trainer = Trainer(model=model, args=args, data_collator=DataCollatorWithPadding(tokenizer),
                      train_dataset=train, eval_dataset=evals, processing_class=tokenizer,
                      compute_metrics=compute_metrics, callbacks=callbacks)
    trainer.train()
    # the kept checkpoint's scores were logged when it was evaluated: no second pass over the eval splits
    best = {k: v for entry in trainer.state.log_history if entry.get("step") == trainer.state.best_global_step
            for k, v in entry.items()}
    keys = {name: {m: f"eval_{name}_{m}" for m in task.metrics} for name in task.eval_splits}
    if not all(key in best for name in keys for key in keys[name].values()):  # no dev check ran: evaluate now
        best = {f"eval_{k}": v for name in task.eval_splits
                for k, v in trainer.evaluate(evals[name], metric_key_prefix=name).items()}
    dev = {name: {m: round(best[key], 6) for m, key in keys[name].items()} for name in task.eval_splits}
    return trainer, dev, len(train), trainer.state.best_global_step


def train_teacher(task: Task, raw_dir: Path, out_dir: Path, *, params: TeacherParams, device: torch.device,
                  seed: int = 42, live_dir: Path | None = None) -> dict:
    """Fine-tune params.model on raw_dir/train.parquet, select on dev, save to out_dir (save_pretrained).

    With params.lr_grid, one run per learning rate and the best on the selection split is kept.
    Returns the teacher's metrics (dev scores, parameter count, time, model identity).
    """
    resolved = resolve_model(params.model)
    precision = resolve_precision(params.precision, device, "teacher.precision")
    if os.environ.get("RANK", "0") != "0":
        live_dir = None  # one process logs and saves; the others only train
    else:
        say(precision)  # one line when bf16 is asked for where it is emulated
    out_dir = Path(out_dir)
    scratch = out_dir.parent / f".{out_dir.name}.checkpoints"  # the same on every rank
    start = time.perf_counter()
    best = None
    try:
        for lr in params.lr_grid or [params.lr]:
            trainer, dev, n_train, best_step = _train_once(
                task, resolved, raw_dir, scratch / f"lr{lr:g}", params, lr, device, seed,
                live_dir if len(params.lr_grid) <= 1 else None, precision)
            score = dev[task.selection_split][task.metrics[0]]
            if best is None or score > best["score"]:  # keep only the best run's model in memory
                best = dict(score=score, trainer=trainer, dev=dev, lr=lr, best_step=best_step)
        trainer = best["trainer"]
        if trainer.is_world_process_zero():
            with atomic_path(out_dir, is_dir=True) as tmp:
                trainer.save_model(str(tmp))  # model + tokenizer, loadable with plain transformers
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    model = trainer.model
    revision = getattr(model.config, "_commit_hash", None)
    return {
        **best["dev"],
        "params": int(sum(p.numel() for p in model.parameters())),
        "train_seconds": round(time.perf_counter() - start, 1),
        "train_examples": n_train,
        "lr": best["lr"],
        "lr_grid": params.lr_grid,
        "best_step": best["best_step"],
        "epochs": params.epochs,
        "model": resolved.name,
        "model_source": resolved.origin,
        # a Hub commit, or the path as given; packaged models are identified by package and version
        "model_revision": revision if resolved.origin == "hub" else None,
        "device": str(device),
        "precision": precision.precision,  # what ran: teacher.precision `auto` resolved on this device
        "precision_requested": precision.requested,
        "native_bf16": precision.native_bf16,
        "processes": int(os.environ.get("WORLD_SIZE", "1")),  # data-parallel ranks (teacher.processes)
    }


def launch_data_parallel(processes: int, device: torch.device, stage_args: list[str], batch_size: int) -> None:
    """Rerun `python -m stages teacher <stage_args>` as `processes` data-parallel ranks through
    torch.distributed.run (gloo on CPU, nccl on CUDA: one process per GPU). Rank 0 writes the model and metrics."""
    if batch_size % processes:
        raise StageError(f"teacher.batch_size={batch_size} must be a multiple of teacher.processes={processes} "
                         "(it is the global batch, split evenly between the processes)")
    if device.type == "cuda" and processes > torch.cuda.device_count():
        raise StageError(f"teacher.processes={processes} but only {torch.cuda.device_count()} CUDA GPU(s) are visible")
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={processes}",
               "-m", "stages", "teacher", *stage_args]
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // processes)))}
    result = subprocess.run(command, env=env)
    if result.returncode != 0:
        raise StageError(f"teacher.processes={processes}: the data-parallel run failed (exit code {result.returncode}); "
                         "see the ranks' errors above")


def run(task: Task, params: Params, params_file: Path) -> None:
    """The `teacher` stage for one task: models/teacher/<task>/ and metrics/<task>/teacher.json (and the DVCLive
    curves), from params.yaml's `teacher`, `seed` and `device`. With teacher.processes > 1 and not yet launched
    as ranks, it relaunches itself (`launch_data_parallel`) with the same parameter file."""
    device = resolve_device(params.device)
    if params.teacher.processes > 1 and "LOCAL_RANK" not in os.environ:
        launch_data_parallel(params.teacher.processes, device, ["--task", task.name, "--params", str(params_file)],
                             params.teacher.batch_size)
        return
    metrics = train_teacher(task, paths.raw_dir(task.name), paths.model_dir("teacher", task.name),
                            params=params.teacher, device=device, seed=params.seed,
                            live_dir=paths.metrics_dir(task.name) / "teacher_live")
    if os.environ.get("RANK", "0") == "0":  # the main process writes the metrics
        write_json({"task": task.name, **metrics}, paths.metrics_dir(task.name) / "teacher.json")
        print(f"teacher {task.name}: {metrics}")
