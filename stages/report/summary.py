"""What `evaluate` writes for people and for DVC, from its report (stages/evaluate.py):

- `summary_metrics`: the few numbers `dvc exp show` and `dvc metrics diff` should lead with (summary.json);
- `markdown`: summary.md, every score as "mean ± sd (n seeds)", the gain with its tests;
- `tradeoff_rows` and `curve_rows`: the tables behind dvc.yaml's top-level plots;
- `figure`: the same two views as a PNG (matplotlib), so the README shows them without JavaScript.
"""

from __future__ import annotations

import csv
from pathlib import Path

from stages.data.tasks import Task

SEEDED = ("baseline", "student")  # trained once per seed


def _key(split: str, metric: str) -> str:
    return f"{split}_{metric}"


def summary_metrics(report: dict, task: Task) -> dict:
    """Scores first (mean and sd over seeds), then the gain and its p-values, then speed and size ratios."""
    scores = report["scores"]
    out: dict = {}
    for kind in ("student", "baseline"):
        out[kind] = {}
        for split in task.eval_splits:
            for metric in task.metrics:
                d = scores[kind][split][metric]
                out[kind][_key(split, metric)] = round(d["mean"], 6)
                out[kind][_key(split, metric) + "_sd"] = None if d["sd"] is None else round(d["sd"], 6)
    out["teacher"] = {_key(split, metric): scores["teacher"][split][metric]["mean"]
                      for split in task.eval_splits for metric in task.metrics}
    split, metric = task.selection_split, task.metrics[0]
    gain = report["gain"][split]
    vs = report["student_vs_teacher"]
    out["gain"] = {
        "points": round(100 * gain[metric]["mean"], 2),
        "p_paired_t": _round(gain[metric]["paired_t"]["p_value"]),
        "p_mcnemar": _round(gain["mcnemar_ensemble"]["p_value"]),
    }
    out["student_of_teacher"] = round(vs[f"{metric}_ratio"], 4)
    out["speedup"] = round(vs["speedup"], 1)
    out["seeds"] = len(report["seeds"])
    if "precision" in report:  # what the teacher trained and labelled at (`auto` resolves per machine)
        out["precision"] = dict(report["precision"])
    return out


def _round(value: float | None, digits: int = 6) -> float | None:
    return None if value is None else round(value, digits)


def _pm(d: dict, scale: float = 100) -> str:
    if d.get("sd") is None:
        return f"{scale * d['mean']:.2f}"
    return f"{scale * d['mean']:.2f} ± {scale * d['sd']:.2f} ({d['n']} seeds)"


def markdown(report: dict, task: Task) -> str:
    columns = [f"{split} {metric}" for split in task.eval_splits for metric in task.metrics]
    scores, sizes = report["scores"], report["sizes"]
    lines = [
        f"# {task.name}: teacher vs baseline vs distilled student",
        "",
        f"Seeds {report['seeds']}: student and baseline scores are mean ± sd over them; the teacher is one run "
        "(the reference).",
        "",
        "| model | " + " | ".join(columns) + " | params (all) | params (no embeddings) | disk MB | sentences/s |",
        "|---|" + "---|" * (len(columns) + 4),
    ]
    for name in ("teacher", "baseline", "student"):
        cells = [_pm(scores[name][split][metric]) for split in task.eval_splits for metric in task.metrics]
        size = sizes[name]
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {size['params_all'] / 1e6:.2f}M"
                     f" | {size['params_without_embeddings'] / 1e6:.2f}M | {size['disk_mb']} | {size['sentences_per_s']:,.0f} |")
    lines += ["", "Per seed (min / max, 95% CI of the mean):", ""]
    for name in SEEDED:
        for split in task.eval_splits:
            for metric in task.metrics:
                d = scores[name][split][metric]
                values = ", ".join(f"{k}: {100 * v:.2f}" for k, v in d["seeds"].items())
                ci = "" if d["ci95"] is None else f", CI [{100 * d['ci95'][0]:.2f}, {100 * d['ci95'][1]:.2f}]"
                lines.append(f"- {name} {split} {metric}: {values} (min {100 * d['min']:.2f}, max {100 * d['max']:.2f}{ci})")
    lines += ["", "Student − baseline:", ""]
    for split in task.eval_splits:
        g = report["gain"][split]
        for metric in task.metrics:
            d = g[metric]
            p = d["paired_t"]["p_value"]
            ci = "" if d["ci95"] is None else f", 95% CI [{100 * d['ci95'][0]:+.2f}, {100 * d['ci95'][1]:+.2f}]"
            lines.append(f"- {split} {metric}: {100 * d['mean']:+.2f} points{ci}; paired t-test over seeds "
                         + (f"p = {p:.3g}" if p is not None else "not computable (fewer than 2 seeds or no variance)"))
        mc = g["mcnemar_ensemble"]
        lines.append(f"- {split}, seed ensembles (mean probabilities): the student alone right on {mc['a_only']} "
                     f"sentences, the baseline alone on {mc['b_only']}; exact McNemar p = {mc['p_value']:.3g}")
    vs = report["student_vs_teacher"]
    split, metric = task.selection_split, task.metrics[0]
    lines += [
        "",
        (f"Student vs teacher: {100 * vs[f'{metric}_ratio']:.1f}% of its {split} {metric}, {vs['speedup']:.1f}× its "
         f"throughput, 1/{vs['params_ratio']:.1f} of its parameters."),
        (f"Throughput: {report['throughput_sentences']} training sentences, batch {report['batch_size']}, "
         f"device {report['device']} ({report['threads']} threads), text in, logits out."),
    ]
    if report["references"]:
        lines += ["", ("Timing-only yardsticks (random weights in a published shape, the teacher's tokenizer, "
                       "the same sentences; no accuracy):"), "",
                  "| shape | params (all) | sentences/s | student speed-up |", "|---|---|---|---|"]
        lines += [f"| {name} | {r['params_all'] / 1e6:.2f}M | {r['sentences_per_s']:,.1f} | {r['student_speedup']}x |"
                  for name, r in report["references"].items()]
    return "\n".join(lines) + "\n"


def tradeoff_rows(report: dict, task: Task) -> list[dict]:
    """One row per model for `dvc plots`: selection-split score against size and against speed."""
    split, metric = task.selection_split, task.metrics[0]
    return [{"model": name, metric: round(report["scores"][name][split][metric]["mean"], 6),
             "params_millions": round(report["sizes"][name]["params_all"] / 1e6, 3),
             "sentences_per_s": report["sizes"][name]["sentences_per_s"]}
            for name in ("teacher", "baseline", "student")]


def curve_rows(run_dirs: dict[str, list[Path]], task: Task) -> list[dict]:
    """Selection-split score per epoch, averaged over the seeds that reached that epoch (early stopping
    may end some sooner), for student and baseline side by side; read from each run's DVCLive curve."""
    split, metric = task.selection_split, task.metrics[0]
    by_epoch: dict[int, dict[str, list[float]]] = {}
    for kind, dirs in run_dirs.items():
        for run in dirs:
            path = Path(run) / "plots" / "metrics" / split / f"{metric}.tsv"
            with open(path, newline="") as f:
                for row in csv.DictReader(f, delimiter="\t"):
                    by_epoch.setdefault(int(row["step"]) + 1, {}).setdefault(kind, []).append(float(row[metric]))
    return [{"epoch": epoch, **{kind: round(sum(v) / len(v), 6) for kind, v in sorted(values.items())}}
            for epoch, values in sorted(by_epoch.items())]


def figure(report: dict, curves: list[dict], task: Task, path: Path) -> None:
    """Two panels: dev score per epoch (student vs baseline, seed means), and score against throughput."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator, NullFormatter

    split, metric = task.selection_split, task.metrics[0]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    for kind, color in (("student", "tab:blue"), ("baseline", "tab:orange")):
        points = [(row["epoch"], 100 * row[kind]) for row in curves if kind in row]
        left.plot(*zip(*points), marker="o", color=color, label=kind)
    left.set(xlabel="epoch", ylabel=f"{split} {metric} (%)",
             title=f"{task.name}: {split} {metric} per epoch (mean of {len(report['seeds'])} seeds)")
    left.xaxis.set_major_locator(MaxNLocator(integer=True))
    left.legend()
    for name, color in (("teacher", "tab:green"), ("baseline", "tab:orange"), ("student", "tab:blue")):
        d = report["scores"][name][split][metric]
        right.errorbar(report["sizes"][name]["sentences_per_s"], 100 * d["mean"],
                       yerr=None if d.get("sd") is None else 100 * d["sd"], fmt="o", color=color, capsize=4,
                       label=name)
    right.set_xscale("log")
    right.xaxis.set_minor_formatter(NullFormatter())
    speeds = [report["sizes"][name]["sentences_per_s"] for name in ("teacher", "student")]
    right.set_xlim(min(speeds) / 2, max(speeds) * 2)
    right.set(xlabel="sentences/s (log scale)", ylabel=f"{split} {metric} (%)",
              title="accuracy against throughput (± sd over seeds)")
    right.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
