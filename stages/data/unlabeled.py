"""Your own unlabeled text for the transfer set: params.yaml's `unlabeled:` section, one entry per task.

An entry names files under data/external/ or one split of a Hugging Face Hub dataset (its Parquet files, through
stages/data/hub.py, so `data.hub_dir` serves a local copy). Formats, by file extension or `format`:

- txt: one text a line (single-sentence tasks only);
- csv, tsv: a header row, the text column(s) named in `text`;
- jsonl: one JSON object a line, the text field(s) named in `text`;
- parquet (and Hub splits): the text column(s) named in `text`.

A pair task takes two columns (text_a, text_b). Everything is read in a streaming way: line by line for txt and
jsonl, Arrow's incremental CSV reader, Parquet row batches, so the raw file is never held in memory; what is kept
is one Arrow string column per text column. Rows whose text is empty are skipped and counted. Every error is a
one-line StageError naming the file (and the line or column).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator, Literal, Optional

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
from pydantic import BaseModel, ConfigDict, Field, model_validator

from stages.data.datasets import Encoding, HubId, external_file, file_sha256, jsonl_record
from stages.data.hub import split_files
from stages.errors import StageError

FORMATS = ("txt", "csv", "tsv", "jsonl", "parquet")
BATCH_ROWS = 65536  # rows per batch of the line readers
COLUMNS = ("text_a", "text_b")


class UnlabeledSpec(BaseModel):
    """One entry of `unlabeled:` (key: the task). Give `files` or `hub`."""

    model_config = ConfigDict(extra="forbid")
    files: list[str] = []  # under data/external/; all in one format
    hub: HubId = None  # or a Hub dataset id (owner/name), read from its Parquet files
    config: Optional[str] = None  # Hub only
    revision: str = "main"  # Hub only
    split: str = "train"  # Hub only: the split to read
    text: list[str] = Field([], max_length=2)  # the text column(s); txt files: leave empty (the line is the text)
    format: Optional[Literal["txt", "csv", "tsv", "jsonl", "parquet"]] = None  # None: from each file's extension
    encoding: Encoding = "utf-8"  # of txt, csv, tsv and jsonl files

    @model_validator(mode="after")
    def _source(self) -> "UnlabeledSpec":
        if bool(self.files) == (self.hub is not None):
            raise ValueError("give either `files` (under data/external/) or `hub` (a Hub dataset id)")
        if self.hub is not None and not self.text:
            raise ValueError("a Hub dataset needs its text column(s) in `text`")
        if len(set(self.text)) != len(self.text):
            raise ValueError(f"the text columns {self.text} name one column twice")
        return self


def file_format(path: Path, spec: UnlabeledSpec) -> str:
    fmt = spec.format or path.suffix.lower().lstrip(".")
    if fmt not in FORMATS:
        raise StageError(f"unlabeled file {path}: format {fmt!r} is not one of {', '.join(FORMATS)} (name it by its "
                         "extension or set `format`)")
    return fmt


def source_files(task: str, spec: UnlabeledSpec, hub_dir: str | None = None) -> list[Path]:
    """The files to read: checked local paths under data/external/, or the Hub split's Parquet files."""
    if spec.hub is not None:
        return split_files(spec.hub, spec.split, config=spec.config, revision=spec.revision, local_root=hub_dir,
                           where=f"unlabeled.{task}: ")
    out = []
    for file in spec.files:
        path = external_file(file, f"unlabeled.{task}")
        file_format(path, spec)
        out.append(path)
    return out


def describe(task: str, spec: UnlabeledSpec | None, hub_dir: str | None = None) -> dict:
    """What the sources stage records in data/sources/<task>.unlabeled.json: the entry and its files' sha256
    (no entry: empty), so that the augment stage reruns when the files change, and only that task's."""
    if spec is None:
        return {"unlabeled": None, "files": []}
    return {"unlabeled": spec.model_dump(),
            "files": [{"path": str(f), "sha256": file_sha256(f)} for f in source_files(task, spec, hub_dir)]}


def recorded_spec(path: Path) -> UnlabeledSpec | None:
    """The entry the sources stage recorded in data/sources/<task>.unlabeled.json (None: the task has none)."""
    path = Path(path)
    try:
        recorded = json.loads(path.read_text())["unlabeled"]
    except FileNotFoundError:
        raise StageError(f"missing input file {path}: run the sources stage first") from None
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise StageError(f"{path} is not a sources record ({e}); rerun the sources stage") from None
    return None if recorded is None else UnlabeledSpec.model_validate(recorded)


def _columns_for(spec: UnlabeledSpec, n_texts: int, where: str, fmt: str) -> list[str]:
    if fmt == "txt":
        if n_texts != 1:
            raise StageError(f"{where}: a txt file holds one text a line, but this is a pair task; use a csv, tsv, "
                             "jsonl or parquet file with two text columns")
        if spec.text:
            raise StageError(f"{where}: a txt file has no columns; leave `text` empty (got {spec.text})")
        return []
    if len(spec.text) != n_texts:
        raise StageError(f"{where}: `text` must name {n_texts} column(s) for this task, got {spec.text}")
    return list(spec.text)


def _missing(where: str, wanted: list[str], present: list[str]) -> None:
    missing = [c for c in wanted if c not in present]
    if missing:
        raise StageError(f"{where}: no column(s) {missing}; the file's columns are {present}")


def _as_strings(arrays: list[pa.Array], where: str, names: list[str]) -> list[pa.Array]:
    out = []
    for array, name in zip(arrays, names):
        if isinstance(array, pa.ChunkedArray):
            array = array.combine_chunks()
        if not (pa.types.is_string(array.type) or pa.types.is_large_string(array.type) or pa.types.is_null(array.type)):
            raise StageError(f"{where}: column {name!r} holds {array.type}, not text")
        out.append(array.cast(pa.string()))
    return out


def _read_txt(path: Path, spec: UnlabeledSpec, where: str) -> Iterator[list[pa.Array]]:
    batch: list[str] = []
    number = 0
    try:
        with open(path, encoding=spec.encoding, newline=None) as f:
            for number, line in enumerate(f, 1):
                batch.append(line.rstrip("\n"))
                if len(batch) == BATCH_ROWS:
                    yield [pa.array(batch, pa.string())]
                    batch = []
    except UnicodeDecodeError as e:
        raise StageError(f"{where}, line {number + 1}: not valid {spec.encoding} ({e.reason}); set the entry's "
                         "`encoding`") from None
    if batch:
        yield [pa.array(batch, pa.string())]


def _read_jsonl(path: Path, spec: UnlabeledSpec, where: str, names: list[str]) -> Iterator[list[pa.Array]]:
    batch: list[list] = [[] for _ in names]
    number = 0
    try:
        with open(path, encoding=spec.encoding) as f:
            for number, line in enumerate(f, 1):
                record = jsonl_record(line, number, where)
                if record is None:
                    continue
                for column, name in zip(batch, names):
                    if name not in record:
                        raise StageError(f"{where}, line {number}: no field {name!r}; the object's fields are "
                                         f"{list(record)}")
                    value = record[name]
                    column.append(None if value is None else str(value))
                if len(batch[0]) == BATCH_ROWS:
                    yield [pa.array(c, pa.string()) for c in batch]
                    batch = [[] for _ in names]
    except UnicodeDecodeError as e:
        raise StageError(f"{where}, line {number + 1}: not valid {spec.encoding} ({e.reason}); set the entry's "
                         "`encoding`") from None
    if batch[0]:
        yield [pa.array(c, pa.string()) for c in batch]


def _read_csv(path: Path, spec: UnlabeledSpec, where: str, names: list[str], delimiter: str) -> Iterator[list[pa.Array]]:
    try:
        reader = pacsv.open_csv(
            path, read_options=pacsv.ReadOptions(encoding=spec.encoding, block_size=1 << 22),
            parse_options=pacsv.ParseOptions(delimiter=delimiter, newlines_in_values=True),
            convert_options=pacsv.ConvertOptions(column_types={n: pa.string() for n in names},
                                                 strings_can_be_null=False))
        _missing(where, names, reader.schema.names)
        for batch in reader:
            yield _as_strings([batch.column(n) for n in names], where, names)
    except (pa.ArrowInvalid, UnicodeDecodeError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise StageError(f"{where}: not a valid {path.suffix.lstrip('.').upper() or 'CSV'} file ({first})") from None


def _read_parquet(path: Path, where: str, names: list[str]) -> Iterator[list[pa.Array]]:
    try:
        file = pq.ParquetFile(path)
        _missing(where, names, file.schema_arrow.names)
        for batch in file.iter_batches(batch_size=BATCH_ROWS, columns=names):
            yield _as_strings([batch.column(n) for n in names], where, names)
    except (pa.ArrowException, OSError) as e:
        raise StageError(f"{where}: not a readable Parquet file ({str(e).splitlines()[0]})") from None


def iter_batches(task: str, spec: UnlabeledSpec, n_texts: int, hub_dir: str | None = None) -> Iterator[list[pa.Array]]:
    """The raw rows, batch by batch: one string array per text column (nulls where a value is missing)."""
    for path in source_files(task, spec, hub_dir):
        where = f"unlabeled file {path}"
        fmt = "parquet" if spec.hub is not None else file_format(path, spec)
        names = _columns_for(spec, n_texts, where, fmt)
        if fmt == "txt":
            yield from _read_txt(path, spec, where)
        elif fmt == "jsonl":
            yield from _read_jsonl(path, spec, where, names)
        elif fmt in ("csv", "tsv"):
            yield from _read_csv(path, spec, where, names, "," if fmt == "csv" else "\t")
        else:
            yield from _read_parquet(path, where, names)


def read_unlabeled(task: str, spec: UnlabeledSpec, n_texts: int, hub_dir: str | None = None) -> tuple[pa.Table, int]:
    """All rows as a table (text_a[, text_b], row: 1-based position across the files) without the empty ones,
    and how many were empty (an empty or whitespace-only text in any column)."""
    kept: list[pa.RecordBatch] = []
    position, empty = 0, 0
    for arrays in iter_batches(task, spec, n_texts, hub_dir):
        n = len(arrays[0])
        row = pa.array(range(position + 1, position + n + 1), pa.int64())
        position += n
        ok = None
        for array in arrays:
            filled = pc.and_(pc.is_valid(array), pc.not_equal(pc.utf8_trim_whitespace(array), ""))
            filled = pc.fill_null(filled, False)
            ok = filled if ok is None else pc.and_(ok, filled)
        batch = pa.record_batch([*arrays, row], names=[*COLUMNS[:n_texts], "row"])
        kept_batch = batch.filter(ok)
        empty += n - kept_batch.num_rows
        kept.append(kept_batch)
    schema = pa.schema([*(pa.field(c, pa.string()) for c in COLUMNS[:n_texts]), pa.field("row", pa.int64())])
    return pa.Table.from_batches(kept, schema=schema), empty
