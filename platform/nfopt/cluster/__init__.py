"""Ray: population workers as actors and the pool the learner steps (the only package that
imports ``ray``; nothing starts Ray on import)."""

from nfopt.cluster.pool import PopulationWorker, RayPool, init_ray

__all__ = ["PopulationWorker", "RayPool", "init_ray"]
