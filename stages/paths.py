"""Where each stage reads and writes, relative to the repository root (as dvc.yaml declares)."""

from pathlib import Path

DATA = Path("data")
EXTERNAL = DATA / "external"  # your own datasets' files (params.yaml `datasets:`), tracked by the sources stage
MODELS = Path("models")
METRICS = Path("metrics")
PARAMS_CHECKED = DATA / "params-checked.txt"  # the `check` stage's constant output: params.yaml passed validation


def sources_dir() -> Path:
    return DATA / "sources"


def source_file(task: str) -> Path:
    """What the task's download reads: a built-in source, or a declared dataset with its files' sha256."""
    return sources_dir() / f"{task}.json"


def unlabeled_source_file(task: str) -> Path:
    """The task's `unlabeled:` entry and its files' sha256 (empty without one): what its augment stage reads."""
    return sources_dir() / f"{task}.unlabeled.json"


def raw_dir(task: str) -> Path:
    return DATA / "raw" / task


def transfer_file(task: str) -> Path:
    return DATA / "transfer" / f"{task}.parquet"


def labeled_file(task: str) -> Path:
    return DATA / "labeled" / f"{task}.parquet"


def model_dir(kind: str, task: str) -> Path:
    """kind: teacher or export (one per task)."""
    return MODELS / kind / task


def run_model_dir(kind: str, task: str, arch: str, seed: int) -> Path:
    """kind: student or baseline, one per task, arch (params.yaml `archs`) and seed: .../<arch>/seed-<n>."""
    return MODELS / kind / task / arch / seed_name(seed)


def run_dir(kind: str, task: str, arch: str, seed: int) -> Path:
    """One student or baseline run's metrics (run.json) and training curves (DVCLive)."""
    return METRICS / task / kind / arch / seed_name(seed)


def arch_params_file(arch: str) -> Path:
    """The `check` stage's copy of one arch's knobs: it changes only when that arch's knobs change, so a knob
    of one arch reruns that arch's stages alone (dvc.yaml cannot pick a params section per matrix item)."""
    return DATA / "arch-params" / f"{arch}.json"


def inputs_dir(task: str, arch: str) -> Path:
    """What an arch needs before training, per task (the `inputs` stage): the n-gram featurizer, the static
    embeddings made from the task's teacher, or only the knobs (bilstm, cnn)."""
    return MODELS / "inputs" / task / arch


def arch_runs(kind: str, task: str, seeds: list[int], archs: list[str]) -> dict[str, dict[int, tuple[Path, Path]]]:
    """Every trained student or baseline of a task: {arch: {seed: (model dir, run dir)}}."""
    return {arch: {seed: (run_model_dir(kind, task, arch, seed), run_dir(kind, task, arch, seed)) for seed in seeds}
            for arch in archs}


def seed_name(seed: int) -> str:
    return f"seed-{seed}"


def cache_dir(stage: str) -> Path:
    """Resumable work of a stage (label shards, student epochs): kept across killed runs, never a DVC output."""
    return DATA / "cache" / stage


def metrics_dir(task: str) -> Path:
    return METRICS / task


def outside_dir(spec: str | None) -> str | None:
    """A directory param that points outside the repository (data.glue_dir, data.hub_dir), as a stage opens it.

    A relative path means relative to the project root. A queued or `--temp` DVC experiment runs the stages in
    a copy at <root>/.dvc/tmp/exps/<tmp>/, where `../shared/glue` would miss: there it is taken from <root>.
    """
    if not spec or Path(spec).expanduser().is_absolute():
        return spec
    here = Path.cwd().resolve()
    parts = here.parts
    for i in range(len(parts) - 3):
        if parts[i : i + 3] == (".dvc", "tmp", "exps"):
            return str(Path(*parts[:i]) / spec)
    return spec
