"""One run at a time per task: a lock file beside a stage's resumable cache (label shards, student epochs).

Two `label` runs of one task used to share one cache folder: the second deleted the first's shards and failed
with a misleading message. Now the first takes an exclusive `flock` on <cache root>/<name>.lock and writes its
pid and command into it; the second fails at once with a StageError naming them. The kernel drops the lock when
the holder exits, however it exits (even kill -9), so a stale lock file never blocks a later run; a run that
ends normally deletes its lock file.
"""

from __future__ import annotations

import fcntl
import os
import shlex
import sys
from pathlib import Path

from stages.errors import StageError


class RunLock:
    """An exclusive lock held while this object lives (or until `release`)."""

    def __init__(self, root: Path, name: str, what: str):
        self.path = Path(root) / f"{name}.lock"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        while True:
            self._file = open(self.path, "a+")
            try:
                fcntl.flock(self._file, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                self._file.seek(0)
                holder = self._file.read().strip() or "another process"
                self._file.close()
                raise StageError(f"{what} is already running ({holder} holds {self.path}); wait for it to finish "
                                 "or stop it, then run again") from None
            # the holder before us deletes the file as it releases it: make sure we locked the file at the path
            try:
                if os.stat(self.path).st_ino == os.fstat(self._file.fileno()).st_ino:
                    break
            except FileNotFoundError:
                pass
            self._file.close()
        self._file.seek(0)
        self._file.truncate()
        self._file.write(f"pid {os.getpid()}: {shlex.join(sys.argv)}\n")
        self._file.flush()

    def release(self) -> None:
        """Delete the lock file (a finished run leaves its cache folder clean), then drop the lock."""
        if not self._file.closed:
            self.path.unlink(missing_ok=True)
            self._file.close()  # closing the file drops the flock

    def __enter__(self) -> "RunLock":
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    def __del__(self) -> None:
        self.release()
