"""Two pipeline variants' students compared over the same seeds: the usual statistics (stages/report/statistics.py).

    python benchmarks/compare_runs.py --task rt A_DIR B_DIR [--metric accuracy]

A_DIR and B_DIR are workspaces (a copy of the project whose `python -m stages student --task <task> --seed <n>` ran
there); the seeds are those both have under metrics/<task>/student/seed-<n>/run.json. Prints, as JSON, each
variant's dev score over the seeds (mean, sd, min, max, 95% CI), the per-seed differences B - A, their mean with
its 95% CI (t over the paired differences) and the paired t-test's p-value. Scores in points (x 100).
"""

from __future__ import annotations

import json
from pathlib import Path

import typer

from stages.report.statistics import describe, paired_t_test


def scores(root: Path, task: str, metric: str) -> dict[int, float]:
    out = {}
    for run in sorted((root / "metrics" / task / "student").glob("seed-*/run.json")):
        data = json.loads(run.read_text())
        out[int(data["seed"])] = 100 * data["dev"][metric]
    return out


def main(a: Path, b: Path, task: str = typer.Option("rt"), metric: str = typer.Option("accuracy")) -> None:
    sa, sb = scores(a, task, metric), scores(b, task, metric)
    seeds = sorted(set(sa) & set(sb))
    if not seeds:
        raise SystemExit(f"no seed with a finished student in both {a} and {b}")
    xa, xb = [sa[s] for s in seeds], [sb[s] for s in seeds]
    diff = [y - x for x, y in zip(xa, xb)]
    result = {"task": task, "metric": f"dev {metric} (points)", "seeds": seeds,
              str(a): {"per_seed": dict(zip(seeds, xa)), **describe(xa)},
              str(b): {"per_seed": dict(zip(seeds, xb)), **describe(xb)},
              "difference_b_minus_a": {"per_seed": dict(zip(seeds, diff)), **describe(diff),
                                       "p_paired_t": paired_t_test(xb, xa)["p_value"]}}
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    typer.run(main)
