"""Language identification of generated text, offline and deterministic.

py3langid (a maintained fork of langid.py: naive Bayes over byte n-grams, 140 languages, the model
ships inside the wheel) is the judge: only its verdict removes a pair. It is pure Python and takes
0.4-0.7 ms per 1 kB answer, most of a curation's time. So a fast native detector goes first when it
is installed: eldc (C, Apache-2.0, its model in the wheel, about 8 us per 1 kB) knows 60 languages;
when it names the language that was expected, and calls that reliable, the text passes without
asking py3langid. Anything
else (another language, ``und``, a language eldc does not know, eldc not installed) goes to
py3langid exactly as before. The gate can only keep a text py3langid would have removed if eldc
says "expected" while py3langid is sure of another language; on glan-like text in ten languages
and on hard cases (kanji-only Japanese, English full of foreign names) that never happened.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cached_property
from typing import Any

from glan.curation.errors import require

# What says nothing about the language a text is written in: code, formulas, links, numbers.
_NOT_PROSE = [
    re.compile(r"```.*?(```|\Z)", re.DOTALL),  # fenced code (an unclosed fence runs to the end)
    re.compile(r"`[^`\n]*`"),
    re.compile(r"\$\$.*?\$\$", re.DOTALL),
    re.compile(r"\\\[.*?\\\]", re.DOTALL),
    re.compile(r"\\\(.*?\\\)", re.DOTALL),
    re.compile(r"\$[^$\n]+\$"),
    re.compile(r"https?://\S+"),
    re.compile(r"\\[a-zA-Z]+"),  # stray LaTeX commands
    re.compile(r"[\d_*#|>~=+\-/\\^{}\[\]()<>]+"),
]
# What each of _NOT_PROSE but the last needs in a text to match at all (a C substring search).
_TRIGGERS = ("`", "`", "$", "\\", "\\", "$", "http", "\\")
# The last, a class of single characters, as a byte table for ASCII text (most text): each becomes
# a space, and runs of spaces are collapsed below anyway.
_CLASS_CHARS = "0123456789_*#|>~=+-/\\^{}[]()<>"
_ASCII_CLASS = bytes.maketrans(_CLASS_CHARS.encode(), b" " * len(_CLASS_CHARS))
SAMPLE_CHARS = 2000  # enough to be sure; more only costs time
_SPACE = re.compile(r"\s")


def prose(text: str, limit: int | None = None) -> str:
    """The natural-language part of a text: code, formulas, links and numbers removed.

    Same result as applying every pattern of ``_NOT_PROSE`` in turn and collapsing whitespace,
    about 3x faster: a pattern whose trigger is not in the text is skipped, ASCII text has its
    characters replaced by a table, and ``split`` uses the whitespace of ``\\s``.

    With ``limit``, only a beginning of it that is at least ``limit`` characters long (or all of
    it): the whitespace of the rest is not collapsed, which is most of the work on long texts.
    The text is cut at a whitespace character, and no word reaches across one, so the words
    before the cut are the first words of the whole, joined the same way.
    """
    for pattern, trigger in zip(_NOT_PROSE, _TRIGGERS, strict=False):
        if trigger in text:
            text = pattern.sub(" ", text)
    if text.isascii():
        text = text.encode().translate(_ASCII_CLASS).decode()
    else:
        text = _NOT_PROSE[-1].sub(" ", text)
    if limit is not None and len(text) > limit + limit // 4:
        cut = _SPACE.search(text, limit + limit // 4)  # \s is what split() splits at
        if cut is not None:
            head = " ".join(text[: cut.start()].split())
            if len(head) >= limit:
                return head
    return " ".join(text.split())


@dataclass(frozen=True)
class Detected:
    language: str  # ISO 639-1
    confidence: float  # 0..1


class LanguageDetector:
    """py3langid, its model loaded when first needed: unpacking it takes a second of CPU, which a
    worker whose texts all pass the fast check never spends."""

    def __init__(self) -> None:
        require("py3langid", "curate")

    @cached_property
    def _identifier(self) -> Any:
        from py3langid.langid import MODEL_FILE, LanguageIdentifier

        return LanguageIdentifier.from_model_file(MODEL_FILE, norm_probs=True)

    @cached_property
    def languages(self) -> frozenset[str]:
        return frozenset(self._identifier.labels)

    def detect(self, text: str) -> Detected:
        language, confidence = self._identifier.classify(text[:SAMPLE_CHARS])
        return Detected(str(language), float(confidence))


class FastPass:
    """eldc, when installed: ``names(text, language)`` is True when it says ``text`` is in
    ``language`` and calls that reliable. Never removes anything; False sends the text to
    py3langid. (Without "reliable", English with an accent on every "e" passed here while
    py3langid was sure it is French.)"""

    def __init__(self) -> None:
        self._detect: Any = None
        self.languages: frozenset[str] = frozenset()
        try:
            import eldc
        except ImportError:  # optional: e.g. no wheel for this platform
            return
        eldc.init()
        self._detect = eldc.detect_details
        self.languages = frozenset(eldc.LANGUAGES)

    def knows(self, language: str) -> bool:
        return language in self.languages

    def names(self, text: str, language: str) -> bool:
        found = self._detect(text[:SAMPLE_CHARS])
        return bool(found.language == language and found.reliable)
