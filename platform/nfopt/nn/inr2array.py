"""Inr2Array (NFT paper): a permutation-invariant latent array from the weights of an INR, and
the hypernetwork decoder that turns latents back into INR weights."""

from __future__ import annotations

import math

import torch
from torch import nn

from nfopt.inr import render
from nfopt.nn._layout import fold_weight
from nfopt.nn.attention import attention_fp32
from nfopt.nn.encoding import LearnedIOEmbedding
from nfopt.nn.nft import NFTBlock
from nfopt.nn.pointwise import Pointwise
from nfopt.weightspace import NetworkSpec, WeightSpaceFeatures

__all__ = ["GaussianFourierFeatures", "Inr2ArrayAutoencoder", "Inr2ArrayDecoder", "Inr2ArrayEncoder"]

Tensor = torch.Tensor


class GaussianFourierFeatures(nn.Module):
    """Per-entry Gaussian Fourier features of values: ``x -> [x, sin(2π x B), cos(2π x B)]`` with a
    fixed ``B ~ N(0, scale²)`` of shape ``(C, m)``: ``(B, C, ...) -> (B, C (1 + 2m), ...)``."""

    def __init__(self, in_channels: int, num_features: int = 16, scale: float = 3.0, seed: int = 0) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        self.register_buffer("freqs", scale * torch.randn(in_channels, num_features, generator=gen))
        self.in_channels, self.out_channels = in_channels, in_channels * (1 + 2 * num_features)

    def _one(self, t: Tensor) -> Tensor:
        shape = (1, *self.freqs.shape) + (1,) * (t.ndim - 2)
        ang = 2 * math.pi * t.unsqueeze(2) * self.freqs.to(t.dtype).view(shape)  # (B, C, m, ...)
        feats = torch.cat([ang.sin(), ang.cos()], dim=2).flatten(1, 2)
        return torch.cat([t, feats], dim=1)

    def forward(self, x: WeightSpaceFeatures) -> WeightSpaceFeatures:
        return x.map(self._one)


class _CrossAttention(nn.Module):
    """Multi-head attention of ``(B, Q, D)`` queries over ``(B, T, D)`` tokens (fp32 scores)."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"latent_dim={dim} must be a multiple of num_heads={num_heads}")
        self.h = num_heads
        self.q, self.k, self.v, self.o = (nn.Linear(dim, dim) for _ in range(4))

    def forward(self, queries: Tensor, tokens: Tensor) -> Tensor:
        b, nq, dim = queries.shape
        h, dh = self.h, dim // self.h
        q = self.q(queries).view(b, nq, h, dh).transpose(1, 2)  # (B, H, Q, dh)
        k = self.k(tokens).view(b, -1, h, dh).transpose(1, 2)  # (B, H, T, dh)
        v = self.v(tokens).view(b, -1, h, dh).transpose(1, 2)
        return self.o(attention_fp32(q, k, v).transpose(1, 2).reshape(b, nq, dim))


class _LatentBlock(nn.Module):
    """``z = z + CrossAttn(LN(z), LN(tokens))``; ``z = z + MLP(LN(z))``."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.nq, self.nt, self.nf = nn.LayerNorm(dim), nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = _CrossAttention(dim, num_heads)
        self.ff = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))

    def forward(self, z: Tensor, tokens: Tensor) -> Tensor:
        z = z + self.attn(self.nq(z), self.nt(tokens))
        return z + self.ff(self.nf(z))


class Inr2ArrayEncoder(nn.Module):
    """Weights of INRs ``(B, C_in, ...)`` -> latent array ``(B, M, D)``, invariant to permutations
    of the INR's hidden neurons.

    Gaussian Fourier features of every weight, a projection to ``channels``, learned per-tensor
    (layer) embeddings and IO-neuron position embeddings, ``num_blocks`` NFT blocks, then
    ``M`` learned latent queries cross-attend over all weight and bias entries as tokens (each
    projected to ``D`` by its tensor's own map). A permutation of hidden neurons only reorders the
    token set, which cross-attention does not see.
    """

    def __init__(
        self,
        spec: NetworkSpec,
        in_channels: int = 1,
        num_latents: int = 16,
        latent_dim: int = 64,
        channels: int = 32,
        num_blocks: int = 2,
        num_heads: int = 4,
        fourier_features: int = 16,
        fourier_scale: float = 3.0,
        dropout: float = 0.0,
        input_scale: list[float] | None = None,
    ) -> None:
        super().__init__()
        self.spec, self.in_channels = spec, in_channels
        # per-tensor divisors (w_1, b_1, w_2, ...), e.g. the dataset's stds, so that the Fourier
        # features see every tensor at unit scale; None: raw values
        scale = torch.ones(2 * spec.num_layers) if input_scale is None else torch.tensor(input_scale)
        if scale.shape != (2 * spec.num_layers,):
            raise ValueError(f"input_scale: need {2 * spec.num_layers} values (w_1, b_1, w_2, ...), got {len(scale)}")
        self.register_buffer("input_scale", scale.float())
        self.num_latents, self.latent_dim = num_latents, latent_dim
        self.fourier = GaussianFourierFeatures(in_channels, fourier_features, fourier_scale)
        self.proj = Pointwise(spec, self.fourier.out_channels, channels)
        self.layer_embed = nn.Parameter(0.02 * torch.randn(2 * spec.num_layers, channels))
        self.io_embed = LearnedIOEmbedding(spec, channels, init_std=0.02)
        self.blocks = nn.Sequential(*(NFTBlock(spec, channels, num_heads, dropout=dropout) for _ in range(num_blocks)))
        self.to_tokens = nn.ModuleList(
            nn.Linear(k * channels, latent_dim) for k in (*spec.kernel_sizes, *([1] * spec.num_layers))
        )
        self.latents = nn.Parameter(torch.randn(num_latents, latent_dim) / math.sqrt(latent_dim))
        self.cross = _LatentBlock(latent_dim, num_heads)

    def tokens(self, x: WeightSpaceFeatures) -> Tensor:
        """All weight and bias entries after the NFT blocks, as ``(B, T, D)`` tokens."""
        x = x.scale_tensors(1 / self.input_scale)
        h = self.proj(self.fourier(x))
        e = self.layer_embed
        L = self.spec.num_layers
        h = WeightSpaceFeatures(
            [w + e[i].view(1, -1, *([1] * (w.ndim - 2))) for i, w in enumerate(h.weights)],
            [b + e[L + i].view(1, -1, 1) for i, b in enumerate(h.biases)],
        )
        h = self.blocks(self.io_embed(h))
        toks = []
        for i, w in enumerate(h.weights):
            f = fold_weight(w, False, False)  # (B, k C, n_i, n_{i-1})
            toks.append(self.to_tokens[i](f.flatten(2).transpose(1, 2)))  # (B, n_i n_{i-1}, D)
        for i, b in enumerate(h.biases):
            toks.append(self.to_tokens[L + i](b.transpose(1, 2)))  # (B, n_i, D)
        return torch.cat(toks, dim=1)

    def forward(self, x: WeightSpaceFeatures) -> Tensor:
        tokens = self.tokens(x)
        z = self.latents.expand(x.batch_size, -1, -1)
        return self.cross(z, tokens)  # (B, M, D)


class Inr2ArrayDecoder(nn.Module):
    """Hypernetwork: latents ``(B, M, D)`` -> INR weights as ``C=1`` features.

    Every parameter entry has a query (a sum of learned embeddings of its tensor, row neuron,
    column neuron and kernel position) that cross-attends over the latents; a linear readout
    gives a correction added to ``base`` (a learned weight space, initialised from ``base`` or
    zeros). The correction head starts at zero, so an untrained decoder returns ``base``.
    """

    def __init__(
        self,
        spec: NetworkSpec,
        latent_dim: int = 64,
        num_heads: int = 4,
        base: WeightSpaceFeatures | None = None,
        out_scale: float = 0.1,
    ) -> None:
        super().__init__()
        self.spec, self.out_scale = spec, out_scale
        L, d = spec.num_layers, latent_dim
        self.tensor_embed = nn.Parameter(0.02 * torch.randn(2 * L, d))
        self.row_embed = nn.ParameterList(nn.Parameter(0.02 * torch.randn(s[0], d)) for s in spec.weight_shapes)
        self.col_embed = nn.ParameterList(nn.Parameter(0.02 * torch.randn(s[1], d)) for s in spec.weight_shapes)
        self.kernel_embed = nn.ParameterList(nn.Parameter(0.02 * torch.randn(k, d)) for k in spec.kernel_sizes)
        self.block = _LatentBlock(d, num_heads)
        self.readout = nn.Linear(d, 1)
        nn.init.zeros_(self.readout.weight)
        nn.init.zeros_(self.readout.bias)
        flat = base.flatten()[0, 0].detach().clone() if base is not None else torch.zeros(spec.num_params)
        self.base = nn.Parameter(flat)

    def _queries(self) -> Tensor:
        """``(P, D)``: one query per parameter, in :meth:`WeightSpaceFeatures.flatten` order."""
        qs = []
        for i in range(self.spec.num_layers):
            q = (
                self.tensor_embed[i][None, None, None]
                + self.row_embed[i][:, None, None]
                + self.col_embed[i][None, :, None]
                + self.kernel_embed[i][None, None, :]
            )  # (n_out, n_in, k, D)
            qs.append(q.reshape(-1, q.shape[-1]))
            qs.append(self.tensor_embed[self.spec.num_layers + i][None] + self.row_embed[i])  # bias (n_out, D)
        return torch.cat(qs, dim=0)

    def forward(self, latents: Tensor) -> WeightSpaceFeatures:
        b = latents.shape[0]
        q = self._queries().expand(b, -1, -1)
        delta = self.readout(self.block(q, latents)).squeeze(-1)  # (B, P)
        return WeightSpaceFeatures.from_flat(self.base + self.out_scale * delta, self.spec)


class Inr2ArrayAutoencoder(nn.Module):
    """Encoder + decoder trained to reconstruct what an INR *renders* (not its weights, which are
    only defined up to hidden permutations): ``loss = mean (render(dec(enc(x))) - render(x))²``."""

    def __init__(self, encoder: Inr2ArrayEncoder, decoder: Inr2ArrayDecoder, w0: float = 30.0) -> None:
        super().__init__()
        self.encoder, self.decoder, self.w0 = encoder, decoder, w0

    def forward(self, x: WeightSpaceFeatures) -> tuple[Tensor, WeightSpaceFeatures]:
        z = self.encoder(x)
        return z, self.decoder(z)

    def reconstruction_loss(self, x: WeightSpaceFeatures, coords: Tensor) -> Tensor:
        _, recon = self(x)
        with torch.no_grad():
            target = render(x, coords, self.w0)
        return (render(recon, coords, self.w0) - target).square().mean()
