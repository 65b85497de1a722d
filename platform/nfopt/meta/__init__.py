"""Meta-training: inner problems, meta-gradient estimators, and the learner (no Ray here)."""

from nfopt.meta.estimators import ES, ESTIMATORS, PES, EpisodeES, Estimator, EstimatorKind, TruncatedBackprop
from nfopt.meta.learner import Learner, LocalPool, Worker, WorkerPool, atomic_save
from nfopt.meta.messages import Estimate, TaskEstimate
from nfopt.meta.problems import InnerProblem, QuadraticProblem, TaskProblem

__all__ = [
    "ES",
    "ESTIMATORS",
    "PES",
    "EpisodeES",
    "Estimate",
    "Estimator",
    "EstimatorKind",
    "InnerProblem",
    "Learner",
    "LocalPool",
    "QuadraticProblem",
    "TaskEstimate",
    "TaskProblem",
    "TruncatedBackprop",
    "Worker",
    "WorkerPool",
    "atomic_save",
]
