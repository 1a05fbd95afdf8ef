"""`export` stage: ship one trained student as ONNX (fp32 and dynamically quantised int8) with its tokenizer,
a config and a model card, and compare the three ways to run it (PyTorch, ONNX fp32, ONNX int8) on the same
dev sentences: scores, sentences/s at a batch of `batch_size`, and single-sentence latency.

Which student ships is the `compare` stage's choice (metrics/<task>/compare.json, its `ship` section: the arch,
by the documented rule of docs/compare.md); the card says what that model beat and by how much. The exported seed
is the first of params.yaml's `seeds` (not the best on dev, which would flatter its score); the card reports it
beside the mean ± sd over all seeds from evaluate's report.json. Each arch is written by its exporter
(stages/models/onnx_export.py `EXPORTERS`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from stages.errors import StageError
from stages.data.io import RAW_SCHEMA, atomic_path, read_parquet
from stages.report.metrics import task_metrics
from stages.models.onnx_export import export_onnx, exporter, quantize_int8  # noqa: F401 (export_onnx: tests build exports with it)
from stages.models.onnx_student import MODEL_FILES, OnnxStudent
from stages.models.timing import measure_speed
from stages.predict import ONNX_BACKENDS
from stages.student import Student, load_student
from stages.data.tasks import Task

# int8 is the card's recommendation only when it costs at most this many points of the task's selection
# metric on dev; otherwise the card recommends fp32. Dynamic int8 can break a siamese student: its |h1 - h2|
# feature turns the two encoders' independent rounding errors into a bias (MRPC: 16.67 points).
INT8_MAX_COST_POINTS = 0.5


def _dev(task: Task, raw_dir: Path) -> dict[str, tuple[list[str], list[str] | None, np.ndarray]]:
    out = {}
    for split in task.eval_splits:
        table = read_parquet(Path(raw_dir) / f"{split}.parquet", RAW_SCHEMA, hint="run the download stage first")
        out[split] = (table["text_a"].to_pylist(), table["text_b"].to_pylist() if task.is_pair else None,
                      table["label"].to_numpy())
    return out


def compare_backends(task: Task, student: Student, export_dir: Path, raw_dir: Path, *, batch_size: int,
                     throughput_sentences: int, latency_sentences: int = 200) -> dict:
    """Scores on every eval split, speed (text in, logits out) and the largest fp32-vs-PyTorch logit gap."""
    dev = _dev(task, raw_dir)
    runners = {"pytorch": lambda a, b, n: student.predict_logits(a, b, batch_size=n)}
    for variant in MODEL_FILES:
        onnx = OnnxStudent(export_dir, variant, threads=torch.get_num_threads())
        runners[f"onnx-{variant}"] = lambda a, b, n, onnx=onnx: onnx.predict_logits(a, b, batch_size=n)
    results, logits = {}, {}
    split = task.selection_split
    a, b, _ = dev[split]
    repeat = -(-throughput_sentences // len(a))
    sample_a = (a * repeat)[:throughput_sentences]
    sample_b = (b * repeat)[:throughput_sentences] if b is not None else None
    for name, run in runners.items():
        scores = {}
        for s, (ta, tb, labels) in dev.items():
            out = run(ta, tb, batch_size)
            logits[name, s] = out
            scores[s] = task_metrics(task, labels, out.argmax(-1))
        results[name] = {"scores": scores, **measure_speed(run, sample_a, sample_b, batch_size, latency_sentences)}
    metric = task.metrics[0]
    gap = max(float(np.abs(logits["onnx-fp32", s] - logits["pytorch", s]).max()) for s in dev)
    cost = round(100 * (results["pytorch"]["scores"][split][metric] - results["onnx-int8"]["scores"][split][metric]), 2)
    return {
        "backends": results,
        "max_abs_logit_diff_fp32": gap,
        "int8_cost_points": cost,
        "recommended": recommended_variant(cost),
        "int8_speedup_over_pytorch": round(results["onnx-int8"]["sentences_per_s"]
                                           / results["pytorch"]["sentences_per_s"], 2),
        "selection": f"{split} {metric}", "batch_size": batch_size, "throughput_sentences": len(sample_a),
        "latency_sentences": min(latency_sentences, len(sample_a)), "threads": torch.get_num_threads(),
    }


def recommended_variant(int8_cost_points: float) -> str:
    """The ONNX file the card recommends: int8 when it costs at most INT8_MAX_COST_POINTS on dev, else fp32."""
    return "int8" if int8_cost_points <= INT8_MAX_COST_POINTS else "fp32"


def _pm(stat: dict) -> str:
    return f"{100 * stat['mean']:.2f} ± {100 * stat['sd']:.2f}" if stat.get("sd") is not None else f"{100 * stat['mean']:.2f}"


def why_shipped(choice: dict | None, metric: str) -> str:
    """The card's paragraph on why this model ships: compare's rule, what it beat and by how much, or '' without."""
    if not choice:
        return ""
    lines = [f"## Why this model\n\nChosen by the `compare` stage ({choice['rule']})."]
    if not choice["rule_met"]:
        lines.append(f"No distilled student reached {choice['min_speedup']:g}× the teacher's ONNX int8 speed, so the "
                     "fastest one ships.")
    beat = choice.get("versus_best_alternative")
    if beat:
        verb = f"beats {beat['label']}" if beat["points"] > 0 else f"trails {beat['label']}"
        p = beat.get("p_value")
        lines.append(f"On dev {metric}, over its seeds, it {verb} ({beat['runtime']}), the best model that needs no "
                     f"teacher, by {abs(beat['points']):.2f} points"
                     + (f" ({beat['test']}, p = {p:.3g}: {'a win' if beat['significant'] else 'not a win'} at "
                        "p < 0.05)" if p is not None else "") + ".")
    teacher = choice.get("versus_teacher_int8")
    if teacher:
        lines.append(f"Against the teacher run as a user would ship it (ONNX int8, dynamic padding) it is "
                     f"{teacher['points']:+.2f} points on dev {metric} and {teacher['speedup']:.1f}× its sentences/s "
                     f"({choice['threads']} threads).")
    return " ".join(lines) + "\n\n"


def model_card(task: Task, config: dict, seed: int, report: dict, comparison: dict, teacher: dict, data: dict,
               choice: dict | None = None) -> str:
    """README.md of the export directory (the Hugging Face model card convention: YAML front matter, then text)."""
    split, metric = task.selection_split, task.metrics[0]
    scores, n = report["scores"], len(report["seeds"])
    exported = scores["student"][split][metric]["seeds"][str(seed)]
    rows = "\n".join(
        f"| {name} | {100 * r['scores'][split][metric]:.2f} | {r['sentences_per_s']:,.0f} | "
        f"{r['latency_ms_p50']:.2f} / {r['latency_ms_p95']:.2f} |" for name, r in comparison["backends"].items())
    inputs = "`ids_a` and `ids_b` (int64, batch × length each)" if task.is_pair else "`ids` (int64, batch × length)"
    splits = ", ".join(f"{s} {info['rows']:,}" for s, info in data["splits"].items())
    cli_example = "$'a first sentence\\ta second sentence'" if task.is_pair else "'a sentence to classify'"
    py_example = ('first, second = "a first sentence", "a second sentence"' if task.is_pair
                  else 'text = "a sentence to classify"')
    cnn = config.get("arch") == "cnn"
    name = "CNN" if cnn else "BiLSTM"
    shape = (f"CNN (Kim 2014: filter widths {', '.join(map(str, config.get('widths', [])))}, {config.get('maps')} maps "
             "each, max over time)" if cnn else f"one-layer BiLSTM (hidden {config['hidden']})")
    cost = comparison["int8_cost_points"]
    int8_effect = f"costs {cost:.2f} points" if cost >= 0 else f"gains {-cost:.2f} points"
    variant = comparison["recommended"]
    backend = next(name for name, v in ONNX_BACKENDS.items() if v == variant)
    model_file = MODEL_FILES[variant]
    advice = (f"at most the {INT8_MAX_COST_POINTS} allowed, so use `{model_file}`" if variant == "int8" else
              f"more than the {INT8_MAX_COST_POINTS} allowed, so use `{model_file}` (fp32); `{MODEL_FILES['int8']}` is "
              "kept for comparison")
    return f"""---
library_name: onnx
pipeline_tag: text-classification
tags: [knowledge-distillation, bilstm, tang-et-al-2019, {task.name}]
---

# {task.name} {name} student (distilled from {teacher.get('model', 'a BERT teacher')})

{'A siamese' if task.is_pair else 'A'} {shape}, FC {config['fc']}, {config['embeddings']} embeddings
({config['embedding_mode']}), trained on a fine-tuned BERT teacher's logits over an augmented transfer set,
after Tang et al. 2019 (arXiv 1903.12136). Labels: {', '.join(task.label_names)}.

- **Task and data**: {task.name} ({task.notes or task.source}); splits: {splits}.
- **Teacher**: `{teacher.get('model')}`, {split} {metric} {100 * teacher[split][metric]:.2f}.
- **This model**: seed {seed} of {report['seeds']}; {split} {metric} {100 * exported:.2f}.
- **Over all {n} seeds** ({split}, mean ± sd): student {_pm(scores['student'][split][metric])}, the same
  {name} on hard labels alone (no teacher) {_pm(scores['baseline'][split][metric])}; the student keeps
  {100 * report['student_vs_teacher']['accuracy_ratio']:.1f}% of the teacher's {metric}.
- **Parameters**: {config.get('params_all', 0):,} ({config.get('params_without_embeddings', 0):,} without embeddings);
  max {config['max_length']} tokens per sentence.

{why_shipped(choice, metric)}## Speed ({comparison['threads']} CPU threads, text in, logits out)

| backend | {split} {metric} | sentences/s (batch {comparison['batch_size']}) | latency ms, batch 1 (p50 / p95) |
|---|---|---|---|
{rows}

ONNX fp32 matches PyTorch to {comparison['max_abs_logit_diff_fp32']:.1e} in the logits on every {split} sentence;
int8 (onnxruntime dynamic quantisation) {int8_effect} of {split} {metric}: {advice}.

## How to use

Files: `model.onnx` (fp32), `model.int8.onnx`, `tokenizer.json` (Hugging Face `tokenizers`), `config.json`.
The graph takes {inputs}: token ids of one length per batch, so group sentences by length (or send one at a time);
output `logits` (batch × {task.num_labels}).

```bash
python -m stages predict --backend {backend} --model <this directory> {cli_example}
```

```python
import json, numpy as np, onnxruntime as ort
from tokenizers import Tokenizer
tok = Tokenizer.from_file("tokenizer.json")
config = json.load(open("config.json"))
session = ort.InferenceSession("{model_file}")
ids = lambda s: np.array([tok.encode(s, add_special_tokens=False).ids[:config["max_length"]] or [0]])
{py_example}
logits = session.run(None, {{{'"ids_a": ids(first), "ids_b": ids(second)' if task.is_pair else '"ids": ids(text)'}}})[0]
print(config["label_names"][int(logits.argmax())])
```

Produced by the `export` stage of this repository's DVC pipeline (`dvc repro`); the numbers above are from that run.
"""


def export_student(task: Task, model_dir: Path, raw_dir: Path, out_dir: Path, *, seed: int, report: dict,
                   teacher: dict, data: dict, batch_size: int = 512, throughput_sentences: int = 2000,
                   choice: dict | None = None) -> dict:
    """Write out_dir/{model.onnx, model.int8.onnx, tokenizer.json, config.json, README.md}; return the comparison.
    choice: compare.json's `ship` section (which arch, and why), or None for the student in model_dir alone."""
    student = load_student(model_dir, "cpu")
    arch = student.config.get("arch", "bilstm")
    if choice is not None and choice["arch"] != arch:
        raise StageError(f"compare chose arch {choice['arch']!r} but {model_dir} holds a {arch} student; rerun compare")
    if str(seed) not in report["scores"]["student"][task.selection_split][task.metrics[0]]["seeds"]:
        raise StageError(f"seed {seed} is not in the evaluate report's seeds {report['seeds']}; rerun evaluate")
    with atomic_path(Path(out_dir), is_dir=True) as tmp:
        config = exporter(arch).write(student, model_dir, tmp, {"seed": seed})
        comparison = compare_backends(task, student, tmp, raw_dir, batch_size=batch_size,
                                      throughput_sentences=throughput_sentences)
        (tmp / "README.md").write_text(model_card(task, config, seed, report, comparison, teacher, data, choice))
    return {"task": task.name, "seed": seed, "arch": arch, **comparison}
