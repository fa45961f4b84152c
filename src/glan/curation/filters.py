"""Quality filters: each looks at one pair and says why it should go, or nothing.

A filter returns ``None`` to keep the pair, or a small dict of what it found (stored with the
removal, so a reader of the report can judge the filter, not just count it).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any, Protocol

from glan.curation.errors import CurationError
from glan.curation.language import LanguageDetector, prose
from glan.curation.text import ngrams, words
from glan.languages import language_code

Found = dict[str, Any]


class Filter(Protocol):
    reason: str

    def check(self, question: str, answer: str, meta: dict[str, Any]) -> Found | None: ...


class TooShort:
    """Empty questions and answers, and ones shorter than a minimum (characters, trimmed)."""

    reason = "too_short"

    def __init__(self, min_question_chars: int, min_answer_chars: int) -> None:
        self.minimum = {"question": max(1, min_question_chars), "answer": max(1, min_answer_chars)}

    def check(self, question: str, answer: str, meta: dict[str, Any]) -> Found | None:
        for part, text in (("question", question), ("answer", answer)):
            chars = len(text.strip())
            if chars < self.minimum[part]:
                return {"part": part, "chars": chars, "min": self.minimum[part]}
        return None


class Truncated:
    """Pairs whose question or answer was cut off at max tokens (finish reason ``length``)."""

    reason = "truncated"

    def check(self, question: str, answer: str, meta: dict[str, Any]) -> Found | None:
        return {"finish_reason": "length"} if meta.get("truncated") else None


# A refusal or a non-answer says so at the start; the same words deep inside a long answer ("if
# you don't know the mass, measure it") are teaching, not refusing.
_OPENING_CHARS = 300
REFUSALS: tuple[str, ...] = (
    r"^\W*(i'?m|i am) (sorry|afraid)\b",
    r"\bas an ai( language model| assistant)?\b",
    r"\bi (can ?not|can'?t|am unable to|'?m unable to|won'?t be able to|am not able to)"
    r" (help|assist|answer|provide|comply|fulfil|fulfill|complete|do that|respond)",
    r"\bi (do not|don'?t) know\b",
    r"\bi'?m not sure (what|which|how|if|whether|i understand)\b",
    r"\b(insufficient|not enough) (information|context) to (answer|determine|solve)\b",
    r"죄송(하지만|합니다)",
    r"(답변|대답|도와)(드릴|할) 수 없",
    r"모르겠습니다",
    r"抱歉",
    r"我(无法|不能)(回答|提供|帮助)",
    r"我不知道",
    r"申し訳(ありません|ございません)",
    r"(お答え|回答)できません",
    r"^\W*(lo siento|je suis désolé|es tut mir leid)\b",
)


class Refusal:
    """Refusals and "I don't know" answers, by patterns on the opening of the answer."""

    reason = "refusal"

    def __init__(self, extra_patterns: Sequence[str] = ()) -> None:
        self.patterns = [re.compile(p, re.IGNORECASE) for p in REFUSALS]
        for pattern in extra_patterns:
            try:
                self.patterns.append(re.compile(pattern, re.IGNORECASE))
            except re.error as error:
                raise CurationError(
                    f"--refusal-pattern {pattern!r} is not a regex: {error}"
                ) from None

    def check(self, question: str, answer: str, meta: dict[str, Any]) -> Found | None:
        opening = answer.strip()[:_OPENING_CHARS]
        for pattern in self.patterns:
            found = pattern.search(opening)
            if found:
                return {"matched": found.group(0).strip()}
        return None


# "Answer: 42" on a line of its own, or a boxed result, in the question itself.
_ANSWER_MARKERS = re.compile(
    r"(^|\n)\s*\**(answer|final answer|correct answer|solution|정답|답|答案|解答)\**\s*[:：]"
    r"|\\boxed\{",
    re.IGNORECASE,
)
_LEAK_NGRAM = 8


class AnswerLeak:
    """Questions that give away their own answer.

    Either the question carries an answer marker ("Answer: ...", ``\\boxed{}``), or most of the
    answer is already in it: at least ``overlap`` of the answer's 8-word runs (or the whole answer,
    when it is shorter) appear in the question. An answer that restates its question is fine: its
    own runs are mostly new.
    """

    reason = "answer_leak"

    def __init__(self, overlap: float) -> None:
        self.overlap = overlap

    def check(self, question: str, answer: str, meta: dict[str, Any]) -> Found | None:
        marker = _ANSWER_MARKERS.search(question)
        if marker:
            return {"marker": marker.group(0).strip()}
        answer_words = words(answer)
        if not answer_words:
            return None
        n = min(_LEAK_NGRAM, len(answer_words))
        answer_grams = set(ngrams(answer_words, n))
        question_grams = set(ngrams(words(question), n))
        share = len(answer_grams & question_grams) / len(answer_grams)
        if share >= self.overlap:
            return {"overlap": round(share, 3)}
        return None


class WrongLanguage:
    """Questions or answers not written in the expected language.

    The expected language is ``language`` if given, else each row's own ``meta.language`` (the
    language the run asked for), else English (the prompts are English). Only the prose is judged
    (code, formulas, links and numbers are removed first), only when there are at least
    ``min_chars`` of it, and only a confident verdict removes a pair: a wrong language must be the
    detector's first choice with at least ``confidence``.
    """

    reason = "wrong_language"

    def __init__(self, language: str | None, confidence: float, min_chars: int = 40) -> None:
        self.detector = LanguageDetector()
        self.confidence = confidence
        self.min_chars = min_chars
        self.fixed = None if language is None else self._code(language, "--language")
        self._codes: dict[str | None, str] = {}

    def _code(self, language: str, origin: str) -> str:
        code = language_code(language)
        if code is None or code not in self.detector.languages:
            raise CurationError(
                f"{origin} {language!r} is not a language the detector knows; pass --language"
                " with an ISO 639-1 code (en, ko, zh, ja, de, ...) or --language any"
            )
        return code

    def expected(self, meta: dict[str, Any]) -> str:
        if self.fixed is not None:
            return self.fixed
        language = meta.get("language")
        if language not in self._codes:
            origin = "the run's language"
            self._codes[language] = "en" if not language else self._code(language, origin)
        return self._codes[language]

    def check(self, question: str, answer: str, meta: dict[str, Any]) -> Found | None:
        expected = self.expected(meta)
        for part, text in (("answer", answer), ("question", question)):
            words_only = prose(text)
            if len(words_only) < self.min_chars:
                continue
            found = self.detector.detect(words_only)
            if found.language != expected and found.confidence >= self.confidence:
                return {
                    "part": part,
                    "detected": found.language,
                    "confidence": round(found.confidence, 3),
                    "expected": expected,
                }
        return None
