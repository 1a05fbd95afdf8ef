"""`python -m stages serve`: run the service (stages/serving/app.py) under uvicorn, one process or several,
behind the connection guard (stages/serving/guard.py) and, off the loopback, an API key (stages/serving/auth.py)."""

from __future__ import annotations

import json
import os
import signal
import sys
from dataclasses import asdict
from pathlib import Path

import uvicorn

from stages.serving.app import SETTINGS_ENV, Batching, Limits, create_app, recommended_backend
from stages.serving.auth import resolve_key
from stages.serving.guard import ConnectionLimits, GuardedProtocol, raise_file_limit


def serve(export_dir: Path, backend: str | None, *, host: str, port: int, workers: int, batching: Batching,
          limits: Limits, threads: int | None, connections: ConnectionLimits = ConnectionLimits(),
          api_key_file: Path | None = None, insecure_no_key: bool = False) -> None:
    """Load the export (errors surface here, not inside uvicorn) and serve it until SIGTERM or Ctrl-C.
    backend None: the export's recommendation (config.json). Off the loopback an API key is required
    (api_key_file or $STAGES_API_KEY) unless insecure_no_key."""
    backend = backend or recommended_backend(export_dir)
    api_key = resolve_key(host, api_key_file, insecure_no_key)
    raise_file_limit(connections.max_connections)
    service = create_app(export_dir, backend, batching=batching, limits=limits, threads=threads,
                         connections=connections, api_key=api_key)
    print(f"serving {export_dir} ({backend}, batching {'on' if batching.enabled else 'off'}, "
          f"{'API key required' if api_key else 'no API key'}) on http://{host}:{port}/", flush=True)
    # uvicorn shuts down gracefully on SIGTERM, then raises the signal again under the handler found at start:
    # this one makes that a clean exit (status 0) rather than death by signal.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    protocol = {"http": GuardedProtocol, "timeout_keep_alive": connections.keep_alive_s}
    if workers == 1:
        uvicorn.run(service, host=host, port=port, log_level="warning", **protocol)
        return
    os.environ[SETTINGS_ENV] = json.dumps({"export_dir": str(export_dir), "backend": backend, "threads": threads,
                                           "batching": asdict(batching), "limits": asdict(limits),
                                           "connections": asdict(connections), "api_key": api_key})
    uvicorn.run("stages.serving.app:app_from_env", factory=True, host=host, port=port, workers=workers,
                log_level="warning", **protocol)
