"""Text normalisation shared by dedup, decontamination and the filters.

Two texts that differ only in case, width (full-width vs ASCII), punctuation or spacing normalise to
the same string, so "What is 2+2?" and "what is 2 + 2" are exact duplicates.
"""

from __future__ import annotations

import re
import unicodedata

# Anything that is neither a letter, a digit nor whitespace (\w covers Hangul, kana and CJK too).
_PUNCTUATION = re.compile(r"[^\w\s]|_")
_SPACE = re.compile(r"\s+")


def normalise(text: str) -> str:
    """Case-folded NFKC text with punctuation turned into spaces and whitespace collapsed."""
    text = unicodedata.normalize("NFKC", text).casefold()
    return _SPACE.sub(" ", _PUNCTUATION.sub(" ", text)).strip()


def words(text: str) -> list[str]:
    """The normalised words of a text."""
    return normalise(text).split()


def ngrams(tokens: list[str], n: int) -> list[tuple[str, ...]]:
    """Every run of ``n`` consecutive tokens (none when there are fewer than ``n``)."""
    return [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]
