"""Quality filters: each looks at one pair and says why it should go, or nothing.

A filter returns ``None`` to keep the pair, or a small dict of what it found (stored with the
removal, so a reader of the report can judge the filter, not just count it).

Filters share one ``Pair`` per row: what several of them need (the normalised words of the
question, the prose of a text) is computed once, when first asked for.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from functools import cached_property
from typing import Any, Protocol

from glan.curation.errors import CurationError
from glan.curation.language import SAMPLE_CHARS, FastPass, LanguageDetector, prose
from glan.curation.text import ngram_set, words
from glan.languages import language_code

Found = dict[str, Any]


class Pair:
    """One row's question, answer and meta, with the derived texts the checks share."""

    __slots__ = ("__dict__", "answer", "meta", "question")

    def __init__(self, question: str, answer: str, meta: dict[str, Any]) -> None:
        self.question = question
        self.answer = answer
        self.meta = meta

    @cached_property
    def question_words(self) -> list[str]:
        return words(self.question)

    @cached_property
    def answer_words(self) -> list[str]:
        return words(self.answer)

    @cached_property
    def question_prose(self) -> str:
        """The beginning of the question's prose that language identification reads."""
        return prose(self.question, SAMPLE_CHARS)

    @cached_property
    def answer_prose(self) -> str:
        """The beginning of the answer's prose that language identification reads."""
        return prose(self.answer, SAMPLE_CHARS)


class Filter(Protocol):
    reason: str

    def check(self, question: str, answer: str, meta: dict[str, Any]) -> Found | None: ...

    def judge(self, pair: Pair) -> Found | None: ...


class _Check:
    """``check(question, answer, meta)`` for one pair, by way of ``judge``."""

    def check(self, question: str, answer: str, meta: dict[str, Any]) -> Found | None:
        return self.judge(Pair(question, answer, meta))

    def judge(self, pair: Pair) -> Found | None:
        raise NotImplementedError


class TooShort(_Check):
    """Empty questions and answers, and ones shorter than a minimum (characters, trimmed)."""

    reason = "too_short"

    def __init__(self, min_question_chars: int, min_answer_chars: int) -> None:
        self.minimum = {"question": max(1, min_question_chars), "answer": max(1, min_answer_chars)}

    def judge(self, pair: Pair) -> Found | None:
        for part, text in (("question", pair.question), ("answer", pair.answer)):
            chars = len(text.strip())
            if chars < self.minimum[part]:
                return {"part": part, "chars": chars, "min": self.minimum[part]}
        return None


class Truncated(_Check):
    """Pairs whose question or answer was cut off at max tokens (finish reason ``length``)."""

    reason = "truncated"

    def judge(self, pair: Pair) -> Found | None:
        return {"finish_reason": "length"} if pair.meta.get("truncated") else None


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


class Refusal(_Check):
    """Refusals and "I don't know" answers, by patterns on the opening of the answer."""

    reason = "refusal"

    def __init__(self, extra_patterns: Sequence[str] = ()) -> None:
        self.patterns = [re.compile(p, re.IGNORECASE) for p in REFUSALS]
        self.extra = []
        for pattern in extra_patterns:
            try:
                self.extra.append(re.compile(pattern, re.IGNORECASE))
            except re.error as error:
                raise CurationError(
                    f"--refusal-pattern {pattern!r} is not a regex: {error}"
                ) from None
        self._maybe = _loose_refusals()

    def judge(self, pair: Pair) -> Found | None:
        opening = pair.answer.strip()[:_OPENING_CHARS]
        patterns = self.patterns if self._maybe(opening) else []
        for pattern in (*patterns, *self.extra):
            found = pattern.search(opening)
            if found:
                return {"matched": found.group(0).strip()}
        return None


def _loose_refusals() -> Any:
    """A test that is true of every text one of ``REFUSALS`` matches (and of a few more), so
    the patterns need to run only when it is: one RE2 alternation, 7x faster than 16 searches.

    RE2's ``\\b`` and ``\\W`` know ASCII only, and its Unicode tables are not Python's, so
    ``\\b`` is dropped and ``\\W`` becomes any character (both only loosen the test); and
    Python's IGNORECASE takes "İ" and "ı" for "i", RE2's does not, so they are spelled out.
    Without RE2 (google-re2 is optional) every text is tested with the patterns, as before.
    """
    try:
        import re2
    except ImportError:
        return lambda text: True
    pattern = re2.compile("(?i)" + "|".join(f"(?:{loose_refusal(p)})" for p in REFUSALS))
    return pattern.search


# Letters Python's re.IGNORECASE matches that RE2's (?i) does not (test_curation_equivalence
# checks every code point).
_PYTHON_ONLY_CASES = {"i": "[iİı]"}


def loose_refusal(pattern: str) -> str:
    """One of ``REFUSALS`` as RE2 source matching at least what Python's re matches."""
    loose = pattern.replace(r"\b", "").replace(r"\W", r"[\s\S]")
    return "".join(_PYTHON_ONLY_CASES.get(c, c) for c in loose)


# "Answer: 42" on a line of its own, or a boxed result, in the question itself.
_ANSWER_MARKERS = re.compile(
    r"(^|\n)\s*\**(answer|final answer|correct answer|solution|정답|답|答案|解答)\**\s*[:：]"
    r"|\\boxed\{",
    re.IGNORECASE,
)
_LEAK_NGRAM = 8
_LEAK_PIECE_CHARS = 800  # of a long answer read at a time, until a leak is ruled out


class AnswerLeak(_Check):
    """Questions that give away their own answer.

    Either the question carries an answer marker ("Answer: ...", ``\\boxed{}``), or most of the
    answer is already in it: at least ``overlap`` of the answer's 8-word runs (or the whole answer,
    when it is shorter) appear in the question. An answer that restates its question is fine: its
    own runs are mostly new.
    """

    reason = "answer_leak"

    def __init__(self, overlap: float) -> None:
        self.overlap = overlap

    def _ruled_out(self, pair: Pair) -> bool:
        """Whether the answer's opening alone has so many distinct runs that the question cannot
        hold ``overlap`` of them; the answer's words are read a piece at a time until it does.

        The answer has at least as many distinct runs as distinct words starting one, and the
        question has at most as many runs as it has words less 7, so the share is at most that
        over this (float division is monotone: the bound holds for the share as computed too).
        Pieces end before a space, and no word, normalisation or case folding reaches across a
        space, so the pieces' words are the answer's words. The first piece is long enough for
        the distinct words a question of this length calls for (about 10 characters each).
        """
        answer = pair.answer
        most = max(0, len(pair.question_words) - _LEAK_NGRAM + 1)  # >= the question's runs
        piece = max(_LEAK_PIECE_CHARS, int(most / self.overlap) * 10)
        found: list[str] = []
        starts: set[str] = set()  # distinct first words of the runs read so far
        start = 0
        while start < len(answer):
            end = len(answer)
            if end - start > 2 * piece:
                cut = answer.rfind(" ", start + 1, start + piece)
                end = cut if cut > start else end
            piece = _LEAK_PIECE_CHARS
            counted = max(0, len(found) - _LEAK_NGRAM + 1)
            found += words(answer[start:end])
            start = end
            if start < len(answer) and len(found) >= _LEAK_NGRAM:
                starts.update(found[counted : len(found) - _LEAK_NGRAM + 1])
                if most / len(starts) < self.overlap:
                    return True
        pair.__dict__["answer_words"] = found  # the whole answer's words, read: keep them
        return False

    def judge(self, pair: Pair) -> Found | None:
        question = pair.question
        # every marker has a colon or a backslash: the pattern is searched only when one is there
        if ":" in question or "：" in question or "\\" in question:
            marker = _ANSWER_MARKERS.search(question)
            if marker:
                return {"marker": marker.group(0).strip()}
        if self._ruled_out(pair):
            return None
        answer_words = pair.answer_words
        if not answer_words:
            return None
        n = min(_LEAK_NGRAM, len(answer_words))
        # The answer has at least as many distinct runs as distinct words starting one, so the
        # share is at most the question's runs over that (and those are at most its words less
        # n - 1): when that bound is below the threshold, no runs need be collected (most
        # pairs). Float division is monotone, so the bound holds for the share as computed too.
        starts = len(set(answer_words[: len(answer_words) - n + 1]))
        if max(0, len(pair.question_words) - n + 1) / starts < self.overlap:
            return None
        question_grams = ngram_set(pair.question_words, n)
        if len(question_grams) / starts < self.overlap:
            return None
        answer_grams = ngram_set(answer_words, n)
        share = len(answer_grams & question_grams) / len(answer_grams)
        if share >= self.overlap:
            return {"overlap": round(share, 3)}
        return None


class WrongLanguage(_Check):
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
        self.fast = FastPass()
        self.confidence = confidence
        if min_chars > SAMPLE_CHARS:  # Pair reads only the beginning of the prose
            raise ValueError(f"min_chars is at most {SAMPLE_CHARS}")
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

    def judge(self, pair: Pair) -> Found | None:
        expected = self.expected(pair.meta)
        fast = self.fast.knows(expected)
        for part in ("answer", "question"):
            words_only = pair.answer_prose if part == "answer" else pair.question_prose
            if len(words_only) < self.min_chars:
                continue
            if fast and self.fast.names(words_only, expected):
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
