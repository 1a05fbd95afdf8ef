"""Your own data: the `datasets:` section of params.yaml, one entry per task, with no code to write.

An entry names local files (.csv .tsv .jsonl .parquet, under data/external/ so that DVC sees them change) or a
Hugging Face Hub dataset, the text column(s) (one, or two for a sentence-pair task) and the label column. This
module reads and checks those files; every error names the file, the row (1-based, after a CSV's header; the line
of a JSONL file) and the column. Rows whose text is empty or only whitespace are dropped and counted
(metrics/<task>/data.json), since real exports often hold a few; everything else that is wrong is an error.
"""

from __future__ import annotations

import codecs
import hashlib
import io
import json
import re
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Literal, Optional, Union

import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StrictBool, StrictInt, field_validator, model_validator

from stages import paths
from stages.errors import StageError
from stages.data.hub import check_hub_id, split_files
from stages.data.tasks import Task, metrics_for, paper_defaults

if TYPE_CHECKING:  # pandas is imported where a file is read: every stage imports this module, few read with it
    import pandas as pd

FORMATS = {".csv": ",", ".tsv": "\t", ".jsonl": None, ".parquet": None}
SPLITS = ("train", "dev", "test")
NAME = re.compile(r"^[a-z0-9][a-z0-9_-]*$")
INTEGRAL = re.compile(r"^([+-]?\d+)\.0*$")  # 1.0, 2., -3.00: an integer written as a float


def _known_encoding(encoding: str) -> str:
    try:
        codecs.lookup(encoding)
    except LookupError:
        raise ValueError(f"unknown encoding {encoding!r}") from None
    return encoding


def _hub_id(hub: Optional[str]) -> Optional[str]:
    if hub is not None:
        check_hub_id(hub)
    return hub


# Field types shared by the specs of labelled datasets (here) and unlabeled text (stages/data/unlabeled.py)
Encoding = Annotated[str, AfterValidator(_known_encoding)]
HubId = Annotated[Optional[str], AfterValidator(_hub_id)]  # owner/name, never a path


class DatasetSpec(BaseModel):
    """One entry of `datasets:`; see params.yaml for a worked example."""

    model_config = ConfigDict(extra="forbid")
    train: Optional[str] = None  # a local file under data/external/
    dev: Optional[str] = None  # optional: without it, a stratified `dev_fraction` of train (data.split_seed)
    test: Optional[str] = None  # optional
    hub: HubId = None  # or a Hugging Face Hub dataset id (owner/name), read from its Parquet files
    config: Optional[str] = None  # Hub only: the dataset's config (subset)
    revision: str = "main"  # Hub only: a branch, tag or commit
    splits: dict[Literal["train", "dev", "test"], str] = {}  # Hub only: our split -> the Hub's split name
    text: list[str] = Field(min_length=1, max_length=2)  # one column, or two for sentence pairs
    label: str  # the class column: strings or integers
    labels: Optional[list[Union[StrictBool, StrictInt, str]]] = None  # allowed values, in order; None = sorted
    encoding: Encoding = "utf-8"  # of .csv/.tsv/.jsonl files
    dev_fraction: float = Field(0.1, gt=0, lt=1)
    pos_model: Optional[str] = None  # any installed spaCy pipeline; None = augment.pos_model

    @field_validator("labels")
    @classmethod
    def _labels(cls, labels):
        if labels is None:
            return None
        names = [label_text(v) for v in labels]
        if len(set(names)) != len(names):
            raise ValueError(f"duplicate values in labels {names}")
        if len(names) < 2:
            raise ValueError(f"a classifier needs at least 2 labels, got {names}")
        return names


    @model_validator(mode="after")
    def _source(self) -> "DatasetSpec":
        if (self.train is None) == (self.hub is None):
            raise ValueError("give either `train` (a local file) or `hub` (a Hugging Face Hub dataset id)")
        if self.hub is not None:
            if self.dev or self.test:
                raise ValueError("a Hub dataset names its splits in `splits` (e.g. {train: train, dev: validation})")
            if "train" not in (self.splits or {"train": "train"}):
                raise ValueError("`splits` must name the Hub split to train on (train: ...)")
        elif self.splits:
            raise ValueError("`splits` is for Hub datasets; local files are given as train/dev/test")
        if len(set(self.text)) != len(self.text):
            raise ValueError(f"the text columns {self.text} name one column twice")
        if self.label in self.text:
            raise ValueError(f"the label column {self.label!r} is also a text column")
        return self

    def local_files(self) -> dict[str, str]:
        return {split: file for split in SPLITS if (file := getattr(self, split))}

    def hub_splits(self) -> dict[str, str]:
        return self.splits or {"train": "train"}


def label_text(value) -> str | None:
    """One spelling per class, whatever the file format stored: 1, 1.0 and "1" are all "1"; None when missing."""
    if value is None or (isinstance(value, float) and value != value):
        return None
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    text = str(value).strip()
    if match := INTEGRAL.match(text):  # a CSV stores 1.0 as the text "1.0": the same class as 1
        text = str(int(match.group(1)))
    return text or None


def check_name(name: str) -> None:
    if not NAME.match(name):
        raise ValueError(f"dataset name {name!r}: use lower-case letters, digits, '-' and '_' (it names files "
                         "and DVC stages)")


def external_file(file: str, where: str) -> Path:
    """`file` as a path under data/external/, checked: its text stays inside, it exists, and it does not resolve
    (through a symlink of the file or of a folder on the way) to anything outside. `where` names the entry."""
    path = Path(file)
    inside = not path.is_absolute() and ".." not in path.parts and path.parts[:2] == paths.EXTERNAL.parts
    if not inside:
        raise StageError(f"{where}: {file} is outside {paths.EXTERNAL}/; put your files there, "
                         "so that the pipeline reruns when they change")
    if not path.is_file():
        raise StageError(f"{where}: file {file} not found")
    target, root = path.resolve(), paths.EXTERNAL.resolve()
    if not target.is_relative_to(root):
        raise StageError(f"{where}: {file} resolves to {target}, outside {paths.EXTERNAL}/; "
                         "copy the file there instead of linking to it")
    return path


def check_local_path(name: str, split: str, file: str) -> Path:
    if Path(file).suffix.lower() not in FORMATS:
        raise StageError(f"datasets.{name}.{split}: {file} is not one of the formats {', '.join(FORMATS)}")
    return external_file(file, f"datasets.{name}.{split}")


def _decode(path: Path, encoding: str) -> str:
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8-sig" if codecs.lookup(encoding).name == "utf-8" else encoding)
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise StageError(f"{path}, line {line}: bytes {raw[e.start:e.start + 4]!r} are not valid {encoding}; "
                         "if the file uses another encoding, set it in the dataset's `encoding` (e.g. latin-1)") from None


def jsonl_record(line: str, number: int, where) -> dict | None:
    """One line of a JSON Lines file: its object, None for a blank line, else a StageError naming file and line."""
    if not line.strip():
        return None
    try:
        record = json.loads(line)
    except json.JSONDecodeError as e:
        raise StageError(f"{where}, line {number}: not valid JSON ({e.msg}, column {e.colno})") from None
    if not isinstance(record, dict):
        raise StageError(f"{where}, line {number}: expected one JSON object per line, got {type(record).__name__}")
    return record


def read_file(path: Path, encoding: str = "utf-8") -> pd.DataFrame:
    """A whole file as a DataFrame whose index is the row number of each row in the file, for messages."""
    import pandas as pd

    suffix = path.suffix.lower()
    if suffix == ".parquet":
        try:
            df = pq.read_table(path).to_pandas()
        except (pa.ArrowException, OSError) as e:
            raise StageError(f"{path} is not a readable Parquet file ({e})") from None
        df.index = range(1, len(df) + 1)
        return df
    text = _decode(path, encoding)
    if suffix == ".jsonl":
        records, lines = [], []
        for number, line in enumerate(text.splitlines(), 1):
            record = jsonl_record(line, number, path)
            if record is not None:
                records.append(record)
                lines.append(number)
        return pd.DataFrame.from_records(records, index=lines)
    try:
        df = pd.read_csv(io.StringIO(text), sep=FORMATS[suffix], dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError) as e:
        raise StageError(f"{path}: not a valid {suffix[1:].upper()} file ({str(e).strip().splitlines()[-1]})") from None
    df.index = range(1, len(df) + 1)
    return df


def _text_column(values: pd.Series) -> pd.Series:
    return values.map(lambda v: "" if v is None or (isinstance(v, float) and v != v) else str(v))


def clean_split(df: pd.DataFrame, where: str, name: str, spec: DatasetSpec, split: str) -> tuple[pd.DataFrame, int]:
    """Columns text_a, text_b, label (its text, None where missing), idx (the row number); rows with an empty
    text dropped and counted. A missing column is an error, except the label of a test split."""
    import pandas as pd

    needed = [*spec.text] + ([] if split == "test" else [spec.label])
    missing = [c for c in needed if c not in df.columns]
    if missing:
        raise StageError(f"{where}: no column(s) {missing} (datasets.{name}: text {spec.text}, label {spec.label!r}); "
                         f"the file's columns are {list(df.columns)}")
    texts = [_text_column(df[c]) for c in spec.text]
    empty = pd.Series(False, index=df.index)
    for column in texts:
        empty |= column.str.strip() == ""
    labels = df[spec.label].map(label_text) if spec.label in df.columns else pd.Series(None, index=df.index, dtype=object)
    out = pd.DataFrame({"text_a": texts[0], "text_b": texts[1] if len(texts) == 2 else None,
                        "label": labels, "idx": df.index.astype("int64")}, index=df.index)[~empty]
    if out.empty:
        if df.empty:
            raise StageError(f"{where}: no rows (a header and no data)" if len(df.columns) else f"{where}: no rows")
        blank = [c for c, column in zip(spec.text, texts) if (column.str.strip() == "").all()]
        raise StageError(f"{where}: all {len(df)} row(s) were dropped for an empty text "
                         f"(column(s) {blank} empty in every row)" if blank else
                         f"{where}: all {len(df)} row(s) were dropped for an empty text in one of {spec.text}")
    if split != "test" and out["label"].isna().any():
        row = out.index[out["label"].isna()][0]
        raise StageError(f"{where}, row {row}, column {spec.label!r}: empty label "
                         f"({int(out['label'].isna().sum())} row(s) without one)")
    return out, int(empty.sum())


def _split_sources(name: str, spec: DatasetSpec, hub_dir: str | None) -> dict[str, list[Path]]:
    if spec.hub is None:
        return {split: [check_local_path(name, split, file)] for split, file in spec.local_files().items()}
    return {ours: split_files(spec.hub, theirs, config=spec.config, revision=spec.revision, local_root=hub_dir,
                              where=f"datasets.{name}: ")
            for ours, theirs in spec.hub_splits().items()}


def read_splits(name: str, spec: DatasetSpec, hub_dir: str | None = None) -> dict[str, tuple[pd.DataFrame, int]]:
    """Each given split as (clean rows, rows dropped for an empty text); df.attrs["source"] names the file(s)."""
    import pandas as pd

    out = {}
    for split, files in _split_sources(name, spec, hub_dir).items():
        parts = [clean_split(read_file(f, spec.encoding), str(f), name, spec, split) for f in files]
        df = pd.concat([frame for frame, _ in parts]) if len(parts) > 1 else parts[0][0]
        if len(parts) > 1:  # rows of a sharded split are numbered across its shards
            df = df.assign(idx=range(1, len(df) + 1))
        df.attrs["source"] = ", ".join(str(f) for f in files)
        out[split] = (df, sum(dropped for _, dropped in parts))
    return out


def sort_labels(values) -> list[str]:
    """Numbers in numeric order (2 before 10), then the rest alphabetically."""
    def key(v: str):
        try:
            return (0, float(v), v)
        except ValueError:
            return (1, 0.0, v)
    return sorted(set(values), key=key)


def label_names(name: str, spec: DatasetSpec, train: pd.DataFrame) -> list[str]:
    """`labels` as given, else the sorted distinct values of the training labels; at least two."""
    names = spec.labels or sort_labels(train["label"])
    if len(names) < 2:
        raise StageError(f"datasets.{name}: {train.attrs.get('source')} has the single class {names}; a classifier "
                         "needs at least 2")
    return names


def to_ids(df: pd.DataFrame, names: list[str], name: str, column: str, split: str) -> pd.DataFrame:
    """Labels as class ids (-1 where a test row has none); a value outside `names` is an error naming the row."""
    where = df.attrs.get("source", split)
    ids = df["label"].map({n: i for i, n in enumerate(names)})
    bad = df["label"].notna() & ids.isna()
    if bad.any():
        row = df.index[bad][0]
        raise StageError(f"{where}, row {row}, column {column!r}: label {df.loc[row, 'label']!r} is not one of "
                         f"datasets.{name}.labels {names} ({int(bad.sum())} row(s))")
    out = df.assign(label=ids.fillna(-1).astype("int64"))
    out.attrs = dict(df.attrs)
    check_classes(out, names, name, split)
    return out


def check_classes(df: pd.DataFrame, names: list[str], name: str, split: str, why: str = "") -> None:
    """Every class has examples in train and dev (class ids in df["label"])."""
    if split == "test":
        return
    counts = df["label"].value_counts()
    absent = [n for i, n in enumerate(names) if i not in counts.index]
    if absent:
        raise StageError(f"{df.attrs.get('source', split)}: class(es) {absent} have no examples in the {split} split "
                         f"of dataset {name}{why}; every class needs examples in train and dev")


def task_for(name: str, spec: DatasetSpec, names: list[str], has_test: bool) -> Task:
    """The dataset's row of the task table: the paper's per-task values by single sentence or pair."""
    return Task(name, "user", tuple(spec.text), tuple(names), {"dev": "dev"}, {"test": "test"} if has_test else {},
                metrics_for(len(names)), **paper_defaults(len(spec.text) == 2), pos_model=spec.pos_model,
                notes=f"declared in params.yaml: datasets.{name}")


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def describe(name: str, spec: DatasetSpec, hub_dir: str | None = None) -> dict:
    """What the `sources` stage records for a dataset: its task row, the declaration and every file's sha256
    (so that a changed file reruns its download, and only its own)."""
    files = _split_sources(name, spec, hub_dir)
    splits = read_splits(name, spec, hub_dir)
    names = label_names(name, spec, splits["train"][0])
    for split, (df, _) in splits.items():  # every label known, every class in train and dev: fail early
        to_ids(df, names, name, spec.label, split)
    task = task_for(name, spec, names, has_test="test" in files)
    return {"task": task.to_dict(), "dataset": spec.model_dump(),
            "files": {split: [{"path": str(f), "sha256": file_sha256(f)} for f in fs] for split, fs in files.items()}}


def load(task: Task, spec: DatasetSpec, hub_dir: str | None = None) -> dict[str, tuple[pd.DataFrame, int]]:
    """The dataset's splits with class ids, as (rows, rows dropped for an empty text); no dev split when none
    was given (the download stage then splits train)."""
    return {split: (to_ids(df, list(task.label_names), task.name, spec.label, split), dropped)
            for split, (df, dropped) in read_splits(task.name, spec, hub_dir).items()}
