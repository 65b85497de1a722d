"""`LearnedOptimizer`: any update rule as a drop-in ``torch.optim.Optimizer``."""

from __future__ import annotations

from collections.abc import Iterable

import torch

from nfopt.lopt.protocol import UpdateRule, flatten_state, unflatten_state
from nfopt.weightspace import NetworkSpec, WeightSpaceFeatures

__all__ = ["LearnedOptimizer", "module_parameters", "weight_space_layout"]

#: Modules whose weights form the MLP/CNN chain the equivariant rule sees.
CHAIN_MODULES = (torch.nn.Linear, torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Conv3d)


def _call_order(model: torch.nn.Module) -> list[str]:
    """Names of the submodules in the order ``forward`` calls them (``torch.fx``); the order
    they were registered in when the model cannot be traced."""
    registered = [n for n, m in model.named_modules() if n and not list(m.children())]
    try:
        graph = torch.fx.symbolic_trace(model).graph
    except Exception:  # data-dependent control flow etc.: fall back to registration order
        return registered
    called = [str(node.target) for node in graph.nodes if node.op == "call_module"]
    if len(set(called)) != len(called):
        dup = sorted({n for n in called if called.count(n) > 1})
        raise ValueError(f"module(s) {dup} are called more than once in forward; a shared layer is not a chain")
    return called + [n for n in registered if n not in called]


def module_parameters(model: torch.nn.Module) -> list[tuple[str, Tensor]]:
    """``(name, parameter)`` of ``model``'s Linear/Conv layers in the order ``forward`` calls
    them (weight, then bias), whatever order ``named_parameters()`` gives. ``ValueError``
    naming the module when a parameter belongs to anything else (an ``Embedding``, a norm, a
    parameter of its own): this optimizer sees one MLP/CNN weight space."""
    modules = dict(model.named_modules())
    out = []
    for name in _call_order(model):
        mod = modules[name]
        own = [(f"{name}.{k}", v) for k, v in mod.named_parameters(recurse=False) if v.requires_grad]
        if not own:
            continue
        if not isinstance(mod, CHAIN_MODULES):
            raise ValueError(
                f"module {name!r} ({type(mod).__name__}) has parameters but is not a Linear/Conv layer; this learned "
                "optimizer updates MLP/CNN weight spaces (Linear/Conv layers only): optimize it with another optimizer"
            )
        out.extend(own)
    seen = {id(p) for _, p in out}
    stray = [n for n, p in model.named_parameters() if p.requires_grad and id(p) not in seen]
    if stray:
        raise ValueError(
            f"parameters {stray} belong to no Linear/Conv layer; this learned optimizer cannot update them"
        )
    return out


Tensor = torch.Tensor


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


class LearnedOptimizer(torch.optim.Optimizer):
    """``torch.optim.Optimizer`` driven by an :class:`~nfopt.lopt.protocol.UpdateRule` (a
    learned rule or a baseline): ``loss.backward(); opt.step()``.

    ``params``: the model itself (best: its Linear/Conv layers are read in the order ``forward``
    calls them, and anything that is not one is refused by name), or its ``parameters()`` /
    ``named_parameters()`` in layer order forming an MLP/CNN weight space (a list cannot say
    which layer type a 2-d tensor belongs to). The rule sees them as one network (``P=1``) and
    runs in float32 on the parameters' device; float64/float16/bfloat16 parameters are updated
    in their own dtype. ``num_steps`` (optional) tells the rule the training horizon.
    ``state_dict()`` carries the rule's state, so a run resumed with ``load_state_dict``
    continues exactly.

    Param groups (dicts, together one weight space in the order given) carry ``lr``, a
    multiplier of the rule's step (1: the step it was meta-trained to take), so every
    ``torch.optim.lr_scheduler`` works, and ``weight_decay``, decoupled as in AdamW:
    ``p <- p (1 - lr b wd)`` with ``b`` the rule's base learning rate (``step_mult``).
    """

    def __init__(
        self,
        params: Iterable | torch.nn.Module,
        rule: UpdateRule,
        num_steps: int | None = None,
        lr: float = 1.0,
        weight_decay: float = 0.0,
    ) -> None:
        if isinstance(params, torch.nn.Module):
            groups = [{"params": [t for _, t in module_parameters(params)]}]
            names = [n for n, _ in module_parameters(params)]
        else:
            items = list(params)
            if items and isinstance(items[0], dict):  # param groups: one weight space, per-group lr / weight decay
                groups = [{**g, "params": list(g["params"])} for g in items]
                names = None
            elif items and isinstance(items[0], tuple):
                groups, names = [{"params": [t for _, t in items]}], [n for n, _ in items]
            else:
                groups, names = [{"params": items}], None
        tensors = [t for g in groups for t in g["params"]]
        if not tensors or not all(isinstance(t, torch.Tensor) for t in tensors):
            raise ValueError("LearnedOptimizer takes a model, its parameters (in layer order) or param-group dicts")
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
        self.rule = rule
        self.spec, self._layout = weight_space_layout(tensors, names)
        p0 = tensors[0]
        self._compute_dtype = torch.float32  # the rule's dtype; parameters keep theirs
        if hasattr(rule, "to"):
            rule.to(p0.device)
        self._rule_state = rule.init(self.spec, 1, dtype=self._compute_dtype, device=p0.device, num_steps=num_steps)

    def add_param_group(self, param_group: dict) -> None:
        if getattr(self, "_layout", None) is not None:  # after __init__: the weight space is fixed
            raise ValueError(
                "LearnedOptimizer sees one fixed weight space; parameters cannot be added later (make a new "
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

    def _features(self, get) -> WeightSpaceFeatures:
        ps = self._params()
        ws, bs = [], []
        for w_i, b_i in self._layout:
            w = get(ps[w_i])
            ws.append(w[None, None])
            bs.append(get(ps[b_i])[None, None] if b_i is not None else w.new_zeros(1, 1, w.shape[0]))
        return WeightSpaceFeatures(ws, bs)

    @torch.no_grad()
    def step(self, closure=None, loss=None):
        """One update. Loss-aware rules read the minibatch loss from ``closure()`` or ``loss``."""
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        dt = self._compute_dtype
        params = self._features(lambda p: p.detach().to(dt))
        grads = self._features(lambda p: (p.grad if p.grad is not None else torch.zeros_like(p)).to(dt))
        loss_t = None if loss is None else torch.as_tensor(loss).detach().to(dt).reshape(1)
        new, self._rule_state = self.rule.update(None, self._rule_state, params, grads, loss_t)
        ps, groups, base = self._params(), self._group_of(), self._base_lr()

        def apply(i: int, step: Tensor) -> None:  # the step, scaled by its group's lr, in the parameter's dtype
            g = groups[i]
            if g["weight_decay"]:
                ps[i].mul_(1 - g["lr"] * base * g["weight_decay"])  # decoupled, as AdamW
            ps[i].add_((step * g["lr"]).to(ps[i].dtype))

        for (w_i, b_i), (w, b), (w0, b0) in zip(self._layout, new, params):
            apply(w_i, w[0, 0] - w0[0, 0])
            if b_i is not None:
                apply(b_i, b[0, 0] - b0[0, 0])
        return loss

    def state_dict(self) -> dict:
        sd = super().state_dict()
        sd["nfopt_rule_state"] = {k: v.clone() for k, v in flatten_state(self._rule_state).items()}
        return sd

    def load_state_dict(self, state_dict: dict) -> None:
        state_dict = dict(state_dict)
        rule_state = state_dict.pop("nfopt_rule_state", None)
        if rule_state is None:
            raise ValueError(
                "not a LearnedOptimizer state_dict (no 'nfopt_rule_state'; another optimizer's, e.g. Adam's?): "
                "load one saved by LearnedOptimizer.state_dict()"
            )
        state = unflatten_state({k: v.clone() for k, v in rule_state.items()})
        fresh = flatten_state(self._rule_state)
        got = flatten_state(state)
        wrong = sorted(
            k for k in fresh.keys() | got.keys() if k not in fresh or k not in got or fresh[k].shape != got[k].shape
        )
        if wrong:
            raise ValueError(f"state_dict is for another model or rule: rule state {wrong[:4]} do not match")
        super().load_state_dict(state_dict)
        device = self._params()[0].device
        self._rule_state = unflatten_state({k: v.to(device) for k, v in got.items()})
