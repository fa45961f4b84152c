"""What the batch client must keep so that paid-for work outlives the process: the contract.

A run keeps these records in its store (``glan.run.batches.SqliteBatchRecords``); the LLM layer
knows only this face, because the store itself depends on the LLM layer's types.

A batch is numbered by the records when its requests are written, before anything is uploaded;
its provider id comes later, and may never come (a kill between the upload and the creation).
Every call that writes is durable when it returns: the client writes each step before the next
paid-for one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from glan.llm.types import ChatResponse

Origin = tuple[str, str]  # (stage, item id) that asked, kept for diagnosis


@dataclass(frozen=True)
class Unconfirmed:
    """A batch whose requests were written but whose creation was never recorded."""

    batch: int
    input_file_id: str | None  # None: killed before the upload finished


@dataclass(frozen=True)
class Collected:
    """What a finished batch gave, sorted by what happens next to each request key."""

    status: str  # the provider's final status
    output_file_id: str | None
    error_file_id: str | None
    error: str | None  # why the batch as a whole failed, if it did
    done: list[tuple[str, ChatResponse]]  # replies: kept until the engine saves them as calls
    failed: list[tuple[str, str]]  # (key, why): rejected by the provider, not worth another batch
    again: dict[str, str]  # key -> why: no output yet, to be sent in another batch


class BatchRecords(Protocol):
    # What a call raises when the records cannot be kept (a full disk): the client hands these to
    # the requests' callers as they are, an expected failure rather than a bug.
    errors: tuple[type[Exception], ...]

    # -- asked --------------------------------------------------------------------------------

    def unconfirmed(self) -> list[Unconfirmed]:
        """Batches to settle on start: requests written, provider id unknown."""
        ...

    def open_batch_of(self, key: str) -> tuple[int, str] | None:
        """(batch, provider id) of a created, not yet collected batch holding ``key``."""
        ...

    def kept_result(self, key: str) -> ChatResponse | None:
        """A collected reply not yet saved as a call."""
        ...

    def keys(self, batch: int) -> list[str]:
        """The request keys of a batch."""
        ...

    def submitted_at(self, batch: int) -> float:
        """When the batch's requests were written (epoch seconds)."""
        ...

    # -- told ---------------------------------------------------------------------------------

    def new_batch(self, model: str, requests: list[tuple[str, Origin | None]]) -> int:
        """Write a batch about to be uploaded, with its (key, origin) requests; its number."""
        ...

    def uploaded(self, batch: int, file_id: str) -> None: ...

    def created(self, batch: int, provider_id: str, status: str) -> None: ...

    def abandon(self, batch: int) -> None:
        """The batch was never created: nothing to poll, its requests are to be sent again."""
        ...

    def progress(self, batch: int, status: str, completed: int, failed: int) -> None:
        """What the provider said of a running batch."""
        ...

    def collected(self, batch: int, results: Collected) -> None:
        """Keep a finished batch's outcome, replies included, in one durable step."""
        ...

    def forget_saved(self) -> None:
        """Drop kept replies that the engine has saved as calls since."""
        ...
