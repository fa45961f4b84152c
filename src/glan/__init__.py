"""glan: GLAN instruction-tuning data almost from scratch.

The Python API is the CLI's, one function a command::

    import glan
    config = glan.GenerateConfig(disciplines=["Mathematics"], model="gpt-4o-mini")
    glan.estimate(config)                 # what it will ask for and cost
    glan.generate(config, "runs/demo")    # run or resume
    glan.curate("runs/demo")
    glan.export("runs/demo", format="messages", to="jsonl")
    glan.report("runs/demo")
    glan.judge("runs/demo", config.model_copy(update={"judge": True, "verify": 4}))
    glan.evaluate("runs/demo", glan.Side("http://localhost:8001/v1"),
                  glan.Side("http://localhost:8002/v1"), config)   # GLAN-Test
    glan.train("runs/demo/export/messages-jsonl", "Qwen/Qwen2.5-0.5B", "models/demo")  # glan[train]
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from glan.api import RunStatus, agenerate, generate, status
    from glan.api import plan as estimate
    from glan.config import GenerateConfig
    from glan.curation import CurateConfig, curate
    from glan.loop import TrainSettings, train
    from glan.loop.eval import Side, evaluate
    from glan.publish.export import export
    from glan.publish.report import report
    from glan.quality import judge

# Each name is imported when first used: a process that needs one corner of glan (a curation
# worker, say) does not pay for importing all of it (aiohttp, pydantic models, the engines).
_WHERE = {
    "CurateConfig": ("glan.curation", "CurateConfig"),
    "GenerateConfig": ("glan.config", "GenerateConfig"),
    "RunStatus": ("glan.api", "RunStatus"),
    "Side": ("glan.loop.eval", "Side"),
    "agenerate": ("glan.api", "agenerate"),
    "curate": ("glan.curation", "curate"),
    "estimate": ("glan.api", "plan"),
    "evaluate": ("glan.loop.eval", "evaluate"),
    "export": ("glan.publish.export", "export"),
    "generate": ("glan.api", "generate"),
    "judge": ("glan.quality", "judge"),
    "report": ("glan.publish.report", "report"),
    "status": ("glan.api", "status"),
    "train": ("glan.loop", "train"),
    "TrainSettings": ("glan.loop", "TrainSettings"),
}


def __getattr__(name: str) -> Any:
    try:
        module, attribute = _WHERE[name]
    except KeyError:
        raise AttributeError(f"module 'glan' has no attribute {name!r}") from None
    value = getattr(importlib.import_module(module), attribute)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_WHERE})


__all__ = [
    "CurateConfig",
    "GenerateConfig",
    "RunStatus",
    "Side",
    "TrainSettings",
    "agenerate",
    "curate",
    "estimate",
    "evaluate",
    "export",
    "generate",
    "judge",
    "report",
    "status",
    "train",
]
