"""Held-out evaluation of optimizers against baselines tuned per task: the protocol (pure,
in-process; :mod:`nfopt.cluster.evaluate` runs its tasks as Ray tasks) and its reports."""

from nfopt.evaluation.protocol import (
    ADAM_LRS,
    BASELINES,
    EVAL_SEED0,
    SGD_LRS,
    TUNE_SEED0,
    EvalSettings,
    OptimizerResult,
    TaskResult,
    evaluate_suite,
    evaluate_task,
    train_population,
    tune_lr,
)
from nfopt.evaluation.report import print_table, speedup, summarize, win_fraction, write_report
from nfopt.evaluation.validation import ValidationSet

__all__ = [
    "ADAM_LRS",
    "BASELINES",
    "EVAL_SEED0",
    "SGD_LRS",
    "TUNE_SEED0",
    "EvalSettings",
    "OptimizerResult",
    "TaskResult",
    "ValidationSet",
    "evaluate_suite",
    "evaluate_task",
    "print_table",
    "speedup",
    "summarize",
    "train_population",
    "tune_lr",
    "win_fraction",
    "write_report",
]
