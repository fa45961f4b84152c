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
"""

from glan.api import RunStatus, agenerate, generate, status
from glan.api import plan as estimate
from glan.config import GenerateConfig
from glan.curation import CurateConfig, curate
from glan.loop.eval import Side, evaluate
from glan.publish.export import export
from glan.publish.report import report
from glan.quality import judge

__all__ = [
    "CurateConfig",
    "GenerateConfig",
    "RunStatus",
    "Side",
    "agenerate",
    "curate",
    "estimate",
    "evaluate",
    "export",
    "generate",
    "judge",
    "report",
    "status",
]
