"""Meta-training: inner problems, meta-gradient estimators, and the learner (no Ray here)."""

from nfopt.meta.estimators import ES, ESTIMATORS, PES, Estimator, TruncatedBackprop
from nfopt.meta.learner import Learner, LocalPool, Worker, atomic_save
from nfopt.meta.problems import InnerProblem, QuadraticProblem, TaskProblem

__all__ = [
    "ES",
    "ESTIMATORS",
    "PES",
    "Estimator",
    "InnerProblem",
    "Learner",
    "LocalPool",
    "QuadraticProblem",
    "TaskProblem",
    "TruncatedBackprop",
    "Worker",
    "atomic_save",
]
