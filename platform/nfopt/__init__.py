"""nfopt: learned optimizers built from permutation-equivariant neural functionals."""

from nfopt.weightspace import NetworkSpec, Permutation, WeightSpaceFeatures

__all__ = ["NetworkSpec", "Permutation", "WeightSpaceFeatures", "__version__"]
__version__ = "0.1.0"
