"""`LearnedOptimizer`: any update rule as a drop-in ``torch.optim.Optimizer``."""

from __future__ import annotations

import copy
import itertools
from collections.abc import Collection, Iterable

import torch

from nfopt.lopt.layout import Slot, SpaceLayout, discover_spaces, tensor_space
from nfopt.lopt.protocol import UpdateRule, flatten_state, unflatten_state
from nfopt.nn.compiled import inductor_options
from nfopt.weightspace import NetworkSpec, WeightSpaceFeatures

__all__ = ["LearnedOptimizer", "module_parameters", "weight_space_layout"]

Tensor = torch.Tensor


def module_parameters(model: torch.nn.Module) -> list[tuple[str, Tensor]]:
    """``(name, parameter)`` of every trainable parameter of ``model`` in the order the learned
    optimizer uses them: its Linear/Conv chains in forward's data-flow order (weight, then bias),
    then every other parameter (see :mod:`nfopt.lopt.layout`)."""
    return discover_spaces(model)[0]


def weight_space_layout(params: list[Tensor], names: list[str] | None = None) -> tuple[NetworkSpec, list]:
    """Read an ordered parameter list as an MLP/CNN weight space: each weight (2-5 dims) is
    followed by its bias (1 dim, ``n_out`` entries) or not. Returns the spec and, per layer,
    ``(weight index, bias index or None)``. Raises ``ValueError`` naming the parameter that does
    not fit."""
    names = names or [f"#{i}" for i in range(len(params))]
    layers, i = [], 0
    while i < len(params):
        p = params[i]
        if not 2 <= p.ndim <= 5:
            raise ValueError(
                f"parameter {names[i]} with shape {tuple(p.shape)} is neither a weight (2-5 dims) nor the bias of "
                "the weight before it; learned optimizers support MLP/CNN weight spaces (Linear/Conv layers only, "
                "parameters in layer order)"
            )
        has_bias = i + 1 < len(params) and params[i + 1].ndim == 1 and params[i + 1].shape[0] == p.shape[0]
        layers.append((i, i + 1 if has_bias else None))
        i += 2 if has_bias else 1
    try:
        spec = NetworkSpec(tuple(tuple(params[w].shape) for w, _ in layers), tuple(b is not None for _, b in layers))
    except ValueError as err:
        raise ValueError(f"parameters {', '.join(names)} do not form an MLP/CNN weight space: {err}") from None
    return spec, layers


def _list_spaces(tensors: list[Tensor], names: list[str] | None) -> list[SpaceLayout]:
    """A parameter list: one MLP/CNN chain when it forms one (in the order given), else one
    weight space per tensor."""
    try:
        spec, layers = weight_space_layout(tensors, names)
    except ValueError:
        return [tensor_space(i, t) for i, t in enumerate(tensors)]
    views = tuple(tuple(tensors[w].shape) for w, _ in layers)
    slots = tuple((Slot(w), None if b is None else Slot(b)) for w, b in layers)
    return [SpaceLayout(spec, slots, views, "chain")]


class LearnedOptimizer(torch.optim.Optimizer):
    """``torch.optim.Optimizer`` driven by an :class:`~nfopt.lopt.protocol.UpdateRule` (a
    learned rule or a baseline): ``loss.backward(); opt.step()``.

    ``params``: best the model itself: its Linear/Conv chains are found from the data flow of
    ``forward`` (:mod:`nfopt.lopt.layout`; any order of ``named_parameters()``) and each is one
    weight space with its permutation symmetry; with ``describe`` (any of
    :data:`~nfopt.lopt.layout.DESCRIBED`) so are attention's query/key and value/output
    projections, recurrent layers' gates and Transformer feed-forward blocks (off by default: the
    shipped rules did better on them tensor by tensor); every other parameter (norms,
    embeddings, stray tensors) is its own one-layer weight space, updated by the same rule;
    nothing is refused.
    A parameter list (``parameters()``, ``named_parameters()``, or
    param-group dicts) is read as one chain in the order given when it forms one (a list cannot
    say which layer type a 2-d tensor belongs to), else tensor by tensor. The rule runs in
    float32 on the parameters' device (a copy of it, where it is elsewhere: the
    caller's rule can serve models on several devices); float64/float16/bfloat16 parameters
    are updated in their own dtype. ``num_steps`` (optional) tells the rule the horizon.
    ``state_dict()`` carries the rule's state, so a run resumed with ``load_state_dict``
    continues exactly. ``compile=True`` runs the rule's step through ``torch.compile`` (inductor:
    the first step compiles, ~45 s on 2 CPU cores; then one fused step, ~1.6x faster than eager
    for the NFN rule in ``bench/lopt_step.py --compile``); same updates up to float rounding.

    Param groups carry ``lr``, a multiplier of the rule's step (1: the step it was meta-trained
    to take), so every ``torch.optim.lr_scheduler`` works, and ``weight_decay``, decoupled as in
    AdamW: ``p <- p (1 - lr b wd)`` with ``b`` the rule's base learning rate (``step_mult``).
    """

    def __init__(
        self,
        params: Iterable | torch.nn.Module,
        rule: UpdateRule,
        num_steps: int | None = None,
        lr: float = 1.0,
        weight_decay: float = 0.0,
        describe: Collection[str] = (),
        compile: bool = False,
    ) -> None:
        spaces = None
        if isinstance(params, torch.nn.Module):
            named, spaces = discover_spaces(params, describe)
            groups, names = [{"params": [t for _, t in named]}], [n for n, _ in named]
        else:
            items = list(params)
            if items and isinstance(items[0], dict):  # param groups: per-group lr / weight decay
                groups = [{**g, "params": list(g["params"])} for g in items]
                names = None
            elif items and isinstance(items[0], tuple):
                groups, names = [{"params": [t for _, t in items]}], [n for n, _ in items]
            else:
                groups, names = [{"params": items}], None
        tensors = [t for g in groups for t in g["params"]]
        if not tensors or not all(isinstance(t, torch.Tensor) for t in tensors):
            raise ValueError("LearnedOptimizer takes a model, its parameters or param-group dicts (none given)")
        for k, v in (("lr", lr), ("weight_decay", weight_decay)):
            if not (v >= 0 and v < float("inf")):
                raise ValueError(f"{k}={v}: must be finite and >= 0")
        dtypes = {t.dtype for t in tensors}
        devices = {t.device for t in tensors}
        if len(dtypes) > 1 or len(devices) > 1 or not next(iter(dtypes)).is_floating_point:
            raise ValueError(
                f"parameters must share one floating dtype and device; got {sorted(map(str, dtypes))} on "
                f"{sorted(map(str, devices))}"
            )
        super().__init__(groups, {"lr": lr, "weight_decay": weight_decay})
        p0 = tensors[0]
        if compile and not isinstance(rule, torch.nn.Module):
            raise ValueError("compile=True needs a learned rule (an nn.Module); baselines run eagerly")
        if isinstance(rule, torch.nn.Module) and (
            compile or any(t.device != p0.device for t in itertools.chain(rule.parameters(), rule.buffers()))
        ):  # a private copy on the parameters' device: the caller's rule stays eager, where it was
            rule = copy.deepcopy(rule).to(p0.device)
            if compile:
                rule.compile(options=inductor_options(p0.device))
        self.rule = rule
        self.spaces = spaces if spaces is not None else _list_spaces(tensors, names)
        self.spec = self.spaces[0].spec  # the first (main) weight space
        self._compute_dtype = torch.float32  # the rule's dtype; parameters keep theirs
        self._rule_states = [
            rule.init(sp.spec, 1, dtype=self._compute_dtype, device=p0.device, num_steps=num_steps)
            for sp in self.spaces
        ]

    def add_param_group(self, param_group: dict) -> None:
        if getattr(self, "spaces", None) is not None:  # after __init__: the weight spaces are fixed
            raise ValueError(
                "LearnedOptimizer sees fixed weight spaces; parameters cannot be added later (make a new "
                "optimizer over the whole model, or use another optimizer for the new parameters)"
            )
        super().add_param_group(param_group)

    def _params(self) -> list[Tensor]:
        return [p for g in self.param_groups for p in g["params"]]

    def _group_of(self) -> list[dict]:
        return [g for g in self.param_groups for _ in g["params"]]

    def _base_lr(self) -> float:
        """The rule's own learning rate (``step_mult`` of a learned rule, ``lr`` of a baseline)."""
        return float(getattr(self.rule, "step_mult", getattr(self.rule, "lr", 1.0)))

    @staticmethod
    def _features(space: SpaceLayout, ps: list[Tensor], get, dtype: torch.dtype) -> WeightSpaceFeatures:
        """``get(parameter)`` of each slot of ``space``, in ``dtype`` (converted after slicing:
        a parameter cut into slots is read once per slot, not converted whole per slot)."""
        ws, bs = [], []
        for (w_s, b_s), view in zip(space.layers, space.views):
            w = w_s.of(get(ps[w_s.index])).to(dtype).reshape(view)
            ws.append(w[None, None])
            bs.append(
                b_s.of(get(ps[b_s.index])).to(dtype)[None, None] if b_s is not None else w.new_zeros(1, 1, w.shape[0])
            )
        return WeightSpaceFeatures(ws, bs)

    @torch.no_grad()
    def step(self, closure=None, loss=None):
        """One update. Loss-aware rules read the minibatch loss from ``closure()`` or ``loss``."""
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        dt = self._compute_dtype
        ps, groups, base = self._params(), self._group_of(), self._base_lr()
        loss_t = None if loss is None else torch.as_tensor(loss).detach().to(dt).reshape(1)

        def apply(s: Slot, step: Tensor) -> None:  # the step, scaled by its group's lr, in the parameter's dtype
            g, p = groups[s.index], s.of(ps[s.index])  # p: a view of the parameter
            if g["weight_decay"]:
                p.mul_(1 - g["lr"] * base * g["weight_decay"])  # decoupled, as AdamW
            p.add_((step.reshape(p.shape) * g["lr"]).to(p.dtype))

        for k, space in enumerate(self.spaces):
            params = self._features(space, ps, torch.Tensor.detach, dt)
            grads = self._features(space, ps, lambda p: p.grad if p.grad is not None else torch.zeros_like(p), dt)
            new, self._rule_states[k] = self.rule.update(None, self._rule_states[k], params, grads, loss_t)
            for (w_s, b_s), (w, b), (w0, b0) in zip(space.layers, new, params):
                apply(w_s, w[0, 0] - w0[0, 0])
                if b_s is not None:
                    apply(b_s, b[0, 0] - b0[0, 0])
        return loss

    def state_dict(self) -> dict:
        sd = super().state_dict()
        sd["nfopt_rule_state"] = {
            f"{k}/{name}": v.clone() for k, st in enumerate(self._rule_states) for name, v in flatten_state(st).items()
        }
        return sd

    def load_state_dict(self, state_dict: dict) -> None:
        state_dict = dict(state_dict)
        rule_state = state_dict.pop("nfopt_rule_state", None)
        if rule_state is None:
            raise ValueError(
                "not a LearnedOptimizer state_dict (no 'nfopt_rule_state'; another optimizer's, e.g. Adam's?): "
                "load one saved by LearnedOptimizer.state_dict()"
            )
        per_space: list[dict] = [{} for _ in self._rule_states]
        wrong = []
        for key, v in rule_state.items():
            k, _, name = key.partition("/")
            if not k.isdigit() or int(k) >= len(per_space):
                wrong.append(key)
                continue
            per_space[int(k)][name] = v
        for k, st in enumerate(self._rule_states):
            fresh = flatten_state(st)
            got = per_space[k]
            wrong += sorted(
                f"{k}/{n}"
                for n in fresh.keys() | got.keys()
                if n not in fresh or n not in got or fresh[n].shape != got[n].shape
            )
        if wrong:
            raise ValueError(f"state_dict is for another model or rule: rule state {wrong[:4]} do not match")
        super().load_state_dict(state_dict)
        device = self._params()[0].device
        self._rule_states = [unflatten_state({n: v.clone().to(device) for n, v in got.items()}) for got in per_space]
