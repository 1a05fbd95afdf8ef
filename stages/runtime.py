"""Device choice and seeding, shared by every stage that runs a model."""

from __future__ import annotations

import os
import random

import numpy as np
import torch

from stages.errors import StageError


def resolve_device(spec: str) -> torch.device:
    """`auto` takes CUDA when present; an explicit `cuda` without a GPU is an error, not a fallback."""
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if spec.startswith("cuda") and not torch.cuda.is_available():
        raise StageError(f"device={spec!r} but no CUDA GPU is visible; use device=auto or cpu")
    return torch.device(spec)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    os.environ.setdefault("PYTHONHASHSEED", str(seed))
