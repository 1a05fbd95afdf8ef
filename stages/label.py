"""`label` stage: the teacher's logits for every transfer-set row, stored beside the text.

Labeling millions of rows takes hours on a CPU, so the work is cut into shards that are written as
they finish, under a key made of the teacher's and the input's hashes: a killed run restarted on the
same inputs skips the finished shards, and the output appears only once, whole.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from tqdm.auto import tqdm

from stages.errors import StageError
from stages.data.locks import RunLock
from stages.data.io import LABELED_SCHEMA, TRANSFER_SCHEMA, input_key, read_parquet, remove_other_keys, write_parquet
from stages.data.tasks import Task
from stages.models.precision import with_precision
from stages.models.teacher_model import batch_logits, encode_pairs, length_sorted_batches, load_teacher

if TYPE_CHECKING:
    from stages.ray_labeling import RaySettings


def labeling_key(transfer_path: Path, teacher_dir: Path, max_length: int, precision: str = "fp32") -> str:
    """Hash of everything that decides the logits: the transfer file, the teacher's files, max_length, precision."""
    teacher_files = sorted(p for p in Path(teacher_dir).rglob("*") if p.is_file())
    return input_key([transfer_path, *teacher_files], {"max_length": max_length, "precision": precision})


def teacher_num_labels(teacher_dir: Path) -> int:
    config = Path(teacher_dir) / "config.json"
    if not config.exists():
        raise StageError(f"no trained teacher in {teacher_dir}: run the teacher stage first")
    try:
        from transformers import AutoConfig

        return AutoConfig.from_pretrained(teacher_dir).num_labels
    except (OSError, ValueError) as e:
        raise StageError(f"{config}: not a loadable model config ({str(e).splitlines()[0]})") from None


def _local_shard_logits(pending: list[pa.Table], teacher_dir: Path, *, is_pair: bool, batch_size: int,
                        max_length: int, device: torch.device, progress, precision: str = "fp32") -> Iterator[np.ndarray]:
    """The local engine: each shard's logits in this process, the teacher loaded once (only if work is left)."""
    if not pending:
        return
    tokenizer, model = load_teacher(teacher_dir, device)
    model = with_precision(model, precision, device)  # label.precision: fp32 | bf16 | int8
    for rows in pending:
        texts_b = rows["text_b"].to_pylist() if is_pair else None
        encodings = encode_pairs(tokenizer, rows["text_a"].to_pylist(), texts_b, max_length)
        batches = length_sorted_batches(encodings, batch_size, tokenizer.pad_token_id)
        yield batch_logits(model, batches, rows.num_rows, device, progress)


def label(task: Task, transfer_path: Path, teacher_dir: Path, out_path: Path, *, device: torch.device,
          batch_size: int = 256, shard_rows: int = 16384, max_length: int = 128,
          cache_root: Path = Path("data/cache/label"), precision: str = "fp32",
          ray: "RaySettings | None" = None) -> dict:
    """Write out_path = the transfer set + `logits` (float32 list) + `teacher_label`; return timings.

    ray=None labels in this process; RaySettings label on Ray (stages/ray_labeling.py), same shards and output.
    """
    lock = RunLock(cache_root, task.name, f"label {task.name}")  # one run per task shares the cache; held to return
    transfer = read_parquet(transfer_path, TRANSFER_SCHEMA, hint="run the augment stage first")
    if transfer.num_rows == 0:
        raise StageError(f"{transfer_path}: the transfer set is empty")
    num_labels = teacher_num_labels(teacher_dir)
    if num_labels != task.num_labels:
        raise StageError(f"teacher in {teacher_dir} has {num_labels} labels, task {task.name} has {task.num_labels}")

    key = labeling_key(transfer_path, teacher_dir, max_length, precision)
    cache = Path(cache_root) / f"{task.name}-{key}"
    remove_other_keys(cache_root, task.name, keep=cache)  # shards of other inputs can never be reused
    cache.mkdir(parents=True, exist_ok=True)

    n_rows = transfer.num_rows
    n_shards = -(-n_rows // shard_rows)
    start, reused, labeled = time.perf_counter(), 0, 0
    with tqdm(total=n_rows, desc=f"label {task.name}", unit="row", smoothing=0.05) as progress:
        pending = []  # (shard file, rows) still to label
        for shard in range(n_shards):
            shard_path = cache / f"shard-{shard:05d}-of-{n_shards:05d}.parquet"
            rows = transfer.slice(shard * shard_rows, shard_rows)
            if shard_path.exists():  # written atomically, so present means complete
                reused += rows.num_rows
                progress.update(rows.num_rows)
            else:
                pending.append((shard_path, rows))
        if ray is None:
            shard_logits = _local_shard_logits([rows for _, rows in pending], teacher_dir, is_pair=task.is_pair,
                                               batch_size=batch_size, max_length=max_length, device=device,
                                               progress=progress, precision=precision)
        else:
            from stages.ray_labeling import ray_shard_logits  # only here: the default run never imports Ray

            shard_logits = ray_shard_logits([rows for _, rows in pending], teacher_dir, is_pair=task.is_pair,
                                            batch_size=batch_size, max_length=max_length, settings=ray,
                                            progress=progress, precision=precision)
        for (shard_path, rows), logits in zip(pending, shard_logits):
            write_parquet(pa.table({"logits": pa.FixedSizeListArray.from_arrays(logits.ravel(), task.num_labels)
                                    .cast(pa.list_(pa.float32()))}), shard_path)
            labeled += rows.num_rows
    seconds = time.perf_counter() - start
    originals = np.asarray(transfer["is_original"])

    logits = pa.concat_arrays([
        chunk for path in sorted(cache.glob("shard-*.parquet")) for chunk in pq.read_table(path)["logits"].chunks
    ])
    if len(logits) != n_rows:
        raise StageError(f"label cache {cache} holds {len(logits)} rows, expected {n_rows}; delete it and rerun")
    argmax = np.asarray(logits.flatten()).reshape(n_rows, task.num_labels).argmax(1)
    table = transfer.append_column(LABELED_SCHEMA.field("logits"), logits).append_column(
        LABELED_SCHEMA.field("teacher_label"), pa.array(argmax, pa.int64()))
    write_parquet(table, out_path)
    shutil.rmtree(cache, ignore_errors=True)
    lock.release()
    return {
        "rows": n_rows,
        "rows_labeled_now": labeled,
        "rows_reused_from_cache": reused,
        "seconds": round(seconds, 2),
        "rows_per_second": round(labeled / seconds, 1) if labeled else None,
        "batch_size": batch_size,
        "device": str(device),
        "precision": precision,
        "engine": "local" if ray is None else "ray",
        # how often the teacher agrees with the gold label on the original training rows
        "teacher_train_accuracy": round(float((argmax[originals] == np.asarray(transfer["label"])[originals]).mean()), 6)
        if originals.any() else None,
    }

