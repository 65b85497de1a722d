"""DWSNets (Navon et al., "Equivariant Architectures for Learning in Deep Weight Spaces", 2023).

A DWS layer is a linear map of an MLP's weight space equivariant to permutations of its hidden
neurons; the paper characterises all of them (weight-to-weight, weight-to-bias, bias-to-weight
and bias-to-bias blocks, each a sum of pooling/broadcast terms). That space of maps is exactly
the one :class:`nfopt.nn.HNPLinear` spans with its complete, non-redundant basis (the NFN paper
shows the two characterisations coincide), so a DWS layer here *is* an ``HNPLinear``; what makes
a DWSNet is the architecture around it, which this module builds as the paper describes it:

- the input feature of each entry lifted to ``hidden`` channels by a DWS layer, then
  ``layers - 2`` hidden DWS layers, each preceded by ReLU, dropout and a per-tensor batch norm
  (:class:`ChannelBatchNorm`, the paper's ``BN``) and wrapped in a residual connection (the
  paper's layer skip), then ReLU, dropout and an output DWS layer;
- a per-entry linear skip from the input features to the output (the paper's input skip);
- for invariant tasks an invariant layer: means over the hidden-neuron axes (the first weight
  keeps its input axis, the last its output axis: :class:`nfopt.nn.HNPPool`) and a small MLP.

The paper's pooling inside the blocks may also be max or sum; the mean is used here (it keeps
the layer linear, as its characterisation is). Unlike the NFN paper's classifiers, the DWSNet
sees the raw (standardised) weights: no Fourier features of entries and no IO encodings.
"""

from __future__ import annotations

import torch
from torch import nn

from nfopt.nn.linear import HNPLinear
from nfopt.nn.pointwise import NFActivation, NFDropout, Pointwise
from nfopt.nn.pool import HNPPool
from nfopt.nn.symmetry import Symmetry
from nfopt.weightspace import NetworkSpec, WeightSpaceFeatures

__all__ = ["ChannelBatchNorm", "DWSClassifier", "DWSNet"]


class ChannelBatchNorm(nn.Module):
    """Batch normalisation of every weight and bias tensor over its channels: statistics over the
    batch and all of the tensor's entries, an affine per tensor and channel (DWSNets' ``BN``).
    Pooling over all entries makes it NP-equivariant. Shapes unchanged."""

    symmetry: Symmetry = "np"  # see nfopt.nn.symmetry

    def __init__(self, spec: NetworkSpec, channels: int, momentum: float = 0.1, eps: float = 1e-5) -> None:
        super().__init__()
        self.spec, self.channels = spec, channels
        self.norms = nn.ModuleList(nn.BatchNorm1d(channels, eps, momentum) for _ in range(2 * spec.num_layers))

    def forward(self, x: WeightSpaceFeatures) -> WeightSpaceFeatures:
        out = []
        for norm, t in zip(self.norms, x.tensors()):
            flat = t.reshape(t.shape[0], t.shape[1], -1)  # (B, C, entries)
            out.append(norm(flat).reshape(t.shape))
        return WeightSpaceFeatures(out[0::2], out[1::2])


class _Block(nn.Module):
    """ReLU, dropout, (batch norm), DWS layer: ``(B, C_in, ...) -> (B, C_out, ...)``."""

    def __init__(self, spec: NetworkSpec, c_in: int, c_out: int, dropout: float, batch_norm: bool) -> None:
        super().__init__()
        mods: list[nn.Module] = [NFActivation(), NFDropout(dropout)]
        if batch_norm:
            mods.append(ChannelBatchNorm(spec, c_in))
        mods.append(HNPLinear(spec, c_in, c_out))
        self.body = nn.Sequential(*mods)

    def forward(self, x: WeightSpaceFeatures) -> WeightSpaceFeatures:
        return self.body(x)


class DWSNet(nn.Module):
    """An equivariant DWSNet: ``(B, C_in, ...) -> (B, C_out, ...)``, equivariant to hidden-neuron
    permutations (``symmetry = "hnp"``). ``layers >= 2`` DWS layers in all: input lift, ``layers - 2``
    residual hidden blocks, output layer; plus the per-entry input skip when ``input_skip``."""

    symmetry: Symmetry = "hnp"  # see nfopt.nn.symmetry

    def __init__(
        self,
        spec: NetworkSpec,
        in_channels: int,
        hidden: int,
        out_channels: int,
        layers: int = 4,
        dropout: float = 0.0,
        batch_norm: bool = True,
        input_skip: bool = True,
    ) -> None:
        super().__init__()
        if layers < 2:
            raise ValueError(f"DWSNet layers={layers}: needs at least 2 (an input and an output DWS layer)")
        self.spec = spec
        self.lift = HNPLinear(spec, in_channels, hidden)
        self.blocks = nn.ModuleList(_Block(spec, hidden, hidden, dropout, batch_norm) for _ in range(layers - 2))
        self.out = _Block(spec, hidden, out_channels, dropout, batch_norm=False)
        self.skip = Pointwise(spec, in_channels, out_channels) if input_skip else None

    def forward(self, x: WeightSpaceFeatures) -> WeightSpaceFeatures:
        h = self.lift(x)  # (B, H, ...)
        for block in self.blocks:
            h = h + block(h)  # layer skip
        y = self.out(h)  # (B, C_out, ...)
        return y if self.skip is None else y + self.skip(x)


class DWSClassifier(nn.Module):
    """DWSNet for invariant tasks (e.g. INR classification): each tensor divided by ``scale`` (its
    dataset std), a :class:`DWSNet` to ``hidden`` channels, the invariant layer (hidden-axis means,
    :class:`HNPPool`) and an MLP head. ``(B, 1, ...) -> (B, classes)``; invariant to hidden-neuron
    permutations."""

    symmetry: Symmetry = "hnp"  # see nfopt.nn.symmetry

    def __init__(
        self,
        spec: NetworkSpec,
        hidden: int,
        layers: int,
        classes: int,
        scale: list[float] | None = None,
        dropout: float = 0.1,
        head_hidden: int = 256,
    ) -> None:
        super().__init__()
        self.body = DWSNet(spec, 1, hidden, hidden, layers, dropout)
        self.pool = HNPPool(spec)
        self.head = nn.Sequential(
            nn.Linear(self.pool.out_features(hidden), head_hidden),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(head_hidden, classes),
        )
        n = 2 * spec.num_layers
        self.register_buffer("scale", torch.tensor(scale if scale is not None else [1.0] * n))

    def forward(self, x: WeightSpaceFeatures) -> torch.Tensor:
        return self.head(self.pool(self.body(x.scale_tensors(1 / self.scale))))
