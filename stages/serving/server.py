"""`python -m stages serve`: run the service (stages/serving/app.py) under uvicorn, one process or several."""

from __future__ import annotations

import json
import os
import signal
import sys
from dataclasses import asdict
from pathlib import Path

import uvicorn

from stages.serving.app import SETTINGS_ENV, Batching, Limits, create_app, recommended_backend


def serve(export_dir: Path, backend: str | None, *, host: str, port: int, workers: int, batching: Batching,
          limits: Limits, threads: int | None) -> None:
    """Load the export (errors surface here, not inside uvicorn) and serve it until SIGTERM or Ctrl-C.
    backend None: the export's recommendation (config.json)."""
    backend = backend or recommended_backend(export_dir)
    service = create_app(export_dir, backend, batching=batching, limits=limits, threads=threads)
    print(f"serving {export_dir} ({backend}, batching {'on' if batching.enabled else 'off'}) on http://{host}:{port}/")
    # uvicorn shuts down gracefully on SIGTERM, then raises the signal again under the handler found at start:
    # this one makes that a clean exit (status 0) rather than death by signal.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    if workers == 1:
        uvicorn.run(service, host=host, port=port, log_level="warning")
        return
    os.environ[SETTINGS_ENV] = json.dumps({"export_dir": str(export_dir), "backend": backend, "threads": threads,
                                           "batching": asdict(batching), "limits": asdict(limits)})
    uvicorn.run("stages.serving.app:app_from_env", factory=True, host=host, port=port, workers=workers,
                log_level="warning")
