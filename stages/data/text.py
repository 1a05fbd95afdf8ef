"""Tokenisation decided once: what the teacher and the student see comes from the same stored text.

Augmented examples are stored as words joined by single spaces, with masked words written as MASK.
The teacher gets MASK as its tokenizer's own mask (or unknown) token; the student's tokenizer
(stages/models/vocab.py) keeps MASK as one special token with its own id.
"""

from __future__ import annotations

MASK = "[MASK]"

# The student's words, matched on lower-cased text: words, numbers with inner punctuation (3.5, 1,000),
# contractions split as in GloVe/PTB ('s, n't), and single punctuation marks; whitespace is dropped.
WORD_PATTERN = r"\w+?(?=n't\b)|n't|'\w+|\w+(?:[.,]\w+)*|[^\w\s]"


def for_teacher(text: str | None, mask_token: str | None, unk_token: str | None) -> str | None:
    """Replace MASK by the teacher tokenizer's own mask token (its unknown token if it has none)."""
    if text is None:
        return None
    replacement = mask_token or unk_token or MASK
    return text if replacement == MASK else text.replace(MASK, replacement)
