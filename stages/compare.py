"""`compare` stage: every model a practitioner could ship for one task, on the same splits, timed the same way.

Models (docs/compare.md):
- alternatives that use no teacher: TF-IDF + logistic regression and static embeddings + logistic regression
  (both fitted here on the gold train split, deterministic: stages/models/alternatives.py; the static table is
  the pretrained encoder's, inputs/<task>/static/base/, not the fine-tuned teacher's; static + LR runs when
  `archs` lists static, which builds that table), and the hard-label
  students of the `baseline` stage (every arch, every seed; the static one on that same pretrained table);
- every distilled student of the `student` stage (every arch, every seed);
- the teacher exported here to ONNX fp32 and dynamic int8, run by onnxruntime with dynamic padding
  (stages/models/onnx_teacher.py): the fair reference for "× faster than the teacher".

Scores: every seed of every model on every eval split (and on test splits whose labels are known), mean ± sd over
seeds. Speed: one process, `threads` threads for every runtime; each model in the runtime it ships in (the
students and the teacher: onnxruntime, fp32 for the students as `export` writes them; the regressions:
scikit-learn), timed with one function (stages/models/timing.py) in `timing_rounds` interleaved rounds (every
model once per round), the median kept: sentences/s at `batch_size` over `throughput_sentences` dev sentences,
and the batch-1 p50 latency. Disk: the files that would ship. Peak RSS: a fresh process per model.

The ship rule: the distilled student arch with the best mean dev score among those whose sentences/s is at least
`min_speedup` × the teacher's ONNX int8 sentences/s; when none is that fast, the fastest student (and the choice
says the rule was not met). `export` ships that arch's first seed.

The best distilled student is tested against the best no-teacher alternative (by mean dev score): a paired t over
seeds where the alternative has seeds too; against a deterministic one, a one-sample t of the student's seeds
against its score and an exact McNemar test of the student seeds' majority-vote ensemble against its predictions.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from tqdm import tqdm

from stages.data.io import RAW_SCHEMA, atomic_path, read_parquet, write_json
from stages.data.tasks import Task
from stages.errors import StageError
from stages.models import alternatives
from stages.models.onnx_export import exporter
from stages.models.registry import load_predictor
from stages.models.static_model import embeddings_dir
from stages.models.onnx_teacher import CONFIG_FILE, TEACHER_FILES, TOKENIZER_FILE, OnnxTeacher, export_teacher
from stages.models.timing import measure_speed, peak_rss_mb
from stages import paths
from stages.params import CompareParams, Params
from stages.report.compare_report import compare_figure, compare_markdown, plot_rows
from stages.report.metrics import task_metrics
from stages.report.statistics import (describe, majority_vote, mcnemar_test, one_sample_t_test, paired_t_test)

KINDS = ("alternative", "student", "teacher")
SIGNIFICANCE = 0.05


@dataclass
class Split:
    texts_a: list[str]
    texts_b: list[str] | None
    labels: np.ndarray


@dataclass
class _Model:
    name: str
    kind: str  # alternative | student | teacher
    arch: str
    runtime: str
    label: str  # what the chart and the table call it
    timed: object  # the predictor that is timed (predict_proba(texts_a, texts_b, batch_size))
    rss: tuple[str, dict]  # (loader, kwargs) that rebuild `timed` in a fresh process
    files: list[Path]  # what would ship: its disk size
    proba: dict = field(default_factory=dict)  # split -> {seed or None: (rows, classes) probabilities}
    metrics: dict = field(default_factory=dict)  # split -> {seed or None: {metric: value}}
    fit_seconds: float | None = None  # fitted here (the regressions): how long the fit took


def _read_split(task: Task, raw_dir: Path, split: str) -> Split:
    """One split of raw_dir as texts and labels (-1: unknown)."""
    table = read_parquet(Path(raw_dir) / f"{split}.parquet", RAW_SCHEMA, hint="run the download stage first")
    return Split(table["text_a"].to_pylist(), table["text_b"].to_pylist() if task.is_pair else None,
                  table["label"].to_numpy())


def gold_train(task: Task, raw_dir: Path) -> Split:
    """The training split's rows with a known label: what the alternatives without a teacher are fitted on."""
    train = _read_split(task, raw_dir, "train")
    known = train.labels >= 0
    return Split([t for t, k in zip(train.texts_a, known) if k],
                 [t for t, k in zip(train.texts_b, known) if k] if train.texts_b is not None else None,
                 train.labels[known])


def tfidf_features(task: Task, p: CompareParams) -> alternatives.TfidfFeatures:
    """TF-IDF + LR's features, as the `compare:` knobs set them."""
    return alternatives.TfidfFeatures(p.tfidf_word_ngrams, p.tfidf_char_ngrams, p.tfidf_min_df, task.is_pair)


def fit_on_gold(features, train: Split, p: CompareParams) -> alternatives.SklearnClassifier:
    """features -> logistic regression (the `compare:` knobs) fitted on gold_train's rows."""
    return alternatives.fit_logistic(features, train.texts_a, train.texts_b, train.labels, c=p.lr_c,
                                     max_iter=p.lr_max_iter)


def scored_splits(task: Task, raw_dir: Path) -> dict[str, Split]:
    """Every eval split, and every test split that exists with all its labels known (GLUE's are hidden)."""
    splits = {s: _read_split(task, raw_dir, s) for s in task.eval_splits}
    for s in task.test_splits:
        if (Path(raw_dir) / f"{s}.parquet").exists():
            table = _read_split(task, raw_dir, s)
            if len(table.labels) and (table.labels >= 0).all():
                splits[s] = table
    return splits


def _predict_all(model: _Model, predictor, seed, splits: dict[str, Split], batch_size: int) -> None:
    for name, s in splits.items():
        model.proba.setdefault(name, {})[seed] = predictor.predict_proba(s.texts_a, s.texts_b, batch_size)


def _seeded(kind: str, label: str, runs: dict[str, dict[int, tuple[Path, Path]]], splits, work: Path, threads: int,
            batch_size: int) -> list[_Model]:
    """One model per arch: every seed scored in PyTorch; the first seed exported as it ships, and timed so."""
    out = []
    for arch, seeds in runs.items():
        first = next(iter(seeds))  # the first of params.yaml's seeds: the one export ships
        shipping = exporter(arch)
        model = None
        for seed, (model_dir, _) in tqdm(seeds.items(), desc=f"{kind} {arch} seeds", leave=False):
            trained = load_predictor(model_dir, "torch")  # every arch: PyTorch, or numpy for ngram and static
            found = trained.config.get("arch", "bilstm")
            if found != arch:
                raise StageError(f"{model_dir} holds a {found} student, expected {arch}")
            if model is None:
                ship_dir = work / f"{kind}-{arch}"
                ship_dir.mkdir()
                shipping.write(trained, model_dir, ship_dir, {"seed": first})
                loader_kwargs = {"model_dir": str(ship_dir), "variant": "fp32", "threads": threads}
                timed = _load(shipping.loader)(**loader_kwargs)
                model = _Model(f"{kind}-{arch}", "student" if kind == "student" else "alternative", arch,
                               shipping.runtime, f"{label} {arch}", timed, (shipping.loader, loader_kwargs),
                               [ship_dir / f for f in shipping.files["fp32"]])
            _predict_all(model, trained, seed, splits, batch_size)
        out.append(model)
    return out


def _load(dotted: str) -> Callable:
    import importlib

    module, name = dotted.rsplit(".", 1)
    return getattr(importlib.import_module(module), name)


def _alternatives(task: Task, raw_dir: Path, static_dir: Path | None, splits, work: Path, p: CompareParams,
                  skipped: list[dict]) -> list[_Model]:
    """TF-IDF + LR, and static + LR on the pretrained encoder's table in static_dir (None: archs has no static)."""
    train = gold_train(task, raw_dir)
    features = {"tfidf-lr": ("TF-IDF + LR", lambda: tfidf_features(task, p))}
    if static_dir is None:  # never a table left on disk by another run: what runs follows params.yaml alone
        skipped.append({"name": "static-lr", "reason": "archs has no static, and the inputs stage builds the static "
                                                       "tables with it (dvc exp run -S 'archs=[bilstm,ngram,static]')"})
    else:
        alternatives.load_static(static_dir)  # a missing or broken directory is an error naming what it lacks
        features["static-lr"] = ("static + LR", lambda: alternatives.StaticFeatures(str(static_dir), task.is_pair))
    out = []
    for name, (label, make) in features.items():
        start = time.perf_counter()
        fitted = fit_on_gold(make(), train, p)
        seconds = round(time.perf_counter() - start, 2)
        path = work / f"{name}.joblib"
        alternatives.save_sklearn(fitted, path)
        model = _Model(name, "alternative", name, fitted.runtime, label, fitted,
                       ("stages.models.alternatives.load_sklearn", {"path": str(path)}), [path], fit_seconds=seconds)
        _predict_all(model, fitted, None, splits, p.batch_size)
        out.append(model)
    return out


def _teacher(teacher_dir: Path, splits, work: Path, p: CompareParams, max_length: int) -> list[_Model]:
    export_dir = work / "teacher"
    export_dir.mkdir()
    export_teacher(teacher_dir, export_dir, max_length)
    out = []
    for variant, file in TEACHER_FILES.items():
        kwargs = {"export_dir": str(export_dir), "variant": variant, "threads": p.threads}
        timed = OnnxTeacher(**kwargs)
        model = _Model(f"teacher-onnx-{variant}", "teacher", "teacher", timed.runtime, f"teacher ONNX {variant}",
                       timed, ("stages.models.onnx_teacher.OnnxTeacher", kwargs),
                       [export_dir / f for f in (file, TOKENIZER_FILE, CONFIG_FILE)])
        _predict_all(model, timed, None, splits, p.batch_size)
        out.append(model)
    return out


def _score(task: Task, model: _Model, splits: dict[str, Split]) -> None:
    """model.metrics[split][seed] = the task's metrics of that seed's predictions (seed None: deterministic)."""
    model.metrics = {split: {seed: task_metrics(task, splits[split].labels, proba.argmax(-1))
                             for seed, proba in by_seed.items()} for split, by_seed in model.proba.items()}


def _summary(task: Task, model: _Model) -> dict:
    """Per split and metric: mean, sd, min/max, 95% CI over seeds, and each seed's value (None: no seeds)."""
    out = {}
    for split, per_seed in model.metrics.items():
        out[split] = {metric: {**describe([v[metric] for v in per_seed.values()]),
                               "seeds": None if None in per_seed else {str(s): v[metric] for s, v in per_seed.items()}}
                      for metric in task.metrics}
    return out


def pareto_frontier(points: dict[str, tuple[float, float]]) -> set[str]:
    """Names whose (speed, score) no other point matches or beats on both with one strictly better."""
    return {name for name, (speed, score) in points.items()
            if not any(s2 >= speed and a2 >= score and (s2 > speed or a2 > score)
                       for other, (s2, a2) in points.items() if other != name)}


def ship_choice(rows: list[dict], min_speedup: float) -> dict:
    """The ship rule on compare's rows (name, kind, arch, sentences_per_s, dev: the selection score's mean):
    the best student on dev among those >= min_speedup x the teacher's ONNX int8 speed; else the fastest."""
    teacher = next(r for r in rows if r["name"] == "teacher-onnx-int8")
    students = [r for r in rows if r["kind"] == "student"]
    if not students:
        raise StageError("no distilled student to choose from: run the student stage first")
    floor = min_speedup * teacher["sentences_per_s"]
    eligible = [r for r in students if r["sentences_per_s"] >= floor]
    chosen = max(eligible, key=lambda r: r["dev"]) if eligible else max(students, key=lambda r: r["sentences_per_s"])
    return {"name": chosen["name"], "arch": chosen["arch"], "rule_met": bool(eligible), "min_speedup": min_speedup,
            "eligible": [r["name"] for r in eligible],
            "rule": f"the best mean dev score among distilled students with at least {min_speedup:g}x the "
                    "teacher's ONNX int8 sentences/s"}


def student_versus(task: Task, student: _Model, other: _Model, labels: np.ndarray, split: str) -> dict:
    """The student's seeds against another model on split's first metric: the difference in points and its tests.

    Both seeded (the same seeds): a paired t over seeds. The other deterministic: a one-sample t of the student's
    seeds against its score. Either way an exact McNemar test of the student seeds' majority-vote ensemble against
    the other's (ensemble) predictions. `significant`: the student is ahead and every test's p < 0.05."""
    metric = task.metrics[0]
    ours = {s: v[metric] for s, v in student.metrics[split].items()}
    theirs = {s: v[metric] for s, v in other.metrics[split].items()}
    result: dict = {"name": other.name, "label": other.label, "runtime": other.runtime, "split": split,
                    "metric": metric,
                    "points": round(100 * (statistics.fmean(ours.values()) - statistics.fmean(theirs.values())), 2)}
    if None in theirs:
        result["test"] = "one-sample t over the student's seeds"
        result["one_sample_t"] = one_sample_t_test(list(ours.values()), theirs[None])
        p_values = [result["one_sample_t"]["p_value"]]
    else:
        if sorted(ours) != sorted(theirs):
            raise StageError(f"{student.name} seeds {sorted(ours)} and {other.name} seeds {sorted(theirs)} differ")
        result["test"] = "paired t over seeds"
        result["paired_t"] = paired_t_test([ours[s] for s in sorted(ours)], [theirs[s] for s in sorted(ours)])
        p_values = [result["paired_t"]["p_value"]]
    result["mcnemar_ensemble"] = mcnemar_test(labels, majority_vote(list(student.proba[split].values())),
                                              majority_vote(list(other.proba[split].values())))
    if None in theirs:
        p_values.append(result["mcnemar_ensemble"]["p_value"])
    result["p_value"] = None if None in p_values else max(p_values)
    result["significant"] = result["points"] > 0 and result["p_value"] is not None and result["p_value"] < SIGNIFICANCE
    return result


def _timings(models: list[_Model], sample_a: list[str], sample_b: list[str] | None, p: CompareParams) -> dict:
    """Every model once per round, rounds interleaved (A B C A B C) so a busy spell of a shared machine spreads over
    all of them; per model the median of its rounds."""
    rounds: dict[str, list[dict]] = {m.name: [] for m in models}
    for _ in tqdm(range(p.timing_rounds), desc="timing rounds", leave=False):
        for m in models:
            rounds[m.name].append(measure_speed(lambda a, b, n, m=m: m.timed.predict_proba(a, b, n), sample_a, sample_b,
                                                p.batch_size, p.latency_sentences, p.max_timing_seconds))
    return {name: {key: round(statistics.median(r[key] for r in runs), 3)
                   for key in ("sentences_per_s", "sentences_timed", "latency_ms_p50", "latency_ms_p95")}
            for name, runs in rounds.items()}


def _rank(task: Task, models: list[_Model], splits: dict, speed: dict, rss: dict, disk: dict,
          params: CompareParams) -> tuple[list[dict], dict, dict]:
    """compare.json's rows (scores, speed, size, the frontier), the ship choice with what it beat, and the best
    student tested against the best model without a teacher."""
    selection = task.selection_split
    metric = task.metrics[0]
    summaries = {m.name: _summary(task, m) for m in models}
    mean_dev = {m.name: summaries[m.name][selection][metric]["mean"] for m in models}
    frontier = pareto_frontier({m.name: (speed[m.name]["sentences_per_s"], mean_dev[m.name]) for m in models})
    rows = [{"name": m.name, "kind": m.kind, "arch": m.arch, "runtime": m.runtime, "label": m.label,
             "seeds": None if None in m.metrics[selection] else sorted(m.metrics[selection]),
             "dev": mean_dev[m.name], **speed[m.name], "disk_mb": disk[m.name], "peak_rss_mb": rss.get(m.name),
             "on_frontier": m.name in frontier, "fit_seconds": m.fit_seconds, "scores": summaries[m.name]}
            for m in models]
    teacher_int8 = next(r for r in rows if r["name"] == "teacher-onnx-int8")
    for row in rows:
        row["speedup_vs_teacher_int8"] = round(row["sentences_per_s"] / teacher_int8["sentences_per_s"], 2)
    choice = ship_choice(rows, params.min_speedup)
    by_name = {m.name: m for m in models}
    no_teacher = [m for m in models if m.kind == "alternative"]
    best_student = max((m for m in models if m.kind == "student"), key=lambda m: mean_dev[m.name])
    best_alternative = max(no_teacher, key=lambda m: mean_dev[m.name])
    labels = splits[selection].labels
    shipped = by_name[choice["name"]]
    choice |= {"seed": next(iter(shipped.metrics[selection])), "threads": params.threads,
               "speedup_vs_teacher_int8": next(r for r in rows if r["name"] == shipped.name)["speedup_vs_teacher_int8"],
               "versus_best_alternative": student_versus(task, shipped, best_alternative, labels, selection),
               "versus_teacher_int8": {
                   "points": round(100 * (mean_dev[shipped.name] - mean_dev["teacher-onnx-int8"]), 2),
                   "speedup": next(r for r in rows if r["name"] == shipped.name)["speedup_vs_teacher_int8"]}}
    for row in rows:
        row["shipped"] = row["name"] == choice["name"]
    versus = {"student": best_student.name, **student_versus(task, best_student, best_alternative, labels, selection)}
    return rows, choice, versus


def compare(task: Task, raw_dir: Path, teacher_dir: Path, static_dir: Path | None,
            runs: dict[str, dict[str, dict[int, tuple[Path, Path]]]], params: CompareParams, *,
            max_length: int = 128) -> dict:
    """compare.json's content. runs: {"student" | "baseline": {arch: {seed: (model_dir, run_dir)}}}."""
    torch.set_num_threads(params.threads)
    splits = scored_splits(task, raw_dir)
    selection = task.selection_split
    skipped: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="compare-") as tmp:
        work = Path(tmp)
        models = (_alternatives(task, raw_dir, static_dir, splits, work, params, skipped)
                  + _seeded("baseline", "hard-label", runs["baseline"], splits, work, params.threads, params.batch_size)
                  + _seeded("student", "distilled", runs["student"], splits, work, params.threads, params.batch_size)
                  + _teacher(teacher_dir, splits, work, params, max_length))
        for m in models:
            _score(task, m, splits)
        dev = splits[selection]
        repeat = -(-params.throughput_sentences // len(dev.texts_a))
        sample_a = (dev.texts_a * repeat)[:params.throughput_sentences]
        sample_b = (dev.texts_b * repeat)[:params.throughput_sentences] if dev.texts_b is not None else None
        speed = _timings(models, sample_a, sample_b, params)
        rss = {}
        if params.peak_rss:
            for m in tqdm(models, desc="peak RSS", leave=False):
                rss[m.name] = peak_rss_mb(m.rss[0], m.rss[1], sample_a[:params.batch_size],
                                          sample_b[:params.batch_size] if sample_b else None, params.batch_size,
                                          params.threads)
        disk = {m.name: round(sum(f.stat().st_size for f in m.files) / 2**20, 3) for m in models}

    rows, choice, versus = _rank(task, models, splits, speed, rss, disk, params)
    return {
        "task": task.name,
        "selection": f"{selection} {task.metrics[0]}",
        "splits": {name: len(s.labels) for name, s in splits.items()},
        "threads": params.threads,
        "batch_size": params.batch_size,
        "throughput_sentences": len(sample_a),
        "latency_sentences": min(params.latency_sentences, len(sample_a)),
        "timing_rounds": params.timing_rounds,
        "max_timing_seconds": params.max_timing_seconds,
        "models": rows,
        "skipped": skipped,
        "best_student_vs_best_alternative": versus,
        "ship": choice,
    }


def run(task: Task, params: Params) -> None:
    """The `compare` stage for one task: metrics/<task>/compare.json, compare.md, compare_plot.json (dvc plots)
    and compare.png, over params.yaml's `archs` and `seeds` with the `compare:` section."""
    runs = {kind: paths.arch_runs(kind, task.name, params.seeds, params.archs) for kind in ("student", "baseline")}
    static_dir = (embeddings_dir(paths.inputs_dir(task.name, "static"), teacher=False) if "static" in params.archs
                  else None)
    result = compare(task, paths.raw_dir(task.name), paths.model_dir("teacher", task.name), static_dir, runs,
                     params.compare, max_length=params.teacher.max_length)
    out = paths.metrics_dir(task.name)
    write_json(result, out / "compare.json")
    write_json({"models": plot_rows(result, task)}, out / "compare_plot.json")
    with atomic_path(out / "compare.png") as tmp:
        compare_figure(result, task, tmp)
    text = compare_markdown(result, task)
    with atomic_path(out / "compare.md") as tmp:
        tmp.write_text(text)
    print(text)
