"""The API key: required whenever `serve` listens beyond the loopback, read from an environment variable or a file
(never the command line, where every user of the machine can read it in the process list).

Clients send `Authorization: Bearer <key>`; `POST /predict` answers 401 without it. `GET /health`, the page and
the OpenAPI description stay open: they reveal the model's task and labels, nothing a request could use.
"""

from __future__ import annotations

import hmac
import ipaddress
import os
from pathlib import Path

from stages.errors import StageError

KEY_ENV = "STAGES_API_KEY"
MIN_KEY_CHARS = 16


def is_loopback(host: str) -> bool:
    """True for an address only this machine can reach: 127.0.0.0/8, ::1, localhost."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to anything


def read_key(key_file: Path | None) -> str | None:
    """The key from --api-key-file, else from $STAGES_API_KEY, else None; a key that is too short is an error."""
    if key_file is not None:
        try:
            key, where = Path(key_file).read_text(encoding="utf-8").strip(), f"--api-key-file {key_file}"
        except (OSError, UnicodeDecodeError) as e:
            raise StageError(f"cannot read the API key file {key_file}: {getattr(e, 'strerror', None) or e}") from None
    else:
        key, where = os.environ.get(KEY_ENV, "").strip(), f"${KEY_ENV}"
        if not key:
            return None
    if len(key) < MIN_KEY_CHARS or any(c.isspace() or not c.isprintable() for c in key):
        raise StageError(f"the API key in {where} must be at least {MIN_KEY_CHARS} printable characters without "
                         "spaces (e.g. `python -c 'import secrets; print(secrets.token_urlsafe(32))'`)")
    return key


def resolve_key(host: str, key_file: Path | None, insecure_no_key: bool) -> str | None:
    """The key the service will require, or None when it runs open: on the loopback without a key, or with
    --insecure-no-key. Off the loopback without a key (and without that flag) it refuses to start."""
    if insecure_no_key:
        if key_file is not None:
            raise StageError("--insecure-no-key and --api-key-file contradict each other: give one")
        return None
    key = read_key(key_file)
    if key is None and not is_loopback(host):
        raise StageError(f"--host {host} exposes the service beyond this machine: give it an API key in "
                         f"${KEY_ENV} or --api-key-file FILE (or pass --insecure-no-key, e.g. behind a proxy "
                         "that authenticates)")
    return key


def authorized(header: str | None, key: str) -> bool:
    """Whether an Authorization header carries the key (`Bearer <key>`), compared in constant time."""
    if not header:
        return False
    scheme, _, given = header.partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), key.encode())
