"""`evaluate` stage: teacher vs baseline vs student on one task, in one summary.

Dev scores come from each model's own metrics file; parameter counts, size on disk and inference
throughput (the same sentences, the same batch size, text in and logits out, on the current device)
are measured here, the way the paper compares BERT with its BiLSTMs.

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

from stages.errors import StageError
from stages.io import RAW_SCHEMA, read_parquet
from stages.label import load_teacher
from stages.student import load_student
from stages.tasks import Task
from stages.teacher_model import batch_logits, encode_pairs, length_sorted_batches

MODELS = ("teacher", "baseline", "student")
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
    student = load_student(student_dir, device)
    student.predict_logits(texts_a[:8], texts_b[:8] if texts_b else None, batch_size)  # warm-up
    return len(texts_a) / _timed(lambda: student.predict_logits(texts_a, texts_b, batch_size), device)


def evaluate(task: Task, raw_dir: Path, model_dirs: dict[str, Path], metrics_dir: Path, *,
             device: torch.device, throughput_sentences: int = 2000, batch_size: int = 512,
             max_length: int = 128, reference_architectures: tuple[str, ...] = ()) -> dict:
    """Build the comparison for `task`; returns the summary (written by the caller)."""
    metrics = {name: _read_metrics(Path(metrics_dir) / f"{name}.json") for name in MODELS}
    train = read_parquet(Path(raw_dir) / "train.parquet", RAW_SCHEMA, hint="run the download stage first").to_pandas()
    sample = train.head(throughput_sentences)
    texts_a = sample["text_a"].tolist()
    texts_b = sample["text_b"].tolist() if task.is_pair else None

    tokenizer, teacher = load_teacher(model_dirs["teacher"], device)
    teacher_speed, teacher_params = transformer_throughput(tokenizer, teacher, texts_a, texts_b, device,
                                                           batch_size, max_length)
    del teacher
    student_speed = student_throughput(model_dirs["student"], texts_a, texts_b, device, batch_size)
    references = {}
    for name in reference_architectures:
        if name not in REFERENCE_SHAPES:
            raise StageError(f"evaluate.reference_architectures: unknown {name!r}; known: {', '.join(REFERENCE_SHAPES)}")
        model = reference_model(name, tokenizer, task.num_labels, device)
        speed, counts = transformer_throughput(tokenizer, model, texts_a, texts_b, device, batch_size, max_length)
        references[name] = {"weights": "random (timing only)", "params_all": counts["all"],
                            "params_without_embeddings": counts["without_embeddings"],
                            "sentences_per_s": round(speed, 1), "student_speedup": round(student_speed / speed, 1)}
        del model
    # the baseline is the same network as the student: measuring it again would say nothing new
    speed = {"teacher": teacher_speed, "baseline": student_speed, "student": student_speed}
    params = {
        "teacher": teacher_params,
        **{name: {"all": metrics[name]["params_all"], "without_embeddings": metrics[name]["params_without_embeddings"]}
           for name in ("baseline", "student")},
    }
    models = {
        name: {
            **{split: metrics[name][split] for split in task.eval_splits},
            "params_all": params[name]["all"],
            "params_without_embeddings": params[name]["without_embeddings"],
            "disk_mb": _disk_mb(model_dirs[name]),
            "sentences_per_s": round(speed[name], 1),
        }
        for name in MODELS
    }
    split, metric = task.selection_split, task.metrics[0]
    score = {name: models[name][split][metric] for name in MODELS}
    return {
        "task": task.name,
        "device": str(device),
        "threads": torch.get_num_threads(),
        "throughput_sentences": len(texts_a),
        "batch_size": batch_size,
        "models": models,
        "student_vs_teacher": {
            f"{metric}_ratio": round(score["student"] / score["teacher"], 4),
            "speedup": round(speed["student"] / speed["teacher"], 1),
            "params_ratio": round(params["teacher"]["all"] / params["student"]["all"], 1),
        },
        "student_vs_baseline": {f"{metric}_gain_points": round(100 * (score["student"] - score["baseline"]), 2)},
        "references": references,
    }


def tradeoff_rows(summary: dict, task: Task) -> list[dict]:
    """One row per model for `dvc plots`: accuracy against size and against speed."""
    split, metric = task.selection_split, task.metrics[0]
    return [
        {"model": name, metric: m[split][metric], "params_millions": round(m["params_all"] / 1e6, 3),
         "sentences_per_s": m["sentences_per_s"]}
        for name, m in summary["models"].items()
    ]


def markdown(summary: dict, task: Task) -> str:
    columns = [f"{split} {metric}" for split in task.eval_splits for metric in task.metrics]
    lines = [
        f"# {task.name}: teacher vs BiLSTM baseline vs distilled BiLSTM student",
        "",
        "| model | " + " | ".join(columns) + " | params (all) | params (no embeddings) | disk MB | sentences/s |",
        "|---|" + "---|" * (len(columns) + 4),
    ]
    for name, m in summary["models"].items():
        scores = [f"{100 * m[split][metric]:.2f}" for split in task.eval_splits for metric in task.metrics]
        lines.append(f"| {name} | " + " | ".join(scores) + f" | {m['params_all'] / 1e6:.2f}M"
                     f" | {m['params_without_embeddings'] / 1e6:.2f}M | {m['disk_mb']} | {m['sentences_per_s']:,.0f} |")
    vs = summary["student_vs_teacher"]
    lines += [
        "",
        f"Student vs teacher: {vs}. Student vs baseline: {summary['student_vs_baseline']}.",
        (f"Throughput: {summary['throughput_sentences']} training sentences, batch {summary['batch_size']}, "
         f"device {summary['device']} ({summary['threads']} threads), text in, logits out."),
    ]
    if summary["references"]:
        lines += ["", ("Timing-only yardsticks (random weights in a published shape, the teacher's tokenizer, "
                       "the same sentences; no accuracy):"), "",
                  "| shape | params (all) | sentences/s | student speed-up |", "|---|---|---|---|"]
        lines += [f"| {name} | {r['params_all'] / 1e6:.2f}M | {r['sentences_per_s']:,.1f} | {r['student_speedup']}x |"
                  for name, r in summary["references"].items()]
    return "\n".join(lines) + "\n"
