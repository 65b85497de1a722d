"""nfopt: learned optimizers built from permutation-equivariant neural functionals."""

from nfopt.weightspace import NetworkSpec, Permutation, WeightSpaceFeatures


def __getattr__(name: str):
    # learned-optimizer entry points, imported on first use (keeps `import nfopt` light)
    if name in ("LearnedOptimizer", "load_optimizer", "save_optimizer"):
        from nfopt import lopt

        return getattr(lopt, name)
    raise AttributeError(f"module 'nfopt' has no attribute {name!r}")


__all__ = [
    "LearnedOptimizer",
    "NetworkSpec",
    "Permutation",
    "WeightSpaceFeatures",
    "__version__",
    "load_optimizer",
    "save_optimizer",
]
__version__ = "0.1.0"
