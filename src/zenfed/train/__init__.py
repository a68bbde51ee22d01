"""Local training and evaluation, the same code for participants and baselines."""

from zenfed.train.evaluate import EvalResult, combine, evaluate
from zenfed.train.trainer import LocalResult, StepPlan, plan_steps, train_local

__all__ = [
    "EvalResult",
    "LocalResult",
    "StepPlan",
    "combine",
    "evaluate",
    "plan_steps",
    "train_local",
]
