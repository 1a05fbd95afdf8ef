"""Dev-set metrics named in the task table (accuracy, binary F1 of the positive class, macro-F1)."""

from __future__ import annotations

import numpy as np

from stages.data.tasks import Task


def accuracy(labels: np.ndarray, preds: np.ndarray) -> float:
    return float((labels == preds).mean()) if len(labels) else float("nan")


def f1(labels: np.ndarray, preds: np.ndarray, positive: int = 1) -> float:
    tp = int(((preds == positive) & (labels == positive)).sum())
    fp = int(((preds == positive) & (labels != positive)).sum())
    fn = int(((preds != positive) & (labels == positive)).sum())
    return 2 * tp / (2 * tp + fp + fn) if tp else 0.0


def macro_f1(labels: np.ndarray, preds: np.ndarray) -> float:
    """The unweighted mean of every class's F1, over the classes present in labels or predictions."""
    classes = np.union1d(labels, preds)
    return float(np.mean([f1(labels, preds, positive=c) for c in classes])) if len(classes) else float("nan")


METRIC_FUNCTIONS = {"accuracy": accuracy, "f1": f1, "macro_f1": macro_f1}


def task_metrics(task: Task, labels: np.ndarray, preds: np.ndarray) -> dict[str, float]:
    """The task's metrics on one split; rows without a label (-1) are ignored."""
    labels, preds = np.asarray(labels), np.asarray(preds)
    known = labels >= 0
    return {name: round(METRIC_FUNCTIONS[name](labels[known], preds[known]), 6) for name in task.metrics}
