"""Resumable student training: the whole training state is saved after every epoch.

One epoch over a full transfer set takes an hour on a 2-core CPU at MNLI size (docs/measurements.md, "Scale check at MNLI size"), so a
killed `student` or `baseline` run must not start over. After each epoch the model and optimizer
state, the random number generators, the best epoch so far and the logged curves are written (whole
or not at all) to data/cache/student/<run>-<key>/epoch.pt, where the key hashes everything that decides
the run: the training file, the task's split files, the student and distill params, the seed and the
device type. A run restarted on the same inputs continues after its last finished epoch and ends with
exactly the weights of an uninterrupted run; other inputs never resume it (their stale state is
deleted), and a finished run deletes its own.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import torch

from stages.data.io import remove_other_keys
from stages.data.locks import RunLock

STATE_FILE = "epoch.pt"


class EpochCheckpoint:
    """The last finished epoch's training state of one run (`name`, e.g. rt-student-seed-1) for one key."""

    def __init__(self, root: Path, name: str, key: str):
        self.dir = Path(root) / f"{name}-{key}"
        self.lock = RunLock(root, name, f"the {name} run")  # before touching any cache; held while training
        remove_other_keys(root, name, keep=self.dir)

    @property
    def path(self) -> Path:
        return self.dir / STATE_FILE

    def restore(self, model, optimizer, generator: torch.Generator, device: torch.device) -> dict | None:
        """Put the saved weights, optimizer and random generators back; return the saved progress (what
        `save` got as keywords), or None when there is no state (or it cannot be read: training starts over)."""
        if not self.path.exists():
            return None
        try:
            saved = torch.load(self.path, map_location="cpu", weights_only=False)
        except Exception:  # a state from another torch version or a damaged file: start over, never fail
            return None
        model.load_state_dict(saved.pop("model"))
        optimizer.load_state_dict(saved.pop("optimizer"))
        torch.set_rng_state(saved.pop("torch_rng"))
        cuda_rng = saved.pop("cuda_rng")
        if device.type == "cuda" and cuda_rng is not None:
            torch.cuda.set_rng_state(cuda_rng, device)
        generator.set_state(saved.pop("generator"))
        return saved

    def save(self, model, optimizer, generator: torch.Generator, device: torch.device, **progress) -> None:
        """The training state after an epoch, plus `progress` (best epoch, logged curves). Written beside the
        old state, then moved over it: a kill mid-write leaves the previous epoch."""
        state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                 "torch_rng": torch.get_rng_state(), "generator": generator.get_state(),
                 "cuda_rng": torch.cuda.get_rng_state(device) if device.type == "cuda" else None, **progress}
        self.dir.mkdir(parents=True, exist_ok=True)
        tmp = self.dir / f".{STATE_FILE}.tmp"
        torch.save(state, tmp)
        os.replace(tmp, self.path)

    def finish(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)
        self.lock.release()
