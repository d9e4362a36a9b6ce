"""What each ``minivgg`` sub-command does (the argument parser is in cli.py).

    training.py     train (and --overfit-batch)
    evaluation.py   eval, predict
    tools.py        summary, gradcheck, bench
    explain.py      explain, and predict with ImageNet weights
    flags.py        the parser's checks of every option's value
"""

from minivgg.commands.common import UserError
from minivgg.commands.evaluation import evaluate, predict
from minivgg.commands.explain import explain
from minivgg.commands.tools import bench, gradcheck, summary
from minivgg.commands.training import train

__all__ = ["UserError", "train", "evaluate", "predict", "summary", "gradcheck", "bench",
           "explain"]
