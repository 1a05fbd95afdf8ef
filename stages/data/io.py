"""File I/O shared by the stages: validated Parquet reads, atomic writes, small JSON metrics.

Every output is written to a temporary sibling and renamed into place, so a stage that fails or
is killed never leaves a half-written file where the next stage (or DVC) would trust it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

import pyarrow as pa
import pyarrow.parquet as pq

from stages.errors import StageError

# One schema for data/raw/<task>/<split>.parquet, whatever the task.
RAW_SCHEMA = pa.schema(
    [
        pa.field("text_a", pa.string(), nullable=False),
        pa.field("text_b", pa.string()),  # null for single-sentence tasks
        pa.field("label", pa.int64(), nullable=False),  # -1 where unknown (unlabeled test sets)
        pa.field("idx", pa.int64(), nullable=False),  # the example's id in its source
    ]
)

# data/transfer/<task>.parquet: the original training examples, their augmented variants, then unlabeled text.
TRANSFER_SCHEMA = pa.schema(
    [
        pa.field("text_a", pa.string(), nullable=False),
        pa.field("text_b", pa.string()),
        pa.field("is_original", pa.bool_(), nullable=False),
        pa.field("label", pa.int64(), nullable=False),  # the hard label of originals, -1 for the other rows
        # raw `idx` of the example it came from; unlabeled rows: their 1-based position in the `unlabeled:` files
        # (an augmented variant of one: minus that position)
        pa.field("source_idx", pa.int64(), nullable=False),
        pa.field("source", pa.string(), nullable=False),  # original | augmented | unlabeled
    ]
)

# data/labeled/<task>.parquet: the transfer set plus the teacher's logits and argmax.
LABELED_SCHEMA = TRANSFER_SCHEMA.append(pa.field("logits", pa.list_(pa.float32()), nullable=False)).append(
    pa.field("teacher_label", pa.int64(), nullable=False)
)


@contextlib.contextmanager
def atomic_path(final: Path, is_dir: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside `final`; on success move it over `final`, else delete it."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent))
    target = tmp / final.name
    if is_dir:
        target.mkdir()
    try:
        yield target
        if final.is_dir() and not final.is_symlink():
            shutil.rmtree(final)
        os.replace(target, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


KEY_LENGTH = 20  # hex digits of a resumable run's input key: <name>-<key> under data/cache/<stage>/


def input_key(files: list[Path], settings: dict) -> str:
    """Key of resumable work (label shards, student epochs): a hash of the files' names and bytes and of
    `settings` (JSON-serialisable), KEY_LENGTH hex digits."""
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode())
    for path in files:
        digest.update(Path(path).name.encode())
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()[:KEY_LENGTH]


def remove_other_keys(root: Path, name: str, keep: Path) -> None:
    """Delete root/<name>-<key> folders other than `keep`: resumable work of other inputs, never reusable.
    Exactly KEY_LENGTH characters after the name, so `rt` never takes `rt-reviews-<key>` (or seed 1 seed 10's)."""
    for stale in Path(root).glob(f"{name}-" + "?" * KEY_LENGTH):
        if stale != keep and stale.is_dir():
            shutil.rmtree(stale, ignore_errors=True)


def write_parquet(table: pa.Table, path: Path) -> None:
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)


def write_json(obj: dict, path: Path) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=False) + "\n")


def read_parquet(path: Path, schema: pa.Schema | None = None, hint: str = "") -> pa.Table:
    """Read a Parquet file; turn a missing, corrupt or mis-shaped file into a StageError."""
    path = Path(path)
    if not path.exists():
        raise StageError(f"missing input file {path}" + (f": {hint}" if hint else ""))
    try:
        table = pq.read_table(path)
    except (pa.ArrowException, OSError) as e:
        raise StageError(f"{path} is not a readable Parquet file ({e})") from None
    if schema is not None:
        table = conform(table, schema, path)
    return table


def check_columns(names: list[str], expected: list[str], where: object) -> None:
    missing = [c for c in expected if c not in names]
    extra = [c for c in names if c not in expected]
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"missing column(s) {missing}")
        if extra:
            parts.append(f"unexpected column(s) {extra}")
        raise StageError(f"{where}: {' and '.join(parts)}; expected exactly {expected}")


def conform(table: pa.Table, schema: pa.Schema, where: object) -> pa.Table:
    """Check a table has exactly the schema's columns and cast it to the schema's types."""
    check_columns(table.column_names, schema.names, where)
    table = table.select(schema.names)
    for field in schema:
        if not field.nullable and table[field.name].null_count:
            raise StageError(f"{where}: column {field.name!r} has {table[field.name].null_count} null value(s)")
    try:
        return table.cast(schema)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as e:
        raise StageError(f"{where}: columns do not have the expected types {schema.types} ({e})") from None
