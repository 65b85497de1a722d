"""Weight-space types: network specs, permutations and per-entry features."""

from nfopt.weightspace.features import WeightSpaceFeatures
from nfopt.weightspace.modules import parse_module
from nfopt.weightspace.spec import NetworkSpec, Permutation

__all__ = ["NetworkSpec", "Permutation", "WeightSpaceFeatures", "parse_module"]
