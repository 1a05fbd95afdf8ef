"""When two transfer-set texts count as the same: the key of a row, for deduplication and the dev/test guard.

Two rows are the same when their texts agree after lower-casing and dropping everything but letters and digits
("It's  GOOD." == "it 's good"), column by column for pairs. SST-2's tokenised, lower-cased sentences then match
the Rotten Tomatoes snippets they were cut from, which an exact comparison would miss. Keys are 64-bit hashes of
the normalised texts (a collision among 5 million rows has a chance of about 1 in 1.5 million), so millions of rows
cost 8 bytes each.
"""

from __future__ import annotations

import hashlib
from typing import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

_NOT_ALNUM = r"[^\p{L}\p{N}]+"
_SEPARATOR = "\x1f"


def _normal(array):
    return pc.replace_substring_regex(pc.utf8_lower(array), pattern=_NOT_ALNUM, replacement="")


def row_keys(text_a, text_b=None, slice_rows: int = 65536) -> np.ndarray:
    """One uint64 key per row (text_a alone, or the pair); equal normalised texts give equal keys.
    Works slice by slice, so the normalised copies of millions of texts never exist all at once."""
    columns = [c if isinstance(c, (pa.Array, pa.ChunkedArray)) else pa.array(list(c), pa.string())
               for c in ([text_a] if text_b is None else [text_a, text_b])]
    n = len(columns[0])
    out = np.empty(n, dtype=np.uint64)
    for start in range(0, n, slice_rows):
        parts = [_normal(c.slice(start, slice_rows)) for c in columns]
        normal = parts[0] if len(parts) == 1 else pc.binary_join_element_wise(*parts, _SEPARATOR)
        for i, value in enumerate(normal.to_pylist(), start):
            out[i] = int.from_bytes(hashlib.blake2b((value or "").encode(), digest_size=8).digest(), "little")
    return out


def first_occurrences(keys: np.ndarray, exclude: Sequence[np.ndarray] = ()) -> np.ndarray:
    """Boolean mask: the first row of each key, and only where the key is in none of `exclude`."""
    keep = np.zeros(len(keys), dtype=bool)
    if len(keys):
        _, first = np.unique(keys, return_index=True)
        keep[first] = True
    for other in exclude:
        if len(other):
            keep &= ~np.isin(keys, other)
    return keep
