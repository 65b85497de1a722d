"""Neural-functional layers over weight space.

Equivariant: :class:`NPLinear` (all neuron permutations), :class:`HNPLinear` (hidden only);
:func:`fuse_relu` folds the ReLU after each into it,
per-entry :class:`Pointwise`, :class:`NFActivation`, :class:`NFDropout`,
:class:`ChannelLayerNorm`, :class:`ChannelBatchNorm`, :class:`LearnedScale`. Invariant:
:class:`NPPool`, :class:`HNPPool`.
IO encodings: :class:`LearnedIOEmbedding`, :class:`FourierIOEncoding`.
Transformers (NFT): :class:`WeightSpaceAttention`, :class:`NFTBlock`, :class:`NFTEncoder`,
:func:`build_nft` with :class:`EquivariantHead` / :class:`InvariantHead`; Inr2Array:
:class:`Inr2ArrayEncoder`, :class:`Inr2ArrayDecoder`, :class:`Inr2ArrayAutoencoder`.
DWSNets (Navon et al.): :class:`DWSNet`, :class:`DWSClassifier`.
Architecture-agnostic (one instance for any depth/width/kernel; for learned optimizers):
:class:`SharedNPLinear`, :class:`SharedPointwise`, :class:`SharedChannelNorm`,
:class:`SharedWeightSpaceAttention`.
"""

from nfopt.nn.attention import WeightSpaceAttention, attention_fp32
from nfopt.nn.dws import ChannelBatchNorm, DWSClassifier, DWSNet
from nfopt.nn.encoding import FourierIOEncoding, LearnedIOEmbedding
from nfopt.nn.inr2array import GaussianFourierFeatures, Inr2ArrayAutoencoder, Inr2ArrayDecoder, Inr2ArrayEncoder
from nfopt.nn.linear import HNPLinear, NPLinear, fuse_relu, fused_backward
from nfopt.nn.nft import EquivariantHead, InvariantHead, NFTBlock, NFTEncoder, build_nft
from nfopt.nn.pointwise import ChannelLayerNorm, LearnedScale, NFActivation, NFDropout, Pointwise
from nfopt.nn.pool import HNPPool, NPPool
from nfopt.nn.shared import (
    PerTensor,
    SharedChannelNorm,
    SharedGlobalInput,
    SharedNPLinear,
    SharedPointwise,
    SharedWeightSpaceAttention,
    layer_roles,
)

__all__ = [
    "ChannelBatchNorm",
    "ChannelLayerNorm",
    "DWSClassifier",
    "DWSNet",
    "EquivariantHead",
    "FourierIOEncoding",
    "GaussianFourierFeatures",
    "HNPLinear",
    "HNPPool",
    "Inr2ArrayAutoencoder",
    "Inr2ArrayDecoder",
    "Inr2ArrayEncoder",
    "InvariantHead",
    "LearnedIOEmbedding",
    "LearnedScale",
    "NFActivation",
    "NFDropout",
    "NFTBlock",
    "NFTEncoder",
    "NPLinear",
    "NPPool",
    "PerTensor",
    "Pointwise",
    "SharedChannelNorm",
    "SharedGlobalInput",
    "SharedNPLinear",
    "SharedPointwise",
    "SharedWeightSpaceAttention",
    "WeightSpaceAttention",
    "attention_fp32",
    "build_nft",
    "fuse_relu",
    "fused_backward",
    "layer_roles",
]
