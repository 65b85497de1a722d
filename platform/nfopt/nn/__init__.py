"""Neural-functional layers over weight space."""

from nfopt.nn.linear import HNPLinear, NPLinear, fused_backward

__all__ = ["HNPLinear", "NPLinear", "fused_backward"]
