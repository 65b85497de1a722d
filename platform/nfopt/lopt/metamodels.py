"""Meta-models of learned optimizers: ``(P, F, ...)`` per-entry features and ``(P, T)`` global
features (or per-tensor ones, :class:`~nfopt.nn.PerTensor`) -> ``(P, outputs, ...)`` outputs
(direction, magnitude and, with 3 outputs, a log step size), for any MLP/CNN architecture. The
global features enter after the first linear layer (:class:`~nfopt.nn.SharedGlobalInput`). The
output head starts at zero, so an untrained learned optimizer follows its hand-designed
direction exactly."""

from __future__ import annotations

import torch
from torch import nn

from nfopt.nn import (
    FourierIOEncoding,
    NFActivation,
    PerTensor,
    SharedChannelNorm,
    SharedGlobalInput,
    SharedNPLinear,
    SharedPointwise,
    SharedWeightSpaceAttention,
    fused,
)
from nfopt.weightspace import WeightSpaceFeatures

__all__ = ["META_MODELS", "NFNMetaModel", "NFTMetaModel", "PerParamMLP", "build_meta_model"]


class PerParamMLP(nn.Module):
    """The per-parameter MLP (a Deep-Set over entries): the same MLP on every scalar's features,
    with separate maps for weights and biases. Equivariant to every permutation."""

    def __init__(
        self, in_features: int, global_features: int = 0, hidden: int = 32, layers: int = 2, outputs: int = 2
    ) -> None:
        super().__init__()
        self.first = SharedPointwise(in_features, hidden)
        self.glob = SharedGlobalInput(global_features, hidden) if global_features else None
        mods: list[nn.Module] = [NFActivation()]
        for _ in range(layers - 1):
            mods += [SharedPointwise(hidden, hidden), NFActivation()]
        mods.append(SharedPointwise(hidden, outputs, zero_init=True))
        self.rest = nn.Sequential(*mods)

    def forward(self, x: WeightSpaceFeatures, glob: torch.Tensor | PerTensor | None = None) -> WeightSpaceFeatures:
        out = self._fused(x, glob)
        if out is not None:
            return out
        h = self.first(x)
        return self.rest(self.glob(h, glob) if self.glob is not None else h)

    def _fused(self, x: WeightSpaceFeatures, glob: torch.Tensor | PerTensor | None) -> WeightSpaceFeatures | None:
        """The same function through the fused per-entry kernel (:func:`nfopt.nn.fused.entry_mlp`,
        inference on CPU), one call per tensor; ``None`` where it does not apply."""
        acts = self.rest[0::2]
        if not all(a.is_relu for a in acts) or not fused.applies(x.weights[0], self.first.weight_map.weight):
            return None  # before the global terms: training θ (gradients) takes the layers every step
        n, lins = len(x), self.rest[1::2]
        if self.glob is not None:
            if glob is None:
                return None  # the layers' own error
            gws, gbs = self.glob.terms(glob, n)
        else:
            bsz = x.weights[0].shape[0]
            gws = gbs = [x.weights[0].new_zeros(bsz, self.first.out_channels)] * n
        out = []
        for t, g, role in [(w, g, "weight_map") for w, g in zip(x.weights, gws)] + [
            (b, g, "bias_map") for b, g in zip(x.biases, gbs)
        ]:
            first = getattr(self.first, role)
            layers = [(getattr(m, role).weight, getattr(m, role).bias) for m in lins]
            y = fused.entry_mlp(t, first.weight, g + first.bias, layers)
            if y is None:
                return None
            out.append(y)
        return WeightSpaceFeatures(out[:n], out[n:])


class NFNMetaModel(nn.Module):
    """NFN meta-model: ``layers`` shared NP layers with ReLU between. ``kind="np"`` is equivariant
    to every neuron permutation; ``kind="hnp"`` first appends sinusoidal IO-position channels
    (width-agnostic), so it tells input/output neurons apart and is equivariant to hidden ones.

    ``pointwise = k > 0`` inserts ``k`` per-entry hidden layers (``channels -> channels``, each
    followed by the activation) before the output layer: the per-entry depth of the per-parameter
    MLP, with the NP layers' pooled row/column/layer terms around it. ``layers=2, pointwise=1`` is
    the per-parameter MLP's shape (first layer, one hidden layer, head) whose first layer and head
    are NP layers, so the per-parameter MLP is the special case with every pooled term zero."""

    def __init__(
        self,
        in_features: int,
        global_features: int = 0,
        channels: int = 16,
        layers: int = 3,
        kind: str = "np",
        outputs: int = 2,
        pointwise: int = 0,
    ) -> None:
        super().__init__()
        if pointwise < 0:
            raise ValueError(f"pointwise={pointwise}: must be >= 0")
        if kind not in ("np", "hnp"):
            raise ValueError(f"kind={kind!r}: use 'np' or 'hnp'")
        if layers < 2:
            raise ValueError(f"layers={layers}: an NFN meta-model needs at least 2 layers")
        c = in_features
        self.enc = FourierIOEncoding(None, c, num_bands=2) if kind == "hnp" else None
        if self.enc is not None:
            c = self.enc.out_channels
        self.first = SharedNPLinear(c, channels)
        self.glob = SharedGlobalInput(global_features, channels) if global_features else None
        mods: list[nn.Module] = [NFActivation()]
        for _ in range(layers - 2):
            mods += [SharedNPLinear(channels, channels), NFActivation()]
        for _ in range(pointwise):
            mods += [SharedPointwise(channels, channels), NFActivation()]
        mods.append(SharedNPLinear(channels, outputs, zero_init=True))
        self.rest = nn.Sequential(*mods)

    def forward(self, x: WeightSpaceFeatures, glob: torch.Tensor | PerTensor | None = None) -> WeightSpaceFeatures:
        terms = self.glob.terms(glob, len(x)) if self.glob is not None else None  # into the first layer's bias
        mods = [self.first, *self.rest]
        h = self.enc(x) if self.enc is not None else x
        i = 0
        while i < len(mods):
            m = mods[i]
            if isinstance(m, SharedNPLinear):
                # an NP layer followed by a ReLU runs as one (the activation in the layer's native store)
                relu = i + 1 < len(mods) and isinstance(mods[i + 1], NFActivation) and mods[i + 1].is_relu
                h = m(h, terms if i == 0 else None, relu=relu)
                i += 2 if relu else 1
            else:
                h, i = m(h), i + 1
        return h


class NFTMetaModel(nn.Module):
    """NFT meta-model: IO-position channels, a shared per-entry projection, ``blocks`` pre-norm
    blocks of shared weight-space attention and a GELU feed-forward, then a zero-initialised head.
    Equivariant to hidden-neuron permutations."""

    def __init__(
        self,
        in_features: int,
        global_features: int = 0,
        channels: int = 16,
        blocks: int = 2,
        heads: int = 4,
        outputs: int = 2,
    ) -> None:
        super().__init__()
        enc = FourierIOEncoding(None, in_features, num_bands=2)
        self.enc, self.proj = enc, SharedPointwise(enc.out_channels, channels)
        self.glob = SharedGlobalInput(global_features, channels) if global_features else None
        self.blocks = nn.ModuleList()
        for _ in range(blocks):
            self.blocks.append(
                nn.ModuleDict(
                    {
                        "n1": SharedChannelNorm(channels),
                        "attn": SharedWeightSpaceAttention(channels, heads),
                        "n2": SharedChannelNorm(channels),
                        "ff": nn.Sequential(
                            SharedPointwise(channels, 2 * channels),
                            NFActivation(nn.functional.gelu),
                            SharedPointwise(2 * channels, channels),
                        ),
                    }
                )
            )
        self.out = nn.Sequential(SharedChannelNorm(channels), SharedPointwise(channels, outputs, zero_init=True))

    def forward(self, x: WeightSpaceFeatures, glob: torch.Tensor | PerTensor | None = None) -> WeightSpaceFeatures:
        h = self.proj(self.enc(x))
        if self.glob is not None:
            h = self.glob(h, glob)
        for b in self.blocks:
            h = h + b["attn"](b["n1"](h))
            h = h + b["ff"](b["n2"](h))
        return self.out(h)


META_MODELS = {"mlp": PerParamMLP, "nfn_np": NFNMetaModel, "nfn_hnp": NFNMetaModel, "nft": NFTMetaModel}


def build_meta_model(kind: str, in_features: int, global_features: int = 0, **kwargs) -> nn.Module:
    """``kind``: ``"mlp"`` (per-parameter), ``"nfn_np"``, ``"nfn_hnp"`` or ``"nft"``."""
    if kind not in META_MODELS:
        raise ValueError(f"meta-model kind={kind!r}: choose one of {sorted(META_MODELS)}")
    if kind in ("nfn_np", "nfn_hnp"):
        kwargs = {**kwargs, "kind": kind[4:]}
    return META_MODELS[kind](in_features, global_features, **kwargs)
