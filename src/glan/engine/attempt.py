"""One stage's work on one item, as every engine runs it."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from glan.costs.budget import CapReached
from glan.items import Item
from glan.llm.errors import FatalLLMError, LLMError
from glan.run.store import StoreError
from glan.stages import Stage
from glan.stages.base import Teacher

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Outcome:
    result: Any = None
    error: str | None = None  # why the item failed; it is recorded and retried by the next run


async def attempt(stage: Stage, node: Item, parent: Item, teacher: Teacher) -> Outcome:
    """The item's result, or why it failed. What no retry can fix (a bad key, an unreachable
    server: FatalLLMError; a store that cannot be written: StoreError) is raised, as the whole
    run must stop; so is CapReached (the item is not failed: it waits for a run with a higher
    cap)."""
    try:
        return Outcome(result=await stage.run(node, parent, teacher))
    except (FatalLLMError, CapReached, StoreError):
        raise
    except LLMError as error:
        return Outcome(error=str(error))
    except Exception as error:  # a bug in a stage must not take the whole run down
        log.exception("stage %s failed on %s", stage.name, node.id)
        return Outcome(error=f"internal error: {error.__class__.__name__}: {error}")
