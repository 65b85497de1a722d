"""`LearnedOptimizer`: any update rule as a drop-in ``torch.optim.Optimizer``."""

from __future__ import annotations

from collections.abc import Iterable

import torch

from nfopt.lopt.protocol import UpdateRule, flatten_state, unflatten_state
from nfopt.weightspace import NetworkSpec, WeightSpaceFeatures

__all__ = ["LearnedOptimizer", "weight_space_layout"]

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

    ``params`` (or ``named_parameters()``) must be a model's parameters in layer order forming an
    MLP/CNN weight space; the rule sees them as one network (``P=1``). ``num_steps`` (optional)
    tells the rule the training horizon. ``state_dict()`` carries the rule's state, so a run
    resumed with ``load_state_dict`` continues exactly.
    """

    def __init__(self, params: Iterable, rule: UpdateRule, num_steps: int | None = None) -> None:
        items = list(params)
        if items and isinstance(items[0], tuple):
            names, tensors = [n for n, _ in items], [t for _, t in items]
        else:
            names, tensors = None, items
        if not tensors or isinstance(tensors[0], dict):
            raise ValueError("LearnedOptimizer takes a model's parameters (one group, in layer order)")
        super().__init__(tensors, {})
        self.rule = rule
        self.spec, self._layout = weight_space_layout(tensors, names)
        p0 = tensors[0]
        self._rule_state = rule.init(self.spec, 1, dtype=p0.dtype, device=p0.device, num_steps=num_steps)

    def _params(self) -> list[Tensor]:
        return self.param_groups[0]["params"]

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
        params = self._features(lambda p: p.detach())
        grads = self._features(lambda p: p.grad if p.grad is not None else torch.zeros_like(p))
        loss_t = None if loss is None else torch.as_tensor(loss).detach().reshape(1)
        new, self._rule_state = self.rule.update(None, self._rule_state, params, grads, loss_t)
        ps = self._params()
        for (w_i, b_i), (w, b) in zip(self._layout, new):
            ps[w_i].copy_(w[0, 0])
            if b_i is not None:
                ps[b_i].copy_(b[0, 0])
        return loss

    def state_dict(self) -> dict:
        sd = super().state_dict()
        sd["nfopt_rule_state"] = {k: v.clone() for k, v in flatten_state(self._rule_state).items()}
        return sd

    def load_state_dict(self, state_dict: dict) -> None:
        state_dict = dict(state_dict)
        rule_state = state_dict.pop("nfopt_rule_state", None)
        super().load_state_dict(state_dict)
        if rule_state is not None:
            self._rule_state = unflatten_state({k: v.clone() for k, v in rule_state.items()})
