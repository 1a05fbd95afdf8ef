"""What `compare` writes for people and for DVC, from compare.json's content (stages/compare.py):

- `compare_markdown`: the table of every model (score ± sd over seeds, speed, latency, disk, memory, frontier),
  the tests of the best student against the best alternative, and the ship choice: compare.md, and the
  function `evaluate` may call to put the same table in summary.md;
- `ship_sentence` and `readme_cells`: the README's plain sentence per task and its results table's compare
  columns, from one task's compare.json;
- `plot_rows`: one row per model for dvc.yaml's `plots:` (score against sentences/s);
- `compare_figure`: the same as a PNG: score ± sd against sentences/s on a log axis, the Pareto frontier drawn,
  the shipped model ringed, the ship rule's speed floor dashed.
"""

from __future__ import annotations

from pathlib import Path

from stages.data.tasks import Task

COLORS = {"alternative": "tab:orange", "student": "tab:blue", "teacher": "tab:green"}


def _score(row: dict, split: str, metric: str) -> str:
    d = row["scores"][split][metric]
    return f"{100 * d['mean']:.2f}" + (f" ± {100 * d['sd']:.2f}" if d.get("sd") is not None else "")


def _p(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3g}"


def compare_markdown(result: dict, task: Task) -> str:
    """The comparison table and what follows from it, as markdown."""
    split, metric = task.selection_split, task.metrics[0]
    splits = [s for s in result["splits"]]
    columns = [f"{s} {m}" for s in splits for m in task.metrics]
    lines = [f"# {task.name}: what to ship", "",
             f"Every model on the same splits ({', '.join(f'{s} {n:,}' for s, n in result['splits'].items())}); "
             f"scores are mean ± sd over seeds where a model has seeds. Speed: {result['threads']} threads, "
             f"sentences/s at batch {result['batch_size']} over {result['throughput_sentences']:,} {split} sentences "
             + (f"(a model whose pass runs past {result['max_timing_seconds']:g} s: the batches begun by then) "
                if result.get("max_timing_seconds") else "")
             + f"and the batch-1 p50 latency over {result['latency_sentences']}, the median of "
             f"{result['timing_rounds']} interleaved rounds; each model in its own runtime.", "",
             "| model | kind | runtime | seeds | " + " | ".join(columns)
             + " | sentences/s | × teacher int8 | p50 ms | disk MB | peak RSS MB | frontier |",
             "|---|---|---|---|" + "---|" * (len(columns) + 6)]
    for row in sorted(result["models"], key=lambda r: -r["dev"]):
        name = f"**{row['label']}** (shipped)" if row["shipped"] else row["label"]
        rss = "n/a" if row["peak_rss_mb"] is None else f"{row['peak_rss_mb']:,.0f}"
        cells = [_score(row, s, m) for s in splits for m in task.metrics]
        lines.append(f"| {name} | {row['kind']} | {row['runtime']} | {len(row['seeds']) if row['seeds'] else '-'} | "
                     + " | ".join(cells) + f" | {row['sentences_per_s']:,.0f} | {row['speedup_vs_teacher_int8']:.1f} | "
                     f"{row['latency_ms_p50']:.2f} | {row['disk_mb']:.2f} | {rss} | "
                     f"{'yes' if row['on_frontier'] else ''} |")
    for skip in result["skipped"]:
        lines.append(f"\nNot run: {skip['name']}: {skip['reason']}.")
    test = result["best_student_vs_best_alternative"]
    lines += ["", f"Best distilled student ({test['student']}) against the best model without a teacher "
                  f"({test['label']}) on {split} {metric}: {test['points']:+.2f} points; {test['test']}: p = "
                  f"{_p((test.get('paired_t') or test.get('one_sample_t'))['p_value'])}; exact McNemar of the "
                  f"seeds' majority vote: the student alone right on {test['mcnemar_ensemble']['a_only']} sentences, "
                  f"{test['label']} alone on {test['mcnemar_ensemble']['b_only']}, p = "
                  f"{_p(test['mcnemar_ensemble']['p_value'])}. "
                  + ("The student wins (p < 0.05)." if test["significant"] else "Not a win at p < 0.05.")]
    ship = result["ship"]
    lines += ["", f"Ship: {ship['name']} (seed {ship['seed']}), by the rule: {ship['rule']}"
                  + ("" if ship["rule_met"] else " (no student met it: the fastest ships)")
                  + f"; {ship['speedup_vs_teacher_int8']:.1f}× the teacher's ONNX int8 sentences/s, "
                  f"{ship['versus_teacher_int8']['points']:+.2f} points against it.", "", ship_sentence(result, task)]
    return "\n".join(lines) + "\n"


def ship_sentence(result: dict, task: Task) -> str:
    """One plain sentence: which model to ship for the task, and why (the README's line per task)."""
    split, metric = task.selection_split, task.metrics[0]
    ship = result["ship"]
    row = next(r for r in result["models"] if r["name"] == ship["name"])
    beat = ship["versus_best_alternative"]
    p = beat["p_value"]
    against = (f"{beat['points']:+.2f} points against {beat['label']}, the best model without a teacher"
               + (f" (p = {p:.2g}: {'a win' if beat['significant'] else 'not a win'} at p < 0.05)" if p is not None
                  else " (no test: too few seeds)"))
    speed = f"{ship['speedup_vs_teacher_int8']:.1f}× the teacher's ONNX int8 speed"
    why = "the most accurate student at least " if ship["rule_met"] else "no student reached "
    return (f"{task.name}: ship the {row['label']} student ({split} {metric} {_score(row, split, metric)}): "
            f"{why}{ship['min_speedup']:g}× the teacher's ONNX int8 speed{'' if ship['rule_met'] else ', so the fastest'}"
            f", at {speed}, {against}.")


def readme_cells(result: dict, task: Task) -> dict:
    """The README results table's compare columns for one task: TF-IDF + LR, the best distilled student, and the
    teacher's ONNX int8 sentences/s (scores: selection split, first metric, mean ± sd over seeds)."""
    split, metric = task.selection_split, task.metrics[0]
    rows = {r["name"]: r for r in result["models"]}
    best = rows[result["best_student_vs_best_alternative"]["student"]]
    return {"TF-IDF + LR": _score(rows["tfidf-lr"], split, metric),
            "best distilled student": f"{_score(best, split, metric)} ({best['arch']})",
            "teacher ONNX int8 sentences/s": f"{rows['teacher-onnx-int8']['sentences_per_s']:,.0f}"}


def plot_rows(result: dict, task: Task) -> list[dict]:
    """One row per model for `dvc plots`: the selection score (mean) against sentences/s."""
    split, metric = task.selection_split, task.metrics[0]
    return [{"model": row["label"], "kind": row["kind"], "sentences_per_s": row["sentences_per_s"],
             metric: round(row["scores"][split][metric]["mean"], 6),
             f"{metric}_sd": row["scores"][split][metric]["sd"], "on_frontier": row["on_frontier"],
             "shipped": row["shipped"]} for row in result["models"]]


def compare_figure(result: dict, task: Task, path: Path) -> None:
    """Score (± sd over seeds) against sentences/s on a log axis; the frontier, the shipped model, the speed floor."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    split, metric = task.selection_split, task.metrics[0]
    rows = result["models"]
    fig, ax = plt.subplots(figsize=(8, 5))
    for row in rows:
        d = row["scores"][split][metric]
        ax.errorbar(row["sentences_per_s"], 100 * d["mean"], yerr=None if d.get("sd") is None else 100 * d["sd"],
                    fmt="o", color=COLORS[row["kind"]], capsize=4)
        ax.annotate(row["label"], (row["sentences_per_s"], 100 * d["mean"]), textcoords="offset points",
                    xytext=(6, 4), fontsize=8)
    frontier = sorted((r["sentences_per_s"], 100 * r["dev"]) for r in rows if r["on_frontier"])
    ax.plot(*zip(*frontier), "--", color="grey", linewidth=1, drawstyle="steps-post", label="Pareto frontier")
    shipped = next(r for r in rows if r["shipped"])
    ax.scatter([shipped["sentences_per_s"]], [100 * shipped["dev"]], s=260, facecolors="none", edgecolors="red",
               linewidths=2, label=f"shipped: {shipped['label']}", zorder=3)
    teacher = next(r for r in rows if r["name"] == "teacher-onnx-int8")
    ax.axvline(result["ship"]["min_speedup"] * teacher["sentences_per_s"], color="red", linestyle=":", linewidth=1,
               label=f"{result['ship']['min_speedup']:g}× teacher ONNX int8")
    for kind, color in COLORS.items():
        ax.scatter([], [], color=color, label=kind)
    ax.set_xscale("log")
    ax.set(xlabel=f"sentences/s (log scale; batch {result['batch_size']}, {result['threads']} threads)",
           ylabel=f"{split} {metric} (%)", title=f"{task.name}: accuracy against speed (± sd over seeds)")
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
