"""How the student's rows become batches: token ids stored once, batches drawn as row indices.

The BiLSTM runs fastest on a dense (batch, length) tensor whose rows all have one length: one fused
LSTM call (oneDNN on a CPU, cuDNN on a GPU), no `pack_padded_sequence`, no padded step. So training
batches come from exact-length buckets of the first text, shuffled within and across buckets with
the seeded generator, and inference cuts length-sorted rows wherever the length changes. For
sentence pairs the second text keeps its own lengths inside the batch and is packed, so neither
side's final state ever reads a padded step (bucketing on both lengths would leave batches of a
handful of pairs: MRPC has 486 distinct length pairs in 3,668 training pairs).

`sorted-windows` is the earlier scheme (mixed lengths, every side packed), kept as a documented
option (`distill.batching`) and as the reference of `benchmarks/student_throughput.py`.

Token ids live in one flat int32 array (a Python list per text would cost ~1 GB on SST-2's transfer
set), moved to the training device once; a batch is gathered from it on that device.
"""

from __future__ import annotations

from array import array
from dataclasses import dataclass
from typing import Iterable

import numpy as np
import torch

BATCHINGS = ("buckets", "sorted-windows")
WINDOW_BATCHES = 50  # sorted-windows: batches per shuffled window that is sorted by length before cutting


@dataclass
class TokenIds:
    """Token ids of many texts, concatenated (ids) with each text's start (offsets, len n + 1)."""

    ids: np.ndarray  # int32
    offsets: np.ndarray  # int64

    @classmethod
    def from_lists(cls, rows: Iterable[list[int]]) -> TokenIds:
        ids, lengths = array("i"), array("q")
        for row in rows:
            ids.extend(row)
            lengths.append(len(row))
        offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
        np.cumsum(np.frombuffer(lengths, dtype=np.int64), out=offsets[1:])
        return cls(np.frombuffer(ids, dtype=np.int32) if len(ids) else np.zeros(0, np.int32), offsets)

    @property
    def lengths(self) -> np.ndarray:
        """True lengths; an empty text has 0 here and is read as one <pad> step (see `steps`)."""
        return np.diff(self.offsets)

    def take(self, rows: np.ndarray) -> TokenIds:
        """The texts at `rows`, in that order."""
        lengths = self.lengths[rows]
        within = np.arange(int(lengths.sum())) - np.repeat(np.cumsum(lengths) - lengths, lengths)
        return TokenIds(self.ids[np.repeat(self.offsets[rows], lengths) + within], np.r_[0, np.cumsum(lengths)])

    @property
    def steps(self) -> np.ndarray:
        """LSTM steps per text: its length, and 1 for an empty text."""
        return np.maximum(self.lengths, 1)


def bucket_batches(steps: np.ndarray, batch_size: int, generator: torch.Generator) -> list[np.ndarray]:
    """Training batches whose rows all have one length: rows shuffled, grouped by length, cut into
    batches of `batch_size` (the last of each length may be smaller), and the batch order shuffled."""
    shuffled = torch.randperm(len(steps), generator=generator).numpy()
    grouped = shuffled[np.argsort(steps[shuffled], kind="stable")]  # stable: still random within a length
    batches = _cut(grouped, steps[grouped], batch_size)
    return [batches[i] for i in torch.randperm(len(batches), generator=generator).tolist()]


def sorted_window_batches(steps: np.ndarray, batch_size: int, generator: torch.Generator) -> list[np.ndarray]:
    """The earlier scheme: a shuffled window of WINDOW_BATCHES batches is sorted by length and cut, so a
    batch holds similar but mixed lengths (packed by the model); the batch order is shuffled too."""
    order = torch.randperm(len(steps), generator=generator).numpy()
    window = batch_size * WINDOW_BATCHES
    batches = []
    for start in range(0, len(order), window):
        chunk = order[start:start + window]
        chunk = chunk[np.argsort(steps[chunk], kind="stable")]
        batches += [chunk[i:i + batch_size] for i in range(0, len(chunk), batch_size)]
    return [batches[i] for i in torch.randperm(len(batches), generator=generator).tolist()]


def inference_batches(steps: np.ndarray, batch_size: int, exact: bool = True,
                      second: np.ndarray | None = None) -> list[np.ndarray]:
    """Rows sorted by length (then by the second text's length, for pairs) and cut every `batch_size`
    rows and, when `exact`, wherever the first text's length changes."""
    order = np.lexsort((second, steps)) if second is not None else np.argsort(steps, kind="stable")
    return _cut(order, steps[order], batch_size) if exact else _chunks(order, batch_size)


def _chunks(rows: np.ndarray, batch_size: int) -> list[np.ndarray]:
    return [rows[i:i + batch_size] for i in range(0, len(rows), batch_size)]


def _cut(rows: np.ndarray, keys: np.ndarray, batch_size: int) -> list[np.ndarray]:
    """Consecutive slices of `rows` of at most batch_size, never spanning a change of `keys`."""
    starts = np.flatnonzero(np.r_[True, keys[1:] != keys[:-1]]) if len(rows) else np.zeros(0, np.int64)
    ends = np.r_[starts[1:], len(rows)]
    return [rows[i:min(i + batch_size, end)] for start, end in zip(starts, ends)
            for i in range(start, end, batch_size)]


class DeviceTokens:
    """TokenIds moved to a device once; `gather` builds a right-padded (rows, longest) batch there."""

    def __init__(self, tokens: TokenIds, device: torch.device):
        self.steps = tokens.steps
        # one trailing <pad> (id 0) that every out-of-text position reads, so a gather needs no mask
        self.ids = torch.from_numpy(np.r_[tokens.ids, np.int32(0)]).to(device)
        self.pad_index = len(tokens.ids)
        self.starts = torch.from_numpy(tokens.offsets[:-1]).to(device)
        self.lengths = torch.from_numpy(tokens.lengths).to(device)
        self.device = device

    def gather(self, rows: np.ndarray, rows_on_device: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(ids on the device, LSTM steps per row on the CPU, where packing wants them)."""
        steps = torch.from_numpy(self.steps[rows])
        width = int(steps.max())
        position = torch.arange(width, device=self.device)
        inside = position < self.lengths[rows_on_device, None]
        flat = torch.where(inside, self.starts[rows_on_device, None] + position, self.pad_index)
        return self.ids[flat], steps
