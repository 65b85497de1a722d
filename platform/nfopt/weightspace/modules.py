"""Reading MLP/CNN structure out of ``torch.nn`` modules.

Accepted: ``nn.Linear`` stacks (MLPs) and ``nn.Conv1d/2d/3d`` layers followed by global pooling
and ``nn.Linear`` layers (CNNs), with parameter-free modules in between (activations, local
pooling, flatten, dropout, parameter-free normalisation), also inside nested containers.
Layers are taken in registration order, which must be their execution order (always true for
``nn.Sequential``). Layers without a bias are supported: their bias slot reads as zeros and is
never written back.
"""

from __future__ import annotations

from torch import nn

__all__ = ["parse_module"]

_CONV = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_GLOBAL_POOL = (
    nn.AdaptiveAvgPool1d,
    nn.AdaptiveAvgPool2d,
    nn.AdaptiveAvgPool3d,
    nn.AdaptiveMaxPool1d,
    nn.AdaptiveMaxPool2d,
    nn.AdaptiveMaxPool3d,
)
# Parameter-free modules that mix or reorder channels break the weight-space symmetry.
_CHANNEL_MIXING = (nn.ChannelShuffle, nn.PixelShuffle, nn.PixelUnshuffle, nn.Bilinear)


def _is_global_pool(m: nn.Module) -> bool:
    size = m.output_size
    sizes = size if isinstance(size, tuple) else (size,)
    return all(s == 1 for s in sizes)


def parse_module(module: nn.Module) -> list[tuple[str, nn.Module]]:
    """The weight layers of ``module`` in order, as ``(qualified name, layer)``.

    Raises:
        ValueError: naming the offending submodule and why it does not fit the MLP/CNN weight
            space (a module with parameters or buffers that is not Linear/Conv, grouped or
            transposed convolutions, mismatched widths, a Conv after a Linear, a Linear after a
            Conv without global pooling, or no weight layer at all).
    """
    layers: list[tuple[str, nn.Module]] = []
    pooled = False  # a global pooling has been seen since the last conv
    for name, m in module.named_modules():
        where = f"submodule '{name or '<root>'}' ({type(m).__name__})"
        if isinstance(m, _CONV):
            if m.groups != 1:
                raise ValueError(f"{where}: grouped convolutions (groups={m.groups}) are not supported")
            if layers and isinstance(layers[-1][1], nn.Linear):
                raise ValueError(
                    f"{where} comes after Linear '{layers[-1][0]}': CNN weight spaces are "
                    "convolutions, then global pooling, then linear layers"
                )
            if layers and type(layers[-1][1]) is not type(m):
                raise ValueError(f"{where} follows {type(layers[-1][1]).__name__}: mixed conv dims")
            if layers and pooled:
                raise ValueError(f"{where} comes after a global pooling; convolutions must precede it")
        elif isinstance(m, nn.Linear):
            if layers and isinstance(layers[-1][1], _CONV) and not pooled:
                raise ValueError(
                    f"{where} follows convolution '{layers[-1][0]}' without global pooling; add "
                    "nn.AdaptiveAvgPool2d(1) (or the 1d/3d/max variant) and nn.Flatten() before it"
                )
        elif isinstance(m, _GLOBAL_POOL):
            if not _is_global_pool(m):
                raise ValueError(
                    f"{where}: output_size={m.output_size} is not global; only output size 1 keeps "
                    "the CNN weight space (channels become the linear layer's inputs)"
                )
            pooled = True
            continue
        elif isinstance(m, _CHANNEL_MIXING):
            raise ValueError(f"{where} mixes channels, which breaks the neuron permutation symmetry")
        else:
            own_params = list(m.named_parameters(recurse=False))
            own_buffers = [b for b, _ in m.named_buffers(recurse=False)]
            if own_params or own_buffers:
                what = ", ".join([p for p, _ in own_params] + own_buffers)
                raise ValueError(
                    f"{where} holds parameters/buffers ({what}); nfopt weight spaces contain only "
                    "Linear and Conv1d/2d/3d layers with parameter-free modules between them "
                    "(remove it, or use its affine-free, stats-free form)"
                )
            continue
        if layers:
            prev_name, prev = layers[-1]
            n_prev = prev.weight.shape[0]
            if m.weight.shape[1] != n_prev:
                raise ValueError(
                    f"{where} takes {m.weight.shape[1]} inputs but the previous layer "
                    f"'{prev_name}' has {n_prev} outputs"
                )
        layers.append((name, m))
        if isinstance(m, _CONV):
            pooled = False
    if not layers:
        raise ValueError(f"{type(module).__name__} has no Linear or Conv layer: nothing to describe")
    return layers
