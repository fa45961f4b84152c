"""What can go wrong talking to a teacher, sorted by what the engine must do about it."""

from __future__ import annotations


class LLMError(Exception):
    """Base of every teacher-side failure."""


class FatalLLMError(LLMError):
    """Nothing will work until the user changes something (key, URL, model): stop the run now."""


class RequestFailed(LLMError):
    """One request failed for good (retries spent, or rejected): its item is marked failed."""


class ParseError(LLMError):
    """A reply arrived but does not hold what the stage asked for; the engine may ask again."""
