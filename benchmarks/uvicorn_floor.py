"""What uvicorn itself costs per request: a bare ASGI app (read the body, answer a fixed JSON the size of a
/predict answer) under serve_load.py's load generator, on 127.0.0.1 only.

    python benchmarks/uvicorn_floor.py [--requests 5000] [--concurrency 64]

Prints requests/s, p50 latency and the server's CPU time per request (/proc), the floor under which no service
on this uvicorn can go; docs/serving.md sets it against `serve`'s own cost per request.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import typer

sys.path.insert(0, str(Path(__file__).resolve().parent))
from serve_load import _free_port, cpu_seconds, load  # noqa: E402

ANSWER = b'{"predictions": [{"label": "fresh", "probabilities": {"rotten": 0.093871, "fresh": 0.906129}}]}'


async def app(scope, receive, send) -> None:
    if scope["type"] != "http":
        return
    more = True
    while more:
        more = (await receive()).get("more_body", False)
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(ANSWER))]})
    await send({"type": "http.response.body", "body": ANSWER})


def main(requests: int = typer.Option(5000), concurrency: int = typer.Option(64)) -> None:
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "uvicorn", "uvicorn_floor:app", "--host", "127.0.0.1", "--port",
                             str(port), "--log-level", "warning", "--no-access-log"], cwd=Path(__file__).parent)
    try:
        deadline = time.time() + 60
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2).read()
                break
            except OSError:
                if proc.poll() is not None or time.time() > deadline:
                    sys.exit("uvicorn did not start")
                time.sleep(0.2)
        bodies = [json.dumps({"texts": [f"a gripping , funny film number {i}"]}).encode() for i in range(100)]
        asyncio.run(load(port, bodies, 500, concurrency))  # warm-up
        before = cpu_seconds(proc.pid)
        seconds, latencies = asyncio.run(load(port, bodies, requests, concurrency))
        cpu = cpu_seconds(proc.pid) - before
    finally:
        proc.terminate()
        proc.wait()
    print(json.dumps({"requests": requests, "concurrency": concurrency, "requests_per_s": round(requests / seconds, 1),
                      "latency_ms_p50": round(float(sorted(latencies)[len(latencies) // 2]), 2),
                      "server_cpu_ms_per_request": round(1000 * cpu / requests, 3)}))


if __name__ == "__main__":
    typer.run(main)
