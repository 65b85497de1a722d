"""Which weight spaces a learned optimizer sees in a model: MLP/CNN chains and single tensors.

An equivariant rule sees a *weight space*: a chain of Linear/Conv layers, each feeding the next
(through activations, dropout, pooling or flattening only), whose hidden neurons can be permuted
without changing the network. :func:`discover_spaces` finds the chains of a module by following
the data flow of its ``forward`` (``torch.fx``): a layer joins the chain of the layer whose output
it reads when nothing else reads that output. Every other parameter — a norm's scale, an
embedding, a projection inside attention, a parameter of the module itself, a layer whose input
comes from a residual sum — is its own one-layer weight space ("tensor"): a ``(n,)`` tensor is
seen as an ``(n, 1)`` weight, a scalar as ``(1, 1)``, a tensor of more than 5 dims as
``(d0, d1*d2*...)``. Nothing is refused. A model ``fx`` cannot trace falls back to its
registration order, chaining consecutive Linear/Conv layers whose shapes chain.

Pure logic (no optimizer state): :class:`~nfopt.lopt.optimizer.LearnedOptimizer` keeps one rule
state per space.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from nfopt.weightspace import NetworkSpec

__all__ = ["CHAIN_MODULES", "SpaceLayout", "chains_of", "discover_spaces", "tensor_space", "tensor_view"]

Tensor = torch.Tensor

#: Modules whose weights form MLP/CNN chains.
CHAIN_MODULES = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
#: Single-input modules a chain passes through (elementwise maps, dropout, pooling, flattening).
_PASS_MODULES = (
    nn.ReLU,
    nn.LeakyReLU,
    nn.ELU,
    nn.GELU,
    nn.SiLU,
    nn.Tanh,
    nn.Sigmoid,
    nn.Softplus,
    nn.Mish,
    nn.Identity,
    nn.Dropout,
    nn.Flatten,
    nn.MaxPool1d,
    nn.MaxPool2d,
    nn.AvgPool1d,
    nn.AvgPool2d,
    nn.AdaptiveAvgPool1d,
    nn.AdaptiveAvgPool2d,
)
_PASS_FUNCTIONS = {
    torch.relu,
    torch.tanh,
    torch.sigmoid,
    torch.flatten,
    nn.functional.relu,
    nn.functional.gelu,
    nn.functional.silu,
    nn.functional.elu,
    nn.functional.leaky_relu,
    nn.functional.dropout,
    nn.functional.max_pool2d,
    nn.functional.avg_pool2d,
    nn.functional.adaptive_avg_pool2d,
}
_PASS_METHODS = {"relu", "tanh", "sigmoid", "flatten", "view", "reshape"}


@dataclass(frozen=True)
class SpaceLayout:
    """One weight space: its spec, per layer ``(weight index, bias index or None)`` into the
    optimizer's flat parameter list, per layer the shape the weight is viewed as, and ``kind``
    (``"chain"`` or ``"tensor"``)."""

    spec: NetworkSpec
    layers: tuple[tuple[int, int | None], ...]
    views: tuple[tuple[int, ...], ...]
    kind: str


def tensor_view(shape: tuple[int, ...]) -> tuple[int, ...]:
    """The weight shape a lone tensor is seen as: ``()`` -> ``(1, 1)``, ``(n,)`` -> ``(n, 1)``,
    2-5 dims unchanged, more -> ``(d0, rest)``."""
    if len(shape) == 0:
        return (1, 1)
    if len(shape) == 1:
        return (shape[0], 1)
    if len(shape) <= 5:
        return tuple(shape)
    return (shape[0], math.prod(shape[1:]))


def tensor_space(i: int, t: Tensor) -> SpaceLayout:
    """Tensor ``t``, parameter ``i`` of the optimizer's flat list, as its own one-layer weight space."""
    view = tensor_view(tuple(t.shape))
    return SpaceLayout(NetworkSpec((view,), (False,)), ((i, None),), (view,), "tensor")


def _passes(node, modules: dict) -> bool:
    if node.op == "call_module":
        return isinstance(modules[node.target], _PASS_MODULES)
    if node.op == "call_function":
        return node.target in _PASS_FUNCTIONS
    if node.op == "call_method":
        return node.target in _PASS_METHODS
    return False


def chains_of(model: nn.Module) -> list[list[str]] | None:
    """Chains of Linear/Conv module names in data-flow order, or ``None`` when ``fx`` cannot
    trace ``model``. A module called more than once is in no chain."""
    try:
        graph = torch.fx.symbolic_trace(model).graph
    except Exception:  # data-dependent control flow, unsupported ops: the caller falls back
        return None
    modules = dict(model.named_modules())
    calls = [n for n in graph.nodes if n.op == "call_module" and isinstance(modules[n.target], CHAIN_MODULES)]
    counts: dict[str, int] = {}
    for n in calls:
        counts[n.target] = counts.get(n.target, 0) + 1
    calls = [n for n in calls if counts[n.target] == 1]
    layer_nodes = set(calls)
    pred: dict = {}
    for n in calls:
        x = n.args[0] if n.args else None
        while isinstance(x, torch.fx.Node) and len(x.users) == 1:
            if x in layer_nodes:
                pred[n] = x
                break
            if not _passes(x, modules) or not x.args:
                break
            x = x.args[0]
    succ = {p: n for n, p in pred.items()}
    chains = []
    for n in calls:
        if n in pred:
            continue
        chain = [n]
        while chain[-1] in succ:
            chain.append(succ[chain[-1]])
        chains.append([str(c.target) for c in chain])
    return chains


def _registration_chains(model: nn.Module) -> list[list[str]]:
    """Fallback without a trace: the Linear/Conv layers in registration order as one chain (split
    by :func:`_split_valid` where shapes do not chain)."""
    return [[n for n, m in model.named_modules() if isinstance(m, CHAIN_MODULES)]]


def _split_valid(chain: list[nn.Module]) -> list[list[int]]:
    """Split a chain where consecutive layers' shapes do not chain (e.g. a conv feeding a linear
    layer through a flatten): indices of the pieces."""
    pieces, cur = [], [0]
    for k in range(1, len(chain)):
        try:
            NetworkSpec(tuple(tuple(chain[j].weight.shape) for j in [*cur, k]))
            cur.append(k)
        except ValueError:
            pieces.append(cur)
            cur = [k]
    pieces.append(cur)
    return pieces


def discover_spaces(model: nn.Module) -> tuple[list[tuple[str, Tensor]], list[SpaceLayout]]:
    """``model``'s trainable parameters as ``(name, tensor)`` in the order the spaces use them,
    and the weight spaces (chains first, in forward order; then one space per other tensor)."""
    modules = dict(model.named_modules())
    chains = chains_of(model)
    if chains is None:
        chains = _registration_chains(model)
    flat: list[tuple[str, Tensor]] = []
    spaces: list[SpaceLayout] = []
    for chain in chains:
        mods = [modules[n] for n in chain]
        for piece in _split_valid(mods):
            layers, views = [], []
            for k in piece:
                name, mod = chain[k], mods[k]
                if not mod.weight.requires_grad:
                    continue
                w_i = len(flat)
                flat.append((f"{name}.weight", mod.weight))
                b_i = None
                if mod.bias is not None and mod.bias.requires_grad:
                    b_i = len(flat)
                    flat.append((f"{name}.bias", mod.bias))
                layers.append((w_i, b_i))
                views.append(tuple(mod.weight.shape))
            if layers:
                spec = NetworkSpec(tuple(views), tuple(b is not None for _, b in layers))
                spaces.append(SpaceLayout(spec, tuple(layers), tuple(views), "chain"))
    taken = {id(p) for _, p in flat}
    for name, p in model.named_parameters():
        if p.requires_grad and id(p) not in taken:
            spaces.append(tensor_space(len(flat), p))
            flat.append((name, p))
            taken.add(id(p))
    return flat, spaces
