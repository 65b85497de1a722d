"""Neural functional transformers: the NFT block, a model builder, and output heads."""

from __future__ import annotations

import torch
from torch import nn

from nfopt.nn.attention import WeightSpaceAttention
from nfopt.nn.encoding import FourierIOEncoding, LearnedIOEmbedding
from nfopt.nn.pointwise import ChannelLayerNorm, NFActivation, NFDropout, Pointwise
from nfopt.nn.pool import HNPPool, NPPool
from nfopt.weightspace import NetworkSpec, WeightSpaceFeatures

__all__ = ["EquivariantHead", "InvariantHead", "NFTBlock", "NFTEncoder", "build_nft"]


class NFTBlock(nn.Module):
    """Pre-norm residual transformer block over weight space (shapes unchanged, ``C`` channels):

    ``x = x + Attn(LN(x))``, then ``x = x + FF(LN(x))`` with ``FF = Pointwise(C, mC) -> GELU ->
    Pointwise(mC, C)``, where ``Attn`` is :class:`WeightSpaceAttention` and ``LN`` normalises each
    entry's channel vector. Equivariant to permutations of every neuron layer."""

    def __init__(
        self, spec: NetworkSpec, channels: int, num_heads: int, ff_mult: int = 4, dropout: float = 0.0
    ) -> None:
        super().__init__()
        self.in_channels = channels
        self.norm1 = ChannelLayerNorm(spec, channels)
        self.attn = WeightSpaceAttention(spec, channels, num_heads, dropout)
        self.norm2 = ChannelLayerNorm(spec, channels)
        self.ff = nn.Sequential(
            Pointwise(spec, channels, ff_mult * channels),
            NFActivation(nn.functional.gelu),
            NFDropout(dropout),
            Pointwise(spec, ff_mult * channels, channels),
        )

    def forward(self, x: WeightSpaceFeatures) -> WeightSpaceFeatures:
        x = x + self.attn(self.norm1(x))
        return x + self.ff(self.norm2(x))


class NFTEncoder(nn.Module):
    """IO encoding, input projection to ``channels`` and a stack of :class:`NFTBlock`.

    ``io_encoding``: ``"learned"`` (:class:`LearnedIOEmbedding` after the projection),
    ``"fourier"`` (:class:`FourierIOEncoding` channels before it) — both make the encoder
    equivariant to *hidden* permutations only, as real networks are — or ``None`` (equivariant
    to every neuron permutation). ``(B, C_in, ...) -> (B, channels, ...)``."""

    def __init__(
        self,
        spec: NetworkSpec,
        in_channels: int,
        channels: int,
        num_blocks: int,
        num_heads: int,
        io_encoding: str | None = "learned",
        ff_mult: int = 4,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if io_encoding not in ("learned", "fourier", None):
            raise ValueError(f"io_encoding={io_encoding!r}: use 'learned', 'fourier' or None")
        self.spec, self.in_channels, self.channels = spec, in_channels, channels
        layers: list[nn.Module] = []
        c = in_channels
        if io_encoding == "fourier":
            enc = FourierIOEncoding(spec, in_channels)
            layers.append(enc)
            c = enc.out_channels
        layers.append(Pointwise(spec, c, channels))
        if io_encoding == "learned":
            layers.append(LearnedIOEmbedding(spec, channels))
        layers += [NFTBlock(spec, channels, num_heads, ff_mult, dropout) for _ in range(num_blocks)]
        self.layers = nn.Sequential(*layers)

    def forward(self, x: WeightSpaceFeatures) -> WeightSpaceFeatures:
        return self.layers(x)


class EquivariantHead(nn.Module):
    """``LN -> Pointwise(C, out_channels)``: per-entry outputs, e.g. parameter updates or edits."""

    def __init__(self, spec: NetworkSpec, channels: int, out_channels: int) -> None:
        super().__init__()
        self.in_channels = channels
        self.norm = ChannelLayerNorm(spec, channels)
        self.proj = Pointwise(spec, channels, out_channels)

    def forward(self, x: WeightSpaceFeatures) -> WeightSpaceFeatures:
        return self.proj(self.norm(x))


class InvariantHead(nn.Module):
    """``LN -> HNPPool (or NPPool) -> MLP``: ``(B, C, ...) -> (B, out_features)``."""

    def __init__(
        self, spec: NetworkSpec, channels: int, out_features: int, hidden: int = 256, pool: str = "hnp"
    ) -> None:
        super().__init__()
        if pool not in ("hnp", "np"):
            raise ValueError(f"pool={pool!r}: use 'hnp' or 'np'")
        self.in_channels = channels
        self.norm = ChannelLayerNorm(spec, channels)
        self.pool = HNPPool(spec) if pool == "hnp" else NPPool(spec)
        self.mlp = nn.Sequential(
            nn.Linear(self.pool.out_features(channels), hidden), nn.GELU(), nn.Linear(hidden, out_features)
        )

    def forward(self, x: WeightSpaceFeatures) -> torch.Tensor:
        return self.mlp(self.pool(self.norm(x)))


def build_nft(
    spec: NetworkSpec,
    in_channels: int,
    *,
    channels: int = 32,
    num_blocks: int = 2,
    num_heads: int = 4,
    out_channels: int | None = None,
    out_features: int | None = None,
    io_encoding: str | None = "learned",
    pool: str = "hnp",
    ff_mult: int = 4,
    dropout: float = 0.0,
) -> nn.Sequential:
    """An NFT: :class:`NFTEncoder` then an :class:`EquivariantHead` (``out_channels``, returns
    features) or an :class:`InvariantHead` (``out_features``, returns ``(B, out_features)``)."""
    if (out_channels is None) == (out_features is None):
        raise ValueError("build_nft needs exactly one of out_channels (equivariant) or out_features (invariant)")
    encoder = NFTEncoder(spec, in_channels, channels, num_blocks, num_heads, io_encoding, ff_mult, dropout)
    if out_channels is not None:
        head: nn.Module = EquivariantHead(spec, channels, out_channels)
    else:
        head = InvariantHead(spec, channels, out_features, pool=pool)
    model = nn.Sequential(encoder, head)
    model.in_channels = in_channels
    return model
