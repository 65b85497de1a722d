"""Which weight spaces a learned optimizer sees in a model: MLP/CNN chains, attention and
recurrent weight spaces, and single tensors.

An equivariant rule sees a *weight space*: a chain of layers whose hidden neurons can be permuted
without changing the network, each layer a :class:`Slot` (a parameter, or rows of one, possibly
transposed). :func:`discover_spaces` finds

* **chains** of Linear/Conv layers, each feeding the next (through activations, dropout, pooling
  or flattening only), by following the data flow of ``forward`` (``torch.fx``): a layer joins
  the chain of the layer whose output it reads when nothing else reads that output;
* in the spirit of Universal Neural Functionals (Zhou, Finn, Harrison 2024: weight spaces
  described by their symmetries), the spaces of modules whose symmetry is known:
  ``nn.MultiheadAttention`` gives two two-layer spaces — ``attention_qk``: ``[W_k, W_q^T]``
  (``x -> W_k x -> W_q^T (.)``: the query/key feature dims are its hidden neurons, permuted
  jointly in ``W_q``'s and ``W_k``'s rows, which leaves every score ``q.k`` unchanged) and
  ``attention_vo``: ``[W_v, W_o]`` (value dims are hidden neurons between ``W_v``'s rows and
  ``W_o``'s columns); ``nn.RNN``/``nn.GRU``/``nn.LSTM`` give per layer and gate ``recurrent``:
  ``[W_ih^g, W_hh^g]`` (hidden units permute ``W_ih``'s rows, ``W_hh``'s columns and rows). The
  true symmetry groups (per-head permutations; one permutation shared by ``W_hh``'s rows and
  columns and all gates) are subgroups of the neuron permutations these chains allow, so an
  NP-equivariant rule respects them, and unlike tensor by tensor it sees each layer's coupled
  weights together;
* every other parameter — a norm's scale, an embedding, the query bias, a parameter of the
  module itself, a layer whose input comes from a residual sum — is its own one-layer weight
  space ("tensor"): a ``(n,)`` tensor is seen as an ``(n, 1)`` weight, a scalar as ``(1, 1)``, a
  tensor of more than 5 dims as ``(d0, d1*d2*...)``.

The residual stream of a Transformer (one permutation of the model dims shared by the embedding,
the norms and every projection reading or writing it) is respected but not coupled: each space
is equivariant to permutations of its input and output neurons, so the permuted model gets the
permuted update, but no space spans the whole stream.

The described spaces are opt-in (``describe=DESCRIBED``): the shipped rules were meta-trained on
MLP/CNN chains only, and on the character Transformer of ``examples/transformer_lm.py`` (600
steps) ``nfn_np_small`` reached held-out loss 1.814 with attention and feed-forward weights seen
tensor by tensor, 1.968 with the feed-forward chains, 2.014 with the attention spaces, 1.977 with
both (``mlp_small``: 1.911 vs 1.934). A rule meta-trained on such spaces is what they are for.

Nothing is refused. A model ``fx`` cannot trace falls back to its registration order, chaining
consecutive Linear/Conv layers whose shapes chain.

Pure logic (no optimizer state): :class:`~nfopt.lopt.optimizer.LearnedOptimizer` keeps one rule
state per space.
"""

from __future__ import annotations

import math
from collections.abc import Collection
from dataclasses import dataclass

import torch
from torch import nn

from nfopt.weightspace import NetworkSpec

__all__ = [
    "CHAIN_MODULES",
    "DESCRIBED",
    "RECURRENT_MODULES",
    "Slot",
    "SpaceLayout",
    "chains_of",
    "discover_spaces",
    "tensor_space",
    "tensor_view",
]

Tensor = torch.Tensor

#: Modules whose weights form MLP/CNN chains.
CHAIN_MODULES = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
#: Recurrent modules and their gates per hidden unit.
RECURRENT_MODULES = {nn.RNN: 1, nn.GRU: 3, nn.LSTM: 4}
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
class Slot:
    """Where one weight-space tensor lives: parameter ``index`` of the optimizer's flat list, its
    rows ``rows = (start, stop)`` (all when ``None``), transposed or not (2-d only)."""

    index: int
    rows: tuple[int, int] | None = None
    transpose: bool = False

    def of(self, t: Tensor) -> Tensor:
        """The slot's view of parameter ``t`` (a view: in-place changes reach ``t``)."""
        if self.rows is not None:
            t = t[self.rows[0] : self.rows[1]]
        return t.t() if self.transpose else t


@dataclass(frozen=True)
class SpaceLayout:
    """One weight space: its spec, per layer ``(weight slot, bias slot or None)``, per layer the
    shape the weight slot is viewed as, and ``kind`` (``"chain"``, ``"attention_qk"``,
    ``"attention_vo"``, ``"recurrent"`` or ``"tensor"``)."""

    spec: NetworkSpec
    layers: tuple[tuple[Slot, Slot | None], ...]
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


def tensor_space(i: int, t: Tensor, rows: tuple[int, int] | None = None) -> SpaceLayout:
    """Tensor ``t`` (or its ``rows``), parameter ``i`` of the optimizer's flat list, as its own
    one-layer weight space."""
    slot = Slot(i, rows)
    view = tensor_view(tuple(slot.of(t).shape))
    return SpaceLayout(NetworkSpec((view,), (False,)), ((slot, None),), (view,), "tensor")


def _two_layer(kind: str, w1: Slot, b1: Slot | None, w2: Slot, b2: Slot | None, flat: list) -> SpaceLayout:
    views = tuple(tuple(w.of(flat[w.index][1]).shape) for w in (w1, w2))
    spec = NetworkSpec(views, (b1 is not None, b2 is not None))
    return SpaceLayout(spec, ((w1, b1), (w2, b2)), views, kind)


def _attention_spaces(name: str, m: nn.MultiheadAttention, flat: list) -> list[SpaceLayout]:
    """``attention_qk`` ``[W_k, W_q^T]`` and ``attention_vo`` ``[W_v, W_o]`` of ``m`` (and the
    query bias alone), appending their parameters to ``flat``; none if a part is frozen."""
    e, pre = m.embed_dim, f"{name}." if name else ""
    if m._qkv_same_embed_dim:
        weights = [(f"{pre}in_proj_weight", m.in_proj_weight)]
    else:
        weights = [(f"{pre}{k}_proj_weight", getattr(m, f"{k}_proj_weight")) for k in "qkv"]
    bias = [(f"{pre}in_proj_bias", m.in_proj_bias)] if m.in_proj_bias is not None else []
    out_b = [(f"{pre}out_proj.bias", m.out_proj.bias)] if m.out_proj.bias is not None else []
    parts = [*weights, *bias, (f"{pre}out_proj.weight", m.out_proj.weight), *out_b]
    if not all(p.requires_grad for _, p in parts):
        return []
    at = len(flat)
    flat.extend(parts)
    if m._qkv_same_embed_dim:
        wq, wk, wv = (Slot(at, (k * e, (k + 1) * e)) for k in range(3))
    else:
        wq, wk, wv = (Slot(at + k) for k in range(3))
    bi = at + len(weights)
    bq, bk, bv = (Slot(bi, (k * e, (k + 1) * e)) for k in range(3)) if bias else (None, None, None)
    wo = Slot(bi + len(bias))
    bo = Slot(wo.index + 1) if out_b else None
    spaces = [
        _two_layer("attention_qk", wk, bk, Slot(wq.index, wq.rows, transpose=True), None, flat),
        _two_layer("attention_vo", wv, bv, wo, bo, flat),
    ]
    if bq is not None:
        spaces.append(tensor_space(bq.index, flat[bq.index][1], bq.rows))
    return spaces


def _feedforward_space(name: str, m: nn.Module, flat: list) -> list[SpaceLayout]:
    """The feed-forward block ``linear2(dropout(act(linear1(x))))`` of a torch Transformer layer
    (which ``fx`` cannot trace) as a ``chain``, appending its parameters to ``flat``."""
    pre = f"{name}." if name else ""
    parts = [(f"{pre}{k}.{t}", getattr(getattr(m, k), t)) for k in ("linear1", "linear2") for t in ("weight", "bias")]
    parts = [(n, p) for n, p in parts if p is not None]
    if not all(p.requires_grad for _, p in parts):
        return []
    at, slots = len(flat), []
    flat.extend(parts)
    for k in ("linear1", "linear2"):
        has_b = getattr(m, k).bias is not None
        slots += [Slot(at), Slot(at + 1) if has_b else None]
        at += 1 + has_b
    return [_two_layer("chain", *slots, flat)]


def _recurrent_spaces(name: str, m: nn.RNNBase, gates: int, flat: list) -> list[SpaceLayout]:
    """Per layer, direction and gate, ``recurrent`` ``[W_ih^g, W_hh^g]`` of ``m`` with their
    biases, appending its parameters to ``flat``; none if projected (``proj_size``) or frozen."""
    params = dict(m.named_parameters())
    if getattr(m, "proj_size", 0) or not all(p.requires_grad for p in params.values()):
        return []
    h, pre, spaces = m.hidden_size, f"{name}." if name else "", []
    for layer in range(m.num_layers):
        for sfx in ("", "_reverse")[: 2 if m.bidirectional else 1]:
            keys = [f"{k}_l{layer}{sfx}" for k in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")]
            idx = {}
            for k in keys:
                if k in params:
                    idx[k] = len(flat)
                    flat.append((f"{pre}{k}", params[k]))
            for g in range(gates):
                rows = (g * h, (g + 1) * h)
                bih = Slot(idx[keys[2]], rows) if keys[2] in idx else None
                bhh = Slot(idx[keys[3]], rows) if keys[3] in idx else None
                wih, whh = Slot(idx[keys[0]], rows), Slot(idx[keys[1]], rows)
                spaces.append(_two_layer("recurrent", wih, bih, whh, bhh, flat))
    return spaces


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
    if not chain:
        return []
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


def _split_at(chain: list[str], drop) -> list[list[str]]:
    """``chain`` without the members ``drop`` says, cut where they were."""
    pieces: list[list[str]] = [[]]
    for n in chain:
        if drop(n):
            pieces.append([])
        else:
            pieces[-1].append(n)
    return [p for p in pieces if p]


def _shifted(s: Slot, by: int) -> Slot:
    return Slot(s.index + by, s.rows, s.transpose)


#: Module families :func:`discover_spaces` can describe as weight spaces.
DESCRIBED = ("attention", "recurrent", "feedforward")


def discover_spaces(
    model: nn.Module, describe: Collection[str] = ()
) -> tuple[list[tuple[str, Tensor]], list[SpaceLayout]]:
    """``model``'s trainable parameters as ``(name, tensor)`` in the order the spaces use them,
    and the weight spaces (chains first, in forward order; then attention and recurrent spaces;
    then one space per other tensor). ``describe``: which of :data:`DESCRIBED` get their own
    spaces (by default none: their parameters are single tensors; see the module docstring)."""
    unknown = set(describe) - set(DESCRIBED)
    if unknown:
        raise ValueError(f"describe={sorted(unknown)}: choose from {list(DESCRIBED)}")
    modules = dict(model.named_modules())
    flat: list[tuple[str, Tensor]] = []
    described: list[SpaceLayout] = []
    for name, m in modules.items():
        if isinstance(m, nn.MultiheadAttention) and "attention" in describe:
            described += _attention_spaces(name, m, flat)
        elif type(m) in RECURRENT_MODULES and "recurrent" in describe:
            described += _recurrent_spaces(name, m, RECURRENT_MODULES[type(m)], flat)
        elif isinstance(m, (nn.TransformerEncoderLayer, nn.TransformerDecoderLayer)) and "feedforward" in describe:
            described += _feedforward_space(name, m, flat)
    inside = {id(p) for _, p in flat}  # e.g. out_proj, a Linear inside attention: not a chain layer
    described_flat, flat = flat, []
    chains = chains_of(model)
    if chains is None:
        chains = _registration_chains(model)
    chains = [piece for c in chains for piece in _split_at(c, lambda n: id(modules[n].weight) in inside)]
    spaces: list[SpaceLayout] = []
    for chain in chains:
        mods = [modules[n] for n in chain]
        for piece in _split_valid(mods):
            layers, views = [], []
            for k in piece:
                name, mod = chain[k], mods[k]
                if not mod.weight.requires_grad:
                    continue
                w_i = Slot(len(flat))
                flat.append((f"{name}.weight", mod.weight))
                b_i = None
                if mod.bias is not None and mod.bias.requires_grad:
                    b_i = Slot(len(flat))
                    flat.append((f"{name}.bias", mod.bias))
                layers.append((w_i, b_i))
                views.append(tuple(mod.weight.shape))
            if layers:
                spec = NetworkSpec(tuple(views), tuple(b is not None for _, b in layers))
                spaces.append(SpaceLayout(spec, tuple(layers), tuple(views), "chain"))
    shift = len(flat)  # the described spaces' parameters follow the chains'
    flat += described_flat
    for sp in described:
        moved = tuple((_shifted(w, shift), None if b is None else _shifted(b, shift)) for w, b in sp.layers)
        spaces.append(SpaceLayout(sp.spec, moved, sp.views, sp.kind))
    taken = {id(p) for _, p in flat}
    for name, p in model.named_parameters():
        if p.requires_grad and id(p) not in taken:
            spaces.append(tensor_space(len(flat), p))
            flat.append((name, p))
            taken.add(id(p))
    return flat, spaces
