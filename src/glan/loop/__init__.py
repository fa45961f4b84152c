"""Close the loop: train a model on a glan export, then judge it the GLAN way.

``train`` (``glan train``): supervised fine-tuning with TRL on an export, loss on the assistant
turns only, the paper's settings by default; its schedule is in ``glan.loop.schedule``, the
trainer in ``glan.loop.trainer``, the model directory and its record in ``glan.loop.record``.
The model side lives here so the generator's install stays light: everything it imports comes
with ``pip install "glan[train]"`` and is imported only when a model is trained.

GLAN-Test (``glan eval``: two models' answers on the held-out split, judged pairwise) is in
``glan.loop.eval``, its workflow in ``glan.loop.eval_stages``.
"""

from glan.loop.errors import TrainError
from glan.loop.record import TrainResult
from glan.loop.schedule import TrainSettings
from glan.loop.train import train

__all__ = ["TrainError", "TrainResult", "TrainSettings", "train"]
