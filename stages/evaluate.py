"""`evaluate` stage: teacher vs baseline vs student on one task, over the student's training seeds.

Dev scores come from each run's metrics file (the teacher's, and one per seed for the BiLSTMs): per
model and metric the mean, sd, min/max and 95% CI over seeds, and the student - baseline gain with a
paired t-test over seeds and an exact McNemar test on the seed ensembles' dev predictions
(stages/report/statistics.py). Parameter counts, size on disk and inference throughput (the same sentences,
the same batch size, text in and logits out, on the current device) are measured here, the way the
paper compares BERT with its BiLSTMs.

The paper's speed-up (434x) is against BERT-large; ours is against whatever teacher was trained.
`reference_architectures` also times BERT-base / BERT-large *shapes* with random weights on the same
sentences (tokenised by the teacher's tokenizer): speed depends on the shape alone, so this gives the
paper's comparison without the paper's checkpoint. They are yardsticks for speed, never classifiers.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch
from torch import nn

from stages import paths
from stages.errors import StageError
from stages.data.io import RAW_SCHEMA, atomic_path, read_parquet, write_json
from stages.params import EvaluateParams, Params
from stages.report.summary import SEEDED, curve_rows, figure, markdown, summary_metrics, tradeoff_rows
from stages.runtime import resolve_device
from stages.report.statistics import describe, ensemble_predictions, mcnemar_test, paired_t_test
from stages.data.tasks import Task
from stages.models.registry import load_predictor
from stages.models.teacher_model import batch_logits, encode_pairs, length_sorted_batches, load_teacher

RUN_FILE = "run.json"
# Devlin et al. 2019, section 3: the two published BERT sizes.
REFERENCE_SHAPES = {
    "bert-base": {"hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12, "intermediate_size": 3072},
    "bert-large": {"hidden_size": 1024, "num_hidden_layers": 24, "num_attention_heads": 16, "intermediate_size": 4096},
}


def _read_metrics(path: Path) -> dict:
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise StageError(f"missing metrics file {path}: run the stage that writes it first") from None
    except json.JSONDecodeError as e:
        raise StageError(f"{path} is not valid JSON ({e})") from None


def _disk_mb(directory: Path) -> float:
    return round(sum(p.stat().st_size for p in Path(directory).rglob("*") if p.is_file()) / 2**20, 2)


def _timed(run, device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    run()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def transformer_throughput(tokenizer, model, texts_a, texts_b, device, batch_size: int, max_length: int):
    """Sentences per second, text in and logits out, and the parameter counts of a transformers classifier."""

    def run(a=texts_a, b=texts_b):
        batches = length_sorted_batches(encode_pairs(tokenizer, a, b, max_length), batch_size, tokenizer.pad_token_id)
        batch_logits(model, batches, len(a), device)

    run(texts_a[:8], texts_b[:8] if texts_b else None)  # warm-up: first-call allocations are not inference
    embeddings = sum(p.numel() for m in model.modules() if isinstance(m, nn.Embedding) for p in m.parameters())
    total = sum(p.numel() for p in model.parameters())
    return len(texts_a) / _timed(run, device), {"all": int(total), "without_embeddings": int(total - embeddings)}


def reference_model(name: str, tokenizer, num_labels: int, device):
    """A randomly initialised BERT of a published shape, for timing only."""
    from transformers import BertConfig, BertForSequenceClassification

    config = BertConfig(vocab_size=len(tokenizer), num_labels=num_labels, **REFERENCE_SHAPES[name])
    torch.manual_seed(0)
    return BertForSequenceClassification(config).to(device).eval()


def student_throughput(student_dir: Path, texts_a, texts_b, device, batch_size: int) -> float:
    student = load_predictor(student_dir, "torch", device)
    student.predict_logits(texts_a[:8], texts_b[:8] if texts_b else None, batch_size)  # warm-up
    return len(texts_a) / _timed(lambda: student.predict_logits(texts_a, texts_b, batch_size), device)


def _seeded_scores(task: Task, runs: dict, seeds: list[int], evals: dict, device) -> tuple[dict, dict, dict]:
    """Per seeded kind: its runs' metrics, the described dev scores and every seed's dev probabilities."""
    run_metrics = {kind: {seed: _read_metrics(Path(run_dir) / RUN_FILE) for seed, (_, run_dir) in runs[kind].items()}
                   for kind in SEEDED}
    models: dict = {}
    probabilities: dict = {kind: {split: [] for split in task.eval_splits} for kind in SEEDED}
    for kind in SEEDED:
        models[kind] = {split: {m: {**describe([run_metrics[kind][s][split][m] for s in seeds]),
                                    "seeds": {s: run_metrics[kind][s][split][m] for s in seeds}}
                                for m in task.metrics} for split in task.eval_splits}
        for seed in seeds:
            student = load_predictor(runs[kind][seed][0], "torch", device)
            for split, table in evals.items():
                texts_b = table["text_b"].to_pylist() if task.is_pair else None
                probabilities[kind][split].append(student.predict_proba(table["text_a"].to_pylist(), texts_b))
    return run_metrics, models, probabilities


def _gain(task: Task, evals: dict, models: dict, probabilities: dict) -> dict:
    """Student - baseline per split: the paired t-test over seeds per metric, McNemar on the seed ensembles."""
    gain = {}
    for split, table in evals.items():
        labels = table["label"].to_numpy()
        ensembles = {kind: ensemble_predictions(probabilities[kind][split]) for kind in SEEDED}
        gain[split] = {"mcnemar_ensemble": mcnemar_test(labels, ensembles["student"], ensembles["baseline"])}
        for m in task.metrics:
            student, baseline = (list(models[kind][split][m]["seeds"].values()) for kind in ("student", "baseline"))
            difference = describe([a - b for a, b in zip(student, baseline)])
            gain[split][m] = {"mean": difference["mean"], "sd": difference["sd"], "ci95": difference["ci95"],
                              "paired_t": paired_t_test(student, baseline)}
    return gain


def _references(names: list[str], tokenizer, task: Task, texts_a, texts_b, device, batch_size: int,
                max_length: int, student_speed: float) -> dict:
    references = {}
    for name in names:
        model = reference_model(name, tokenizer, task.num_labels, device)
        speed, counts = transformer_throughput(tokenizer, model, texts_a, texts_b, device, batch_size, max_length)
        references[name] = {"weights": "random (timing only)", "params_all": counts["all"],
                            "params_without_embeddings": counts["without_embeddings"],
                            "sentences_per_s": round(speed, 1), "student_speedup": round(student_speed / speed, 1)}
        del model
    return references


def _speeds(task: Task, raw_dir: Path, teacher_dir: Path, first_student: Path, device, params: EvaluateParams,
            max_length: int) -> dict:
    """Throughput of the teacher, the student and the reference shapes on the first training sentences."""
    train = read_parquet(Path(raw_dir) / "train.parquet", RAW_SCHEMA, hint="run the download stage first")
    sample = train.slice(0, params.throughput_sentences)
    texts_a = sample["text_a"].to_pylist()
    texts_b = sample["text_b"].to_pylist() if task.is_pair else None
    tokenizer, teacher = load_teacher(teacher_dir, device)
    teacher_speed, teacher_params = transformer_throughput(tokenizer, teacher, texts_a, texts_b, device,
                                                           params.batch_size, max_length)
    del teacher
    student_speed = student_throughput(first_student, texts_a, texts_b, device, params.batch_size)
    references = _references(params.reference_architectures, tokenizer, task, texts_a, texts_b, device,
                             params.batch_size, max_length, student_speed)
    return {"teacher": teacher_speed, "teacher_params": teacher_params, "student": student_speed,
            "references": references, "sentences": len(texts_a)}


def evaluate(task: Task, raw_dir: Path, teacher_dir: Path, teacher_metrics: Path,
             runs: dict[str, dict[int, tuple[Path, Path]]], *, device: torch.device, params: EvaluateParams,
             max_length: int, label_metrics: Path | None = None) -> dict:
    """The full report for `task`. runs: {"student" | "baseline": {seed: (model_dir, run_dir)}}, the same
    seeds for both (the gain is paired by seed). label_metrics: the label stage's label.json, for the precision
    its logits were computed at (with teacher.json's, the precisions that ran: `auto` differs between machines)."""
    seeds = sorted(runs["student"])
    if sorted(runs["baseline"]) != seeds:
        raise StageError(f"student seeds {seeds} and baseline seeds {sorted(runs['baseline'])} differ")
    teacher_scores = _read_metrics(teacher_metrics)
    evals = {split: read_parquet(Path(raw_dir) / f"{split}.parquet", RAW_SCHEMA, hint="run the download stage first")
             for split in task.eval_splits}
    run_metrics, models, probabilities = _seeded_scores(task, runs, seeds, evals, device)
    models = {"teacher": {split: {m: {"mean": teacher_scores[split][m]} for m in task.metrics}
                          for split in task.eval_splits}, **models}
    gain = _gain(task, evals, models, probabilities)
    # every seed's student has the same shape: one is timed, for student and baseline alike
    speed = _speeds(task, raw_dir, teacher_dir, runs["student"][seeds[0]][0], device, params, max_length)
    first = {kind: run_metrics[kind][seeds[0]] for kind in SEEDED}
    teacher_params = speed["teacher_params"]
    sizes = {
        "teacher": {"params_all": teacher_params["all"], "params_without_embeddings": teacher_params["without_embeddings"],
                    "disk_mb": _disk_mb(teacher_dir), "sentences_per_s": round(speed["teacher"], 1)},
        **{kind: {"params_all": first[kind]["params_all"],
                  "params_without_embeddings": first[kind]["params_without_embeddings"],
                  "disk_mb": _disk_mb(runs[kind][seeds[0]][0]), "sentences_per_s": round(speed["student"], 1)}
           for kind in SEEDED},
    }
    split, metric = task.selection_split, task.metrics[0]
    student_mean = models["student"][split][metric]["mean"]
    return {
        "task": task.name,
        "seeds": seeds,
        "device": str(device),
        "threads": torch.get_num_threads(),
        "throughput_sentences": speed["sentences"],
        "batch_size": params.batch_size,
        "scores": models,
        "gain": gain,
        "sizes": sizes,
        "student_vs_teacher": {
            f"{metric}_ratio": student_mean / models["teacher"][split][metric]["mean"],
            "speedup": speed["student"] / speed["teacher"],
            "params_ratio": teacher_params["all"] / first["student"]["params_all"],
        },
        "references": speed["references"],
        "precision": {"teacher": teacher_scores.get("precision"),
                      "label": _read_metrics(label_metrics).get("precision") if label_metrics else None},
    }


def run(task: Task, params: Params) -> None:
    """The `evaluate` stage for one task: metrics/<task>/{report,summary,tradeoff,curves}.json, summary.md and
    results.png, from params.yaml's `seeds`, `device`, `evaluate` and `teacher.max_length`."""
    arch = params.archs[0]  # the first arch in `archs` is the one reported here (`compare` ranks them all)
    runs = {kind: {seed: (paths.run_model_dir(kind, task.name, arch, seed), paths.run_dir(kind, task.name, arch, seed))
                   for seed in params.seeds} for kind in SEEDED}
    out = paths.metrics_dir(task.name)
    report = evaluate(task, paths.raw_dir(task.name), paths.model_dir("teacher", task.name), out / "teacher.json",
                      runs, device=resolve_device(params.device), params=params.evaluate,
                      max_length=params.teacher.max_length, label_metrics=out / "label.json")
    curves = curve_rows({kind: [run_dir for _, run_dir in runs[kind].values()] for kind in SEEDED}, task)
    write_json(report, out / "report.json")
    write_json(summary_metrics(report, task), out / "summary.json")
    write_json({"models": tradeoff_rows(report, task)}, out / "tradeoff.json")
    write_json({"epochs": curves}, out / "curves.json")
    with atomic_path(out / "results.png") as tmp:
        figure(report, curves, task, tmp)
    text = markdown(report, task)
    with atomic_path(out / "summary.md") as tmp:
        tmp.write_text(text)
    print(text)
