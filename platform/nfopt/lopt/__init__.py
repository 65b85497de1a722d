"""Optimizers for inner networks: hand-designed baselines (learned optimizers land here next)."""

from nfopt.lopt.baselines import SGD, Adam

__all__ = ["SGD", "Adam"]
