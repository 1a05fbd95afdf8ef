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

import json
from pathlib import Path

import numpy as np
import torch

from stages import paths
from stages.errors import StageError
from stages.data.io import RAW_SCHEMA, atomic_path, read_parquet, write_json
from stages.params import EvaluateParams, Params
from stages.report.metrics import task_metrics
from stages.models.onnx_export import exporter
from stages.models.onnx_student import CONFIG_FILE, MODEL_FILES, ONNX_BACKENDS
from stages.models.registry import TORCH_ARCHS, load_predictor, student_arch
from stages.models.timing import measure_speed
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


def compare_backends(task: Task, student, export_dir: Path, raw_dir: Path, *, batch_size: int,
                     throughput_sentences: int, latency_sentences: int = 200, reference: str = "pytorch",
                     open_onnx=None) -> dict:
    """Scores on every eval split, speed (text in, logits out) and the largest fp32-vs-reference logit gap.
    reference: the backend `student` runs in (pytorch for bilstm and cnn, numpy for ngram and static);
    open_onnx(export_dir, variant, threads): the export's ONNX runner (default: the registry's, any arch)."""
    threads = torch.get_num_threads()
    backend_of = {variant: backend for backend, variant in ONNX_BACKENDS.items()}
    open_onnx = open_onnx or (lambda d, variant, threads: load_predictor(d, backend_of[variant], threads=threads))
    dev = _dev(task, raw_dir)
    runners = {reference: lambda a, b, n: student.predict_logits(a, b, batch_size=n)}
    for variant in MODEL_FILES:
        onnx = open_onnx(export_dir, variant, threads)
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
    gap = max(float(np.abs(logits["onnx-fp32", s] - logits[reference, s]).max()) for s in dev)
    cost = round(100 * (results[reference]["scores"][split][metric] - results["onnx-int8"]["scores"][split][metric]), 2)
    speedup = round(results["onnx-int8"]["sentences_per_s"] / results[reference]["sentences_per_s"], 2)
    return {
        "backends": results,
        "reference_backend": reference,
        "max_abs_logit_diff_fp32": gap,
        "int8_cost_points": cost,
        "recommended": recommended_variant(cost),
        f"int8_speedup_over_{reference}": speedup,
        "selection": f"{split} {metric}", "batch_size": batch_size, "throughput_sentences": len(sample_a),
        "latency_sentences": min(latency_sentences, len(sample_a)), "threads": threads,
    }


def recommended_variant(int8_cost_points: float) -> str:
    """The ONNX file the card recommends: int8 when it costs at most INT8_MAX_COST_POINTS on dev, else fp32."""
    return "int8" if int8_cost_points <= INT8_MAX_COST_POINTS else "fp32"


def recommended_backend(variant: str) -> str:
    """The `predict --backend` / `serve --backend` name that runs an ONNX variant."""
    return next(name for name, v in ONNX_BACKENDS.items() if v == variant)


def _pm(stat: dict) -> str:
    return f"{100 * stat['mean']:.2f} ± {100 * stat['sd']:.2f}" if stat.get("sd") is not None else f"{100 * stat['mean']:.2f}"


def _card_facts(task: Task, config: dict, comparison: dict, data: dict) -> dict:
    """The model card's phrases that depend on the task, the architecture and the int8 cost."""
    arch = config.get("arch", "bilstm")
    cnn = arch == "cnn"
    cost, variant = comparison["int8_cost_points"], comparison["recommended"]
    model_file = MODEL_FILES[variant]
    return {
        "rows": "\n".join(
            f"| {name} | {100 * r['scores'][task.selection_split][task.metrics[0]]:.2f} | {r['sentences_per_s']:,.0f} | "
            f"{r['latency_ms_p50']:.2f} / {r['latency_ms_p95']:.2f} |" for name, r in comparison["backends"].items()),
        "inputs": "`ids_a` and `ids_b` (int64, batch × length each)" if task.is_pair else "`ids` (int64, batch × length)",
        "splits": ", ".join(f"{s} {info['rows']:,}" for s, info in data["splits"].items()),
        "cli_example": "$'a first sentence\\ta second sentence'" if task.is_pair else "'a sentence to classify'",
        "py_example": ('first, second = "a first sentence", "a second sentence"' if task.is_pair
                       else 'text = "a sentence to classify"'),
        "arch": arch,
        "name": {"cnn": "CNN", "ngram": "n-gram", "static": "static-embedding"}.get(arch, "BiLSTM"),
        "shape": (f"CNN (Kim 2014: filter widths {', '.join(map(str, config.get('widths', [])))}, {config.get('maps')} "
                  "maps each, max over time)" if cnn else f"one-layer BiLSTM (hidden {config.get('hidden')})"),
        "int8_effect": f"costs {cost:.2f} points" if cost >= 0 else f"gains {-cost:.2f} points",
        "backend": recommended_backend(variant),
        "model_file": model_file,
        "advice": (f"at most the {INT8_MAX_COST_POINTS} allowed, so use `{model_file}`" if variant == "int8" else
                   f"more than the {INT8_MAX_COST_POINTS} allowed, so use `{model_file}` (fp32); "
                   f"`{MODEL_FILES['int8']}` is kept for comparison"),
    }


def _usage(task: Task, f: dict) -> str:
    """The model card's "How to use" section."""
    inputs, backend, model_file = f["inputs"], f["backend"], f["model_file"]
    cli_example, py_example = f["cli_example"], f["py_example"]
    return f"""## How to use

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
    f = _card_facts(task, config, comparison, data)
    name, shape, rows, splits = f["name"], f["shape"], f["rows"], f["splits"]
    int8_effect, advice = f["int8_effect"], f["advice"]
    return f"""---
library_name: onnx
pipeline_tag: text-classification
tags: [knowledge-distillation, bilstm, tang-et-al-2019, {task.name}]
---

# {task.name} {name} student (distilled from {teacher.get('model', 'a BERT teacher')})

{_architecture(task, config, shape)}, trained on a fine-tuned BERT teacher's logits over an augmented
transfer set, after Tang et al. 2019 (arXiv 1903.12136). Labels: {', '.join(task.label_names)}.

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

ONNX fp32 matches the {'numpy' if comparison.get('reference_backend') == 'numpy' else 'PyTorch'} run to {comparison['max_abs_logit_diff_fp32']:.1e} in the logits on every {split} sentence;
int8 (onnxruntime dynamic quantisation) {int8_effect} of {split} {metric}: {advice}.

{_usage(task, f) if f["arch"] in TORCH_ARCHS else _bag_usage(task, f)}"""


def _architecture(task: Task, config: dict, shape: str) -> str:
    arch = config.get("arch", "bilstm")
    if arch == "ngram":
        k = config["knobs"]
        return (f"A linear layer over tf-idf n-grams (words {k['word_ngrams']}, characters {k['char_ngrams']}, "
                f"{k['features']}){'; pairs: [x_a, x_b, x_a * x_b]' if task.is_pair else ''}")
    if arch == "static":
        k = config["knobs"]
        return (f"Static word-piece embeddings made from the teacher (Model2Vec's method: PCA to {k['dims']} dims, "
                f"{k['weighting']} weighting), mean-pooled{', siamese features [u, v, |u-v|, u*v]' if task.is_pair else ''}, "
                f"then a head (hidden {k['hidden']})")
    return (f"{'A siamese' if task.is_pair else 'A'} {shape}, FC {config['fc']}, {config['embeddings']} embeddings "
            f"({config['embedding_mode']})")


def _bag_usage(task: Task, f: dict) -> str:
    """The "How to use" section of an ngram or static student's card (docs/students.md: the bag graph)."""
    files = "`features.json` (the n-gram featurizer)" if f["arch"] == "ngram" else "`tokenizer.json` (the teacher's word pieces)"
    return f"""## How to use

Files: `model.onnx` (fp32), `model.int8.onnx`, {files}, `config.json`. The graph sums table rows per sentence
(inputs `batch`, `indices_a`, `weights_a`, `rows_a`{', and the same for `_b`' if task.is_pair else ''}); the
formats are described in this repository's docs/students.md. Without PyTorch:

```bash
python -m stages predict --backend {f["backend"]} --model <this directory> {f["cli_example"]}
```

Produced by the `export` stage of this repository's DVC pipeline (`dvc repro`); the numbers above are from that run.
"""


def export_student(task: Task, model_dir: Path, raw_dir: Path, out_dir: Path, *, seed: int, report: dict,
                   teacher: dict, data: dict, params: EvaluateParams, choice: dict | None = None) -> dict:
    """Write out_dir/{model.onnx, model.int8.onnx, the arch's tokenizer.json or features.json, config.json,
    README.md} for the student in model_dir, by its arch's exporter (stages/models/onnx_export.py); return the
    comparison of the reference run (PyTorch, or numpy for ngram and static) and the ONNX backends.

    config.json is the student's own plus the seed, the graph's inputs, the parameter counts and
    `recommended_backend` (what serve runs by default). choice: compare.json's `ship` section, for the card."""
    if str(seed) not in report["scores"]["student"][task.selection_split][task.metrics[0]]["seeds"]:
        raise StageError(f"seed {seed} is not in the evaluate report's seeds {report['seeds']}; rerun evaluate")
    arch = student_arch(model_dir)
    student = load_predictor(model_dir, "torch")
    if choice is not None and choice["arch"] != arch:
        raise StageError(f"compare chose arch {choice['arch']!r} but {model_dir} holds a {arch} student; rerun compare")
    with atomic_path(Path(out_dir), is_dir=True) as tmp:
        config = exporter(arch).write(student, model_dir, tmp, {"seed": seed})
        comparison = compare_backends(task, student, tmp, raw_dir, batch_size=params.batch_size,
                                      throughput_sentences=params.throughput_sentences,
                                      reference="pytorch" if arch in TORCH_ARCHS else "numpy")
        config["recommended_backend"] = recommended_backend(comparison["recommended"])
        (tmp / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")
        (tmp / "README.md").write_text(model_card(task, config, seed, report, comparison, teacher, data, choice))
    return {"task": task.name, "seed": seed, "arch": arch, **comparison}


def _read_inputs(metrics_dir: Path) -> dict[str, dict]:
    """The report, teacher, data and compare JSON files that the model card quotes."""
    inputs = {}
    for name in ("report", "teacher", "data", "compare"):
        path = Path(metrics_dir) / f"{name}.json"
        try:
            inputs[name] = json.loads(path.read_text())
        except (OSError, ValueError) as e:
            raise StageError(f"cannot read {path} ({e}); run the stages before export first") from None
    return inputs


def _shipped(task: Task, compare: dict, report: dict, seed: int, compare_path: Path) -> tuple[dict, dict]:
    """compare.json's choice (the `ship` section), and the evaluate report recast for the chosen arch: its seeds'
    scores as a student and as its own hard-label baseline (compare scored both), which the model card quotes."""
    choice = compare["ship"]
    if choice["seed"] != seed:
        raise StageError(f"{compare_path} chose seed {choice['seed']}, not the first of seeds; rerun compare")
    rows = {row["name"]: row for row in compare["models"]}
    student, baseline = rows.get(f"student-{choice['arch']}"), rows.get(f"baseline-{choice['arch']}")
    if student is None or baseline is None:
        raise StageError(f"{compare_path} has no student and baseline rows for arch {choice['arch']!r}; rerun compare")
    split, metric = task.selection_split, task.metrics[0]
    teacher = report["scores"]["teacher"][split][metric]["mean"]
    scores = {**report["scores"], "student": student["scores"], "baseline": baseline["scores"]}
    ratio = student["scores"][split][metric]["mean"] / teacher
    return choice, {**report, "scores": scores, "student_vs_teacher": {**report["student_vs_teacher"],
                                                                         f"{metric}_ratio": ratio}}


def run(task: Task, params: Params) -> None:
    """The `export` stage for one task: models/export/<task>/ and metrics/<task>/export.json: the first of
    params.yaml's `seeds` of the arch that `compare` chose to ship (metrics/<task>/compare.json), timed at
    evaluate.batch_size on evaluate.throughput_sentences sentences."""
    seed = params.seeds[0]
    out = paths.metrics_dir(task.name)
    inputs = _read_inputs(out)
    choice, inputs["report"] = _shipped(task, inputs.pop("compare"), inputs["report"], seed, out / "compare.json")
    result = export_student(task, paths.run_model_dir("student", task.name, choice["arch"], seed),
                            paths.raw_dir(task.name), paths.model_dir("export", task.name), seed=seed,
                            params=params.evaluate, choice=choice, **inputs)
    write_json(result, out / "export.json")
    for name, r in result["backends"].items():
        print(f"{task.name} {name}: {r['scores']} {r['sentences_per_s']:,.0f} sentences/s, "
              f"batch-1 p50 {r['latency_ms_p50']} ms, p95 {r['latency_ms_p95']} ms")
    print(f"{task.name} ships {choice['arch']}; int8 costs {result['int8_cost_points']} points: the card recommends "
          f"{result['recommended']}")
