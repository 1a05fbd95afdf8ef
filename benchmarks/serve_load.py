"""The HTTP service under load: dynamic batching on against off, side by side, on 127.0.0.1 only.

    python benchmarks/serve_load.py [--task rt] [--export-dir models/export/rt] [--dev data/raw/rt/dev.parquet]
                                    [--requests 2000] [--concurrency 1,8,64] [--texts-per-request 1]

Starts two `python -m stages serve` processes on free ports of 127.0.0.1 (one with --batching, one with
--no-batching, the same export and backend), then for each concurrency sends a fixed number of POST /predict
requests to each, one after the other (closed loop: each of C connections sends its next request when the
previous answer is in; keep-alive), with sentences (or pairs) from the task's dev set in order. Every answer
must be a 200. Reports requests/s, sentences/s and p50/p95/p99 latency per (concurrency, batching), checks the
goals (at the highest concurrency batching on >= 3x the sentences/s of off; at concurrency 1, p50 within 1 ms
of the model's own batch-1 p50 in metrics/<task>/export.json), prints a table and writes
benchmarks/results/serve-<task>.json. Then the same load without HTTP (the model and batcher in this process) shows what
batching gains on the model alone. The servers' CPU time per sentence (/proc) is reported beside the wall-clock rates:
on a CPU shared with other work it says what batching saves, whatever share of the CPU each server got.
The load generator runs in this process, on the same CPU as the servers.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import platform
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import typer

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from stages import paths  # noqa: E402
from stages.params import load_params  # noqa: E402


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(export_dir: Path, backend: str | None, batching: bool, extra: list[str]) -> tuple[subprocess.Popen, int]:
    port = _free_port()
    args = [sys.executable, "-m", "stages", "serve", "--export-dir", str(export_dir), "--port", str(port),
            "--batching" if batching else "--no-batching", *(["--backend", backend] if backend else []), *extra]
    proc = subprocess.Popen(args, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    deadline = time.time() + 120
    while True:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2).read()
            return proc, port
        except OSError:
            if proc.poll() is not None or time.time() > deadline:
                proc.kill()
                sys.exit(f"serve did not start: {proc.communicate()[1][-2000:]}")
            time.sleep(0.2)


def _health(port: int) -> dict:
    return json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=30).read())


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process, all its threads (Linux /proc): robust to other load on the machine."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def _connection(port: int, bodies: list[bytes], counter, total: int, latencies: list[float]) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        while (i := next(counter)) < total:
            body = bodies[i % len(bodies)]
            request = (b"POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                       b"Content-Length: %d\r\n\r\n" % len(body)) + body
            start = time.perf_counter()
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                          if line.lower().startswith(b"content-length:"))
            answer = await reader.readexactly(length)
            latencies.append(time.perf_counter() - start)
            if not head.startswith(b"HTTP/1.1 200"):
                raise RuntimeError(f"request {i}: {head.splitlines()[0]!r} {answer[:200]!r}")
    finally:
        writer.close()


async def load(port: int, bodies: list[bytes], total: int, concurrency: int) -> tuple[float, np.ndarray]:
    counter, latencies = itertools.count(), []
    start = time.perf_counter()
    await asyncio.gather(*(_connection(port, bodies, counter, total, latencies) for _ in range(concurrency)))
    return time.perf_counter() - start, 1000 * np.array(latencies)


def batcher_alone(export_dir: Path, backend: str, items: list, total: int, concurrency: int, enabled: bool,
                  max_batch: int, max_wait_ms: float) -> float:
    """Sentences/s through the service's model and batcher in this process, without HTTP: what batching can
    gain when the model, not the web stack, is the cost."""
    from stages.models.onnx_student import MODEL_FILES, ONNX_BACKENDS
    from stages.serving.app import load_model
    from stages.serving.batcher import DynamicBatcher
    from stages.serving.padded import PaddedStudent

    student = load_model(export_dir, backend)
    runner = PaddedStudent(student, Path(export_dir) / MODEL_FILES[ONNX_BACKENDS[backend]])
    pair = student.config["pair"]

    async def run() -> float:
        batcher = DynamicBatcher(runner.predict_proba, max_batch=max_batch, max_wait_ms=max_wait_ms, enabled=enabled)
        await batcher.start()
        counter = itertools.count()

        async def client():
            while (i := next(counter)) < total:
                item = items[i % len(items)]
                await batcher.predict([item[0]], [item[1]]) if pair else await batcher.predict([item])

        start = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(concurrency)))
        seconds = time.perf_counter() - start
        await batcher.stop()
        return total / seconds

    return asyncio.run(run())


def main(
    task: str = typer.Option(None, help="Task (default: the first in params.yaml)."),
    export_dir: Path = typer.Option(None, help="Export directory (default models/export/<task>)."),
    dev: Path = typer.Option(None, help="Sentences to send (default data/raw/<task>/dev.parquet)."),
    export_json: Path = typer.Option(None, help="The export stage's metrics, for the model's own batch-1 latency "
                                                "(default metrics/<task>/export.json)."),
    backend: str = typer.Option(None, help="onnx or onnx-int8 (default: the model card's recommendation)."),
    requests: int = typer.Option(2000, help="Requests per (concurrency, batching) cell."),
    warmup: int = typer.Option(200, help="Requests sent to each server before measuring."),
    concurrency: str = typer.Option("1,8,64", help="Comma-separated numbers of concurrent connections."),
    texts_per_request: int = typer.Option(1, help="Sentences (or pairs) per request."),
    serve_args: str = typer.Option("", help="Extra `serve` options for both servers, e.g. '--max-wait-ms 1'."),
    out: Path = typer.Option(None, help="JSON output (default benchmarks/results/serve-<task>.json)."),
) -> None:
    task = task or load_params(REPO / "params.yaml").tasks[0]
    export_dir = export_dir or REPO / paths.model_dir("export", task)
    dev = dev or REPO / paths.raw_dir(task) / "dev.parquet"
    export_json = export_json or REPO / paths.metrics_dir(task) / "export.json"
    out = out or REPO / "benchmarks" / "results" / f"serve-{task}.json"
    levels = [int(c) for c in concurrency.split(",")]

    table = pq.read_table(dev).to_pydict()
    texts_a, texts_b = table["text_a"], table.get("text_b")
    servers = {mode: start_server(export_dir, backend, mode == "on", serve_args.split()) for mode in ("on", "off")}
    try:
        health = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{servers['on'][1]}/health").read())
        pair = health["pair"]
        items = [[a, b] for a, b in zip(texts_a, texts_b)] if pair else list(texts_a)
        bodies = [json.dumps({"pairs" if pair else "texts": items[i:i + texts_per_request]}).encode()
                  for i in range(0, len(items) - texts_per_request + 1, texts_per_request)]
        for mode, (_, port) in servers.items():
            asyncio.run(load(port, bodies, warmup, 8))
        cells = []
        for c in levels:
            for mode, (proc, port) in servers.items():  # on, then off, at each concurrency: side by side
                cpu, calls = cpu_seconds(proc.pid), _health(port)["model_calls"]
                seconds, ms = asyncio.run(load(port, bodies, requests, c))
                cpu, calls = cpu_seconds(proc.pid) - cpu, _health(port)["model_calls"] - calls
                cell = {"concurrency": c, "batching": mode, "requests": requests,
                        "requests_per_s": round(requests / seconds, 1),
                        "sentences_per_s": round(requests * texts_per_request / seconds, 1),
                        **{f"latency_ms_p{q}": round(float(np.percentile(ms, q)), 3) for q in (50, 95, 99)},
                        "server_cpu_ms_per_sentence": round(1000 * cpu / (requests * texts_per_request), 3),
                        "sentences_per_model_call": round(requests * texts_per_request / calls, 2)}
                cells.append(cell)
                print(f"  concurrency {c:>3}, batching {mode:>3}: {cell['requests_per_s']:>8,.1f} req/s "
                      f"p50 {cell['latency_ms_p50']:.2f} ms", flush=True)
    finally:
        for proc, _ in servers.values():
            proc.send_signal(signal.SIGTERM)
        for proc, _ in servers.values():
            proc.wait(timeout=30)

    top = max(levels)
    knobs = health["batching"]
    alone = {mode: round(batcher_alone(export_dir, health["backend"], items, requests, top, mode == "on",
                                       knobs["max_batch"], knobs["max_wait_ms"]), 1) for mode in ("on", "off")}

    variant = "onnx-int8" if health["backend"] == "onnx-int8" else "onnx-fp32"
    model_p50 = None
    if export_json.is_file():
        model_p50 = json.loads(export_json.read_text())["backends"][variant]["latency_ms_p50"]
    get = {(c["concurrency"], c["batching"]): c for c in cells}
    low = min(levels)
    ratio = get[top, "on"]["sentences_per_s"] / get[top, "off"]["sentences_per_s"]
    cpu_ratio = get[top, "off"]["server_cpu_ms_per_sentence"] / max(get[top, "on"]["server_cpu_ms_per_sentence"], 1e-9)
    goals = {f"batching_speedup_at_{top}": round(ratio, 2), f"server_cpu_saving_at_{top}": round(cpu_ratio, 2),
             "batching_speedup_goal": 3.0,
             "batching_speedup_met": ratio >= 3.0}
    if model_p50 is not None and low == 1:
        gap = get[1, "on"]["latency_ms_p50"] - model_p50
        goals |= {"model_batch1_p50_ms": model_p50, "served_p50_ms_at_1": get[1, "on"]["latency_ms_p50"],
                  "p50_over_model_ms": round(gap, 3), "p50_goal_ms": 1.0, "p50_goal_met": gap <= 1.0}

    print(f"\n{health['task']} ({health['backend']}), {requests} requests per cell, {texts_per_request} "
          f"sentence(s) per request, {os.cpu_count()} CPUs")
    print("| concurrency | batching | requests/s | sentences/s | p50 ms | p95 ms | p99 ms | server CPU ms/sentence "
          "| sentences/model call |")
    print("|---|---|---|---|---|---|---|---|---|")
    for c in cells:
        print(f"| {c['concurrency']} | {c['batching']} | {c['requests_per_s']:,.1f} | {c['sentences_per_s']:,.1f} | "
              f"{c['latency_ms_p50']:.2f} | {c['latency_ms_p95']:.2f} | {c['latency_ms_p99']:.2f} | "
              f"{c['server_cpu_ms_per_sentence']:.3f} | {c['sentences_per_model_call']:.1f} |")
    print(f"\nat concurrency {top}: batching on / off = {ratio:.2f}x sentences/s (goal >= 3x: "
          f"{'met' if goals['batching_speedup_met'] else 'missed'}); server CPU per sentence off / on = "
          f"{cpu_ratio:.2f}x")
    print(f"without HTTP (the model and batcher alone, in this process, concurrency {top}): batching on "
          f"{alone['on']:,.1f} sentences/s, off {alone['off']:,.1f}: {alone['on'] / alone['off']:.2f}x")
    if "p50_goal_met" in goals:
        print(f"at concurrency 1: p50 {goals['served_p50_ms_at_1']:.3f} ms against the model's own batch-1 p50 "
              f"{model_p50:.3f} ms: {goals['p50_over_model_ms']:+.3f} ms (goal <= 1 ms: "
              f"{'met' if goals['p50_goal_met'] else 'missed'})")
    result = {"task": health["task"], "backend": health["backend"], "export_dir": str(export_dir), "dev": str(dev),
              "texts_per_request": texts_per_request, "requests_per_cell": requests, "serve_args": serve_args,
              "machine": {"cpus": os.cpu_count(), "processor": platform.processor() or platform.machine(),
                          "python": platform.python_version()},
              "batching_knobs": health["batching"], "cells": cells, "goals": goals,
              "without_http": {"concurrency": top, "sentences_per_s": alone,
                               "speedup": round(alone["on"] / alone["off"], 2)}}
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps(result, indent=2) + "\n")
    tmp.rename(out)
    print(f"wrote {out}")


if __name__ == "__main__":
    typer.run(main)
