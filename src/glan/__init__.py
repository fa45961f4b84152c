"""glan: GLAN instruction-tuning data almost from scratch.

The Python API is the CLI's, one function a command::

    import glan
    config = glan.GenerateConfig(disciplines=["Mathematics"], model="gpt-4o-mini")
    glan.estimate(config)                 # what it will ask for and cost
    glan.generate(config, "runs/demo")    # run or resume
    glan.curate("runs/demo")
    glan.export("runs/demo", format="messages", to="jsonl")
    glan.report("runs/demo")
    glan.train("runs/demo/export/messages-jsonl", "Qwen/Qwen2.5-0.5B", "models/demo")  # glan[train]
"""

from glan.api import RunStatus, agenerate, generate, status
from glan.api import plan as estimate
from glan.config import GenerateConfig
from glan.curation import CurateConfig, curate
from glan.loop import TrainSettings, train
from glan.publish.export import export
from glan.publish.report import report

__all__ = [
    "CurateConfig",
    "GenerateConfig",
    "RunStatus",
    "TrainSettings",
    "agenerate",
    "curate",
    "estimate",
    "export",
    "generate",
    "report",
    "status",
    "train",
]
