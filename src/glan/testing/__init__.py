"""Test helpers: a fake OpenAI-compatible teacher served over real HTTP."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from glan.testing.fake_teacher import FakeTeacher

__all__ = ["FakeTeacher"]


def __getattr__(name: str) -> Any:
    # Imported lazily: an eager import would make `python -m glan.testing.fake_teacher` warn
    # that the module is already in sys.modules.
    if name == "FakeTeacher":
        from glan.testing.fake_teacher import FakeTeacher

        return FakeTeacher
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
