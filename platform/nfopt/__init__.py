"""nfopt: learned optimizers built from permutation-equivariant neural functionals."""

from nfopt.weightspace import NetworkSpec, Permutation, WeightSpaceFeatures


def load_optimizer(path_or_uri):
    """A trained learned optimizer from a file or an MLflow artifact URI
    (``runs:/<run_id>/learned_optimizer.pt``); call it on ``model.parameters()``."""
    from nfopt import lopt

    ref = str(path_or_uri)
    if ref.startswith(("runs:/", "models:/", "mlflow-artifacts:")):
        from nfopt.track import download_artifact

        ref = download_artifact(ref)
    return lopt.load_optimizer(ref)


def __getattr__(name: str):
    # learned-optimizer entry points, imported on first use (keeps `import nfopt` light)
    if name in ("LearnedOptimizer", "save_optimizer"):
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
