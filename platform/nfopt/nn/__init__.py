"""Neural-functional layers over weight space.

Equivariant: :class:`NPLinear` (all neuron permutations), :class:`HNPLinear` (hidden only),
per-entry :class:`Pointwise`, :class:`NFActivation`, :class:`NFDropout`,
:class:`ChannelLayerNorm`, :class:`LearnedScale`. Invariant: :class:`NPPool`, :class:`HNPPool`.
IO encodings: :class:`LearnedIOEmbedding`, :class:`FourierIOEncoding`.
"""

from nfopt.nn.encoding import FourierIOEncoding, LearnedIOEmbedding
from nfopt.nn.linear import HNPLinear, NPLinear, fused_backward
from nfopt.nn.pointwise import ChannelLayerNorm, LearnedScale, NFActivation, NFDropout, Pointwise
from nfopt.nn.pool import HNPPool, NPPool

__all__ = [
    "ChannelLayerNorm",
    "FourierIOEncoding",
    "HNPLinear",
    "HNPPool",
    "LearnedIOEmbedding",
    "LearnedScale",
    "NFActivation",
    "NFDropout",
    "NPLinear",
    "NPPool",
    "Pointwise",
    "fused_backward",
]
