"""nfopt: learned optimizers built from permutation-equivariant neural functionals."""

from nfopt._malloc import tune_allocator
from nfopt.weightspace import NetworkSpec, Permutation, WeightSpaceFeatures


def load_optimizer(name_or_path):
    """A trained learned optimizer by shipped name (:func:`list_pretrained`, e.g.
    ``"nfn_np_small"``), from a file, or from an MLflow artifact URI
    (``runs:/<run_id>/learned_optimizer.pt``); call it on ``model.parameters()``."""
    from pathlib import Path

    from nfopt import lopt
    from nfopt.lopt import pretrained

    ref = str(name_or_path)
    if ref.startswith(("runs:/", "models:/", "mlflow-artifacts:")):
        from nfopt.track import download_artifact

        ref = download_artifact(ref)
    elif not Path(ref).exists() and Path(ref).suffix != ".pt":
        try:
            return pretrained.load_pretrained(ref)
        except KeyError as err:  # names the shipped ones
            raise FileNotFoundError(f"{ref}: no such file, and {err.args[0]}") from None
    return lopt.load_optimizer(ref)


def list_pretrained() -> dict[str, str]:
    """``{name: description}`` of the learned optimizers shipped with nfopt (load with :func:`load_optimizer`)."""
    from nfopt.lopt.pretrained import list_pretrained as _list

    return _list()


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
    "list_pretrained",
    "load_optimizer",
    "save_optimizer",
    "tune_allocator",
]
__version__ = "0.1.0"
