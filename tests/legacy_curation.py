"""The curation checks as they were before they were made faster (glan at f33de30), kept
verbatim so tests can show the fast ones give the same verdicts: the text clean-up, prose(), the
quality filters, datasketch's MinHash of a question, decontamination's n-gram lookup, and the
order curate() applied them in. Not used by glan itself.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence
from typing import Any

from glan.curation.decontaminate import BenchmarkIndex, Contamination
from glan.curation.dedup import ExactDuplicates, NearDuplicates, Probe
from glan.curation.errors import CurationError
from glan.curation.language import LanguageDetector
from glan.languages import language_code

Found = dict[str, Any]

# -- text.py --------------------------------------------------------------------------------------

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


# -- language.py ----------------------------------------------------------------------------------

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


# -- filters.py -----------------------------------------------------------------------------------


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


# -- dedup.py: datasketch's MinHash, one question at a time ---------------------------------------


class LegacyNearDuplicates(NearDuplicates):
    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        import datasketch

        self._permutations = datasketch.MinHash(num_perm=kwargs["num_perm"], seed=1).permutations
        lsh = datasketch.MinHashLSH(
            threshold=kwargs["threshold"], num_perm=kwargs["num_perm"], weights=(0.1, 0.9)
        )
        # the bands glan chose before it stopped asking datasketch (the mixers assume them)
        assert (self.bands, self.rows) == (lsh.b, lsh.r)
        self._num_perm = kwargs["num_perm"]
        self._datasketch = datasketch

    def probe(self, text: str) -> Probe:
        np = self._np
        shingles = self.shingles(text)
        if shingles.size == 0:
            return Probe(shingles, [])
        minhash = self._datasketch.MinHash(
            num_perm=self._num_perm,
            seed=1,
            permutations=self._permutations,
            scheme="affine32",
            hashfunc=lambda value: value,
        )
        minhash.update_batch(shingles.tolist())
        signature = minhash.hashvalues[: self.bands * self.rows].astype(np.uint64)
        keys = (signature.reshape(self.bands, self.rows) * self._band_mix).sum(axis=1)
        return Probe(shingles, (keys + self._band_salt).tolist())


# -- decontaminate.py -----------------------------------------------------------------------------


def benchmark_match(index: BenchmarkIndex, text: str) -> Contamination | None:
    if not index._grams:
        return None
    tokens = words(text)
    for length in sorted(index._lengths, reverse=True):
        for start in range(len(tokens) - length + 1):
            gram = tuple(tokens[start : start + length])
            where = index._grams.get(hash(gram))
            if where is not None:
                benchmark, split, item = where
                return Contamination(
                    index.benchmarks[benchmark].name, item, index._splits[split], " ".join(gram)
                )
    return None


# -- runner.py: curate() one pair at a time -------------------------------------------------------


def legacy_removals(
    rows: Sequence[tuple[int, dict[str, Any]]],
    filters: Sequence[Any],
    benchmarks: BenchmarkIndex | None,
    *,
    near: bool = True,
) -> dict[str, tuple[str, Found]]:
    """{row id: (reason, matched)} as curate() decided before: screen in output order, then
    dedup the survivors in id order (duplicate_of as a row id)."""
    removed: dict[str, tuple[str, Found]] = {}
    by_seq = dict(rows)
    for _, row in rows:
        question, answer = _pair(row)
        meta = row.get("meta") or {}
        if benchmarks is not None:
            leak = benchmark_match(benchmarks, question)
            if leak is not None:
                removed[row["id"]] = ("decontaminated", leak.as_dict())
                continue
        for check in filters:
            found = check.check(question, answer, meta)
            if found is not None:
                removed[row["id"]] = (check.reason, found)
                break
    texts: dict[int, str] = {}
    exact = ExactDuplicates(texts.__getitem__)
    finder = (
        LegacyNearDuplicates(threshold=0.8, shingle=5, num_perm=128, text_of=texts.__getitem__)
        if near
        else None
    )
    for seq, row in sorted(rows, key=lambda item: item[1]["id"]):
        if row["id"] in removed:
            continue
        text = normalise(_pair(row)[0])
        original = exact.match(text)
        if original is not None:
            removed[row["id"]] = ("exact_duplicate", {"duplicate_of": by_seq[original]["id"]})
            continue
        if finder is not None:
            probe = finder.probe(text)
            similar = finder.match(probe)
            if similar is not None:
                removed[row["id"]] = (
                    "near_duplicate",
                    {
                        "duplicate_of": by_seq[similar.key]["id"],
                        "jaccard": round(similar.jaccard, 3),
                    },
                )
                continue
            finder.add(probe, seq)
        texts[seq] = text
        exact.add(text, seq)
    return removed


def _pair(row: dict[str, Any]) -> tuple[str, str]:
    question = answer = ""
    for message in row.get("messages") or []:
        content = message.get("content") or ""
        if message.get("role") == "user" and not question:
            question = content
        elif message.get("role") == "assistant" and not answer:
            answer = content
    return question, answer
