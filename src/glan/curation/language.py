"""Language identification of generated text, offline and deterministic.

py3langid (a maintained, faster fork of langid.py: naive Bayes over byte n-grams, 97 languages,
the model ships inside the wheel) takes about 0.1 ms per answer. langdetect, the usual choice,
takes 2-8 ms and is random unless seeded: on a million pairs that is hours instead of minutes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
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
_SPACE = re.compile(r"\s+")
_SAMPLE_CHARS = 2000  # enough to be sure; more only costs time


def prose(text: str) -> str:
    """The natural-language part of a text: code, formulas, links and numbers removed."""
    for pattern in _NOT_PROSE:
        text = pattern.sub(" ", text)
    return _SPACE.sub(" ", text).strip()


@dataclass(frozen=True)
class Detected:
    language: str  # ISO 639-1
    confidence: float  # 0..1


class LanguageDetector:
    def __init__(self) -> None:
        require("py3langid", "curate")
        from py3langid.langid import MODEL_FILE, LanguageIdentifier

        self._identifier: Any = LanguageIdentifier.from_model_file(MODEL_FILE, norm_probs=True)
        self.languages: frozenset[str] = frozenset(self._identifier.labels)

    def detect(self, text: str) -> Detected:
        language, confidence = self._identifier.classify(text[:_SAMPLE_CHARS])
        return Detected(str(language), float(confidence))
