"""Where each stage reads and writes, relative to the repository root (as dvc.yaml declares)."""

from pathlib import Path

DATA = Path("data")
MODELS = Path("models")
METRICS = Path("metrics")


def raw_dir(task: str) -> Path:
    return DATA / "raw" / task


def transfer_file(task: str) -> Path:
    return DATA / "transfer" / f"{task}.parquet"


def labeled_file(task: str) -> Path:
    return DATA / "labeled" / f"{task}.parquet"


def model_dir(kind: str, task: str) -> Path:
    """kind: teacher, student or baseline."""
    return MODELS / kind / task


def metrics_dir(task: str) -> Path:
    return METRICS / task
