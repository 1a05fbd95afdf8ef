"""Labeling on Ray against the local engine: rows/s and peak memory on the same rows, side by side.

    python benchmarks/label_scaling.py --task rt [--rows 6000] [--workers 1,2] [--teacher DIR] [--transfer FILE]

Takes a seeded sample of --rows rows of the transfer set (data/transfer/<task>.parquet) and labels it with
the teacher (models/teacher/<task>/) through the `label` stage's own function, once per engine, each in a
fresh process: the local engine, then the ray engine with each worker count of --workers on a local Ray
(ray.init with every CPU of the machine; the actors' size is the stage's default: label.ray_cpus_per_worker
null). Each run's rows/s is rows / the label() call's wall time: for ray that includes starting the actors and
loading the teacher in each, not starting Ray itself (a cluster is already up; reported apart as ray_init_s).
Peak RSS is the peak of the summed RSS of the run's process and all its descendants (for ray: the driver,
the actors and Ray's own daemons), sampled every 0.1 s. A GPU machine: pass --gpus-per-worker 1.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import typer

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # this checkout's `stages`, not another one installed in the environment


def _one(engine: str, workers: int, task: str, rows: int, teacher: Path, transfer: Path, batch_size: int,
         shard_rows: int, max_length: int, gpus_per_worker: float) -> dict:
    """One labeling run in this process; returns its timings."""
    import numpy as np
    import pyarrow.parquet as pq

    from stages.data.tasks import get_task
    from stages.label import label
    from stages.runtime import resolve_device

    t = get_task(task)
    table = pq.read_table(transfer)
    picked = np.sort(np.random.default_rng(0).choice(table.num_rows, min(rows, table.num_rows), replace=False))
    with tempfile.TemporaryDirectory() as tmp:
        subset = Path(tmp) / "transfer.parquet"
        pq.write_table(table.take(picked), subset)
        settings, init_s = None, None
        if engine == "ray":
            import ray

            from stages.ray_labeling import RaySettings

            start = time.perf_counter()
            ray.init(include_dashboard=False, log_to_driver=False, logging_level="error")
            init_s = time.perf_counter() - start
            settings = RaySettings(workers=workers, gpus_per_worker=gpus_per_worker)
        device = resolve_device("auto") if engine == "local" else resolve_device("cpu")
        start = time.perf_counter()
        summary = label(t, subset, teacher, Path(tmp) / "labeled.parquet", device=device, batch_size=batch_size,
                        shard_rows=shard_rows, max_length=max_length, cache_root=Path(tmp) / "cache", ray=settings)
        seconds = time.perf_counter() - start
        logits = pq.read_table(Path(tmp) / "labeled.parquet")["logits"].to_pylist()
        np.save(Path(tmp).parent / f"label-scaling-{engine}-{workers}.npy", np.asarray(logits, np.float32))
    return {"engine": engine, "workers": workers, "rows": int(len(picked)), "seconds": round(seconds, 2),
            "rows_per_s": round(len(picked) / seconds, 1), "ray_init_s": None if init_s is None else round(init_s, 1),
            "summary_rows_per_s": summary["rows_per_second"]}


def _tree_rss(pid: int) -> int:
    import psutil

    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0
    total = 0
    for p in procs:
        try:
            total += p.memory_info().rss
        except psutil.NoSuchProcess:
            pass
    return total


def _measured(args: list[str]) -> tuple[dict, int]:
    """Run one configuration in a fresh process; its result and the peak RSS of its process tree."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen([sys.executable, __file__, *args], cwd=ROOT, stdout=subprocess.PIPE, text=True, env=env)
    peak, done = 0, threading.Event()

    def sample():
        nonlocal peak
        while not done.is_set():
            peak = max(peak, _tree_rss(proc.pid))
            time.sleep(0.1)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    out, _ = proc.communicate()
    done.set()
    sampler.join()
    if proc.returncode != 0:
        raise SystemExit(f"run {args} failed with exit code {proc.returncode}")
    return json.loads(out.strip().splitlines()[-1]), peak


def main(task: str = typer.Option("rt"), rows: int = typer.Option(6000, help="Transfer-set rows to label."),
         workers: str = typer.Option("1,2", help="Ray worker counts to run, comma-separated."),
         teacher: Path = typer.Option(None, help="Teacher directory; default models/teacher/<task>."),
         transfer: Path = typer.Option(None, help="Transfer set; default data/transfer/<task>.parquet."),
         batch_size: int = typer.Option(256), shard_rows: int = typer.Option(16384),
         max_length: int = typer.Option(128), gpus_per_worker: float = typer.Option(0.0),
         one: str = typer.Option("", hidden=True)) -> None:
    teacher = (teacher or ROOT / "models/teacher" / task).resolve()
    transfer = (transfer or ROOT / "data/transfer" / f"{task}.parquet").resolve()
    common = [task, rows, teacher, transfer, batch_size, shard_rows, max_length, gpus_per_worker]
    if one:  # a child: one configuration
        engine, n = one.split(":")
        print(json.dumps(_one(engine, int(n), *common)))
        return
    import numpy as np

    base = ["--task", task, "--rows", str(rows), "--teacher", str(teacher), "--transfer", str(transfer),
            "--batch-size", str(batch_size), "--shard-rows", str(shard_rows), "--max-length", str(max_length),
            "--gpus-per-worker", str(gpus_per_worker)]
    results = []
    for engine, n in [("local", 1), *[("ray", int(w)) for w in workers.split(",")]]:
        result, peak = _measured([*base, "--one", f"{engine}:{n}"])
        result["peak_rss_mib"] = round(peak / 2**20)
        results.append(result)
        print(json.dumps(result), flush=True)
    local = results[0]
    reference = np.load(Path(tempfile.gettempdir()) / "label-scaling-local-1.npy")
    for r in results[1:]:
        other = np.load(Path(tempfile.gettempdir()) / f"label-scaling-ray-{r['workers']}.npy")
        r["max_abs_logit_diff_vs_local"] = float(np.abs(other - reference).max())
        r["speed_vs_local"] = round(r["rows_per_s"] / local["rows_per_s"], 3)
        r["rss_vs_local"] = round(r["peak_rss_mib"] / local["peak_rss_mib"], 2)
    print(json.dumps({"task": task, "rows": local["rows"], "cpus": os.cpu_count(), "runs": results}, indent=2))


if __name__ == "__main__":
    typer.run(main)
