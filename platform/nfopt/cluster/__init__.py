"""Ray: population workers as actors and the pool the learner steps (the only package that
imports ``ray``; nothing starts Ray on import)."""

from nfopt.cluster.pool import RayPool, init_ray

__all__ = ["RayPool", "init_ray"]
