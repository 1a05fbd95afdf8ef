"""Tokenisation decided once: what the teacher and the student see comes from the same stored text.

Augmented examples are stored as words joined by single spaces, with masked words written as MASK.
The teacher gets MASK as its tokenizer's own mask (or unknown) token; the student's word tokenizer
keeps MASK as one token, which its vocabulary maps to a dedicated <mask> id.
"""

from __future__ import annotations

import re

MASK = "[MASK]"

# Words, numbers with inner punctuation (3.5, 1,000), contractions split as in GloVe/PTB ('s, n't),
# single punctuation marks, and MASK kept whole.
_WORD = re.compile(r"\[MASK\]|\w+?(?=n't\b)|n't|'\w+|\w+(?:[.,]\w+)*|[^\w\s]", re.UNICODE)


def student_tokens(text: str) -> list[str]:
    """Lower-cased word tokens for the student (GloVe and our vocabulary are lower-case)."""
    return [tok if tok == MASK else tok.lower() for tok in _WORD.findall(text)]


def for_teacher(text: str | None, mask_token: str | None, unk_token: str | None) -> str | None:
    """Replace MASK by the teacher tokenizer's own mask token (its unknown token if it has none)."""
    if text is None:
        return None
    replacement = mask_token or unk_token or MASK
    return text if replacement == MASK else text.replace(MASK, replacement)
