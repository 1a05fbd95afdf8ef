"""Scale check at MNLI size: time and peak memory of each stage on a 393k-pair task (cost, not accuracy).

    python benchmarks/scale.py [--train-pairs 392702] [--work-dir scale-run] [--glue-dir ../shared/glue]

MNLI and QQP cannot be had offline, so this builds a task of MNLI's shape from real sentences:

- a Hub-layout mirror of `nyu-mll/glue` config `mnli` (the five split files, GLUE's schema) whose premises and
  hypotheses are sentences drawn, seeded, from every split of GLUE sst2, mrpc and rte under --glue-dir, with
  random 3-way labels (so the student learns nothing: only the cost is measured);
- a teacher of BERT's architecture, 2 layers 128 wide with random weights and the packaged MiniLM's WordPiece
  tokenizer, saved as a local model directory, so labeling costs minutes rather than hours.

Then it runs the real stages, each as its own `python -m stages ...` process in --work-dir (its own
params.yaml: tasks [mnli], the full transfer set, augment.n_iter 10, one student epoch, one seed):
download (from the mirror), augment, label, student. For each stage it records the wall time and the peak
resident memory of the process (getrusage, ru_maxrss) plus the rows it handled, and writes them to
<work-dir>/scale.json; the last line prints the table. The teacher and baseline stages are not run: their
cost is the same per row as on the real tasks (docs/measurements.md, "Stage by stage on the CI machine").
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import typer
import yaml

REPO = Path(__file__).resolve().parents[1]
TASK = "mnli"
STAGES = ["download", "augment", "label", "student"]
# GLUE MNLI's split sizes (the Hub dataset nyu-mll/glue, config mnli)
MNLI_SPLITS = {"train": 392_702, "validation_matched": 9_815, "validation_mismatched": 9_832,
               "test_matched": 9_796, "test_mismatched": 9_847}


def real_sentences(glue_dir: Path) -> list[str]:
    """Every distinct sentence of every split of GLUE sst2, mrpc and rte under glue_dir, in a fixed order."""
    columns = {"sst2": ["sentence"], "mrpc": ["sentence1", "sentence2"], "rte": ["sentence1", "sentence2"]}
    seen: dict[str, None] = {}
    for config, names in columns.items():
        files = sorted((glue_dir / config).glob("*.parquet"))
        if not files:
            raise SystemExit(f"error: no Parquet files under {glue_dir / config}: --glue-dir must be a GLUE copy "
                             "in the Hub layout (e.g. ../shared/glue)")
        for path in files:
            table = pq.read_table(path, columns=names)
            for name in names:
                seen.update(dict.fromkeys(s.strip() for s in table[name].to_pylist() if s and s.strip()))
    return list(seen)


def write_mirror(out_dir: Path, sentences: list[str], train_pairs: int, seed: int) -> dict[str, int]:
    """out_dir/mnli/<split>-00000-of-00001.parquet in GLUE's MNLI schema; dev and test keep MNLI's sizes."""
    rng = np.random.default_rng(seed)
    pool = np.array(sentences, dtype=object)
    sizes = {**MNLI_SPLITS, "train": train_pairs}
    schema = pa.schema([("premise", pa.string()), ("hypothesis", pa.string()), ("label", pa.int64()),
                        ("idx", pa.int32())])
    (out_dir / TASK).mkdir(parents=True, exist_ok=True)
    for split, n in sizes.items():
        labels = np.full(n, -1) if split.startswith("test") else rng.integers(0, 3, n)
        table = pa.table({"premise": pool[rng.integers(0, len(pool), n)].tolist(),
                          "hypothesis": pool[rng.integers(0, len(pool), n)].tolist(),
                          "label": labels.astype(np.int64), "idx": np.arange(n, dtype=np.int32)}, schema=schema)
        pq.write_table(table, out_dir / TASK / f"{split}-00000-of-00001.parquet")
    return sizes


def write_small_teacher(out_dir: Path, seed: int) -> int:
    """A 2-layer, 128-wide BERT with random weights and a 3-label head, save_pretrained form; its parameter count."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    from stages.data.tasks import TASKS
    from stages.models.teacher_model import resolve_model

    tokenizer = AutoTokenizer.from_pretrained(resolve_model("all-MiniLM-L6-v2").location)
    names = TASKS[TASK].label_names
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=128, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=512, max_position_embeddings=512, num_labels=len(names),
                        id2label=dict(enumerate(names)), label2id={n: i for i, n in enumerate(names)})
    torch.manual_seed(seed)
    model = BertForSequenceClassification(config)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return sum(p.numel() for p in model.parameters())


def write_params(work_dir: Path, mirror: Path, student_epochs: int) -> None:
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params.update(tasks=[TASK], seeds=[1], device="cpu")
    params["data"]["glue_dir"] = str(mirror)
    params["augment"].update(max_examples=None, n_iter=10)
    params["distill"].update(epochs=student_epochs)
    params["datasets"] = {}
    (work_dir / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def run_stage(work_dir: Path, stage: str, log) -> dict:
    """Run one stage as its own process; its wall time and peak RSS (the process's own ru_maxrss)."""
    cmd = [sys.executable, "-m", "stages", stage, "--task", TASK] + (["--seed", "1"] if stage == "student" else [])
    env = {**os.environ, "PYTHONPATH": str(REPO), "TQDM_MININTERVAL": "30"}
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=work_dir, env=env, stdout=log, stderr=subprocess.STDOUT)
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"error: stage {stage} failed (exit {proc.returncode}); see {log.name}")
    return {"seconds": round(seconds, 1), "peak_rss_gib": round(usage.ru_maxrss / 2**20, 2)}


def stage_rows(work_dir: Path) -> dict[str, str]:
    """What each stage handled, from the metrics files the stages wrote."""
    metrics = work_dir / "metrics" / TASK
    data = json.loads((metrics / "data.json").read_text())["splits"]
    augment = json.loads((metrics / "augment.json").read_text())
    label = json.loads((metrics / "label.json").read_text())
    run = json.loads((metrics / "student" / "seed-1" / "run.json").read_text())
    return {"download": f"{data['train']['rows']:,} train pairs",
            "augment": f"{augment['rows']:,} transfer rows ({augment['originals']:,} + {augment['augmented']:,}; "
                       f"tagging {augment['seconds_tagging']:,.0f} s)",
            "label": f"{label['rows']:,} rows ({label['rows_per_second']:,.0f}/s)",
            "student": f"{run['train_rows']:,} rows x {run['epochs_run']} epoch ({run['train_seconds']:,.0f} s training)"}


def main(train_pairs: int = typer.Option(MNLI_SPLITS["train"], help="Training pairs (MNLI: 392,702)."),
         work_dir: Path = typer.Option(Path("scale-run"), help="Where the mirror, teacher and stage outputs go."),
         glue_dir: Path = typer.Option(REPO.parent / "shared" / "glue", help="GLUE in the Hub layout (the sentences)."),
         student_epochs: int = typer.Option(1, help="Student epochs."),
         seed: int = typer.Option(0, help="Seed of the sampled pairs, labels and teacher weights.")) -> None:
    work_dir = work_dir.resolve()
    work_dir.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    sentences = real_sentences(glue_dir)
    sizes = write_mirror(work_dir / "glue", sentences, train_pairs, seed)
    teacher_params = write_small_teacher(work_dir / "models" / "teacher" / TASK, seed)
    write_params(work_dir, work_dir / "glue", student_epochs)
    setup = time.perf_counter() - start
    print(f"mirror: {sizes['train']:,} train pairs from {len(sentences):,} distinct sentences; "
          f"teacher: {teacher_params:,} parameters; set-up {setup:.0f} s", flush=True)

    results = {}
    with open(work_dir / "stages.log", "w") as log:
        for stage in STAGES:
            results[stage] = run_stage(work_dir, stage, log)
            print(f"{stage}: {results[stage]}", flush=True)
    rows = stage_rows(work_dir)
    report = {"train_pairs": train_pairs, "distinct_sentences": len(sentences), "teacher_parameters": teacher_params,
              "cpu": _cpu(), "threads": os.cpu_count(),
              "stages": {s: {**results[s], "rows": rows[s]} for s in STAGES}}
    (work_dir / "scale.json").write_text(json.dumps(report, indent=2) + "\n")
    print("| stage | rows | time (s) | peak RSS (GiB) |")
    for s in STAGES:
        print(f"| {s} | {rows[s]} | {results[s]['seconds']:,} | {results[s]['peak_rss_gib']} |")


def _cpu() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


if __name__ == "__main__":
    typer.run(main)
