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

import contextlib
import io
import lzma
import os
import re
import shutil
import tempfile
from array import array
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
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
    """py3langid, its model loaded when first needed (see ``load_identifier``)."""

    def __init__(self) -> None:
        require("py3langid", "curate")

    @cached_property
    def _identifier(self) -> Any:
        return load_identifier()

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


# py3langid versions whose model layout ``_identifier_from`` knows (checked by a test)
_CACHED_MODEL_VERSIONS = ("0.4.",)


def load_identifier() -> Any:
    """py3langid's identifier, as ``LanguageIdentifier.from_model_file(MODEL_FILE,
    norm_probs=True)`` gives it, about 5x faster after the first time.

    Its model (68 MB of arrays) ships xz-compressed, and unpacking that takes 0.4 s of CPU, in
    every process that needs it: each screening worker and often the main one. So the arrays are
    kept unpacked in glan's cache directory (one .npy file each, in a directory named by the
    model file's size and time) and built into an identifier the way py3langid builds it; the
    biggest is mapped from the file, so the processes share one copy in memory. For a py3langid
    whose layout is not known here, or on any trouble with the cache, py3langid loads its own
    model as before.
    """
    import py3langid
    from py3langid.langid import MODEL_DIR, MODEL_FILE, LanguageIdentifier

    if py3langid.__version__.startswith(_CACHED_MODEL_VERSIONS):
        with contextlib.suppress(Exception):
            return _identifier_from(_unpacked_model(MODEL_DIR / MODEL_FILE), LanguageIdentifier)
    return LanguageIdentifier.from_model_file(MODEL_FILE, norm_probs=True)


def cache_dir() -> Path:
    """Where glan keeps what it can make again: $GLAN_CACHE, else $XDG_CACHE_HOME/glan, else
    ~/.cache/glan."""
    if os.environ.get("GLAN_CACHE"):
        return Path(os.environ["GLAN_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "glan"


_MODEL_ARRAYS = ("ptc", "pc", "classes", "nextmove", "nextmove_row", "out_feat")


def _unpacked_model(model: Path) -> dict[str, Any]:
    """The model's arrays, from the cache (``ptc`` mapped from its file), or unpacked from the
    model file and put in the cache."""
    import numpy as np

    stat = model.stat()
    cached = cache_dir() / f"py3langid-model-{stat.st_size}-{stat.st_mtime_ns}"
    try:
        return {
            name: np.load(cached / f"{name}.npy", mmap_mode="r" if name == "ptc" else None)
            for name in _MODEL_ARRAYS
        }
    except (OSError, ValueError):  # none yet, or broken: made again
        shutil.rmtree(cached, ignore_errors=True)
    with lzma.open(model) as packed, np.load(io.BytesIO(packed.read())) as unpacked:
        arrays = {name: unpacked[name] for name in _MODEL_ARRAYS}
    with contextlib.suppress(OSError):  # a read-only home: no cache, same model
        cached.parent.mkdir(parents=True, exist_ok=True)
        partial = Path(tempfile.mkdtemp(dir=cached.parent, prefix=f"{cached.name}."))
        for name, values in arrays.items():
            np.save(partial / f"{name}.npy", values, allow_pickle=False)
        try:
            partial.rename(cached)  # whole or not there, even with workers writing at once
        except OSError:  # another process was first
            shutil.rmtree(partial, ignore_errors=True)
    return arrays


def _identifier_from(model: dict[str, Any], identifier: Any) -> Any:
    """py3langid 0.4's ``modelio.load_model`` and ``from_model_file`` on the model's arrays."""
    import numpy as np

    return identifier(
        np.asarray(model["ptc"]),
        np.asarray(model["pc"]),
        model["classes"].tolist(),
        _as_array(model["nextmove"]),
        model["out_feat"].tolist(),
        norm_probs=True,
        tk_row=_as_array(model["nextmove_row"]),
    )


def _as_array(values: Any) -> array:
    """An unsigned numpy array as the standard library's array, as py3langid keeps its tables."""
    import numpy as np

    out = array({2: "H", 4: "I", 8: "L"}[values.dtype.itemsize])
    out.frombytes(memoryview(np.ascontiguousarray(values)).cast("B"))
    return out
