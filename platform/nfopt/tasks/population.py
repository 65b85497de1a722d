"""`Population`: P inner networks of one architecture, parameters stacked on a leading axis and
stepped together with ``torch.func`` (``functional_call`` + ``vmap`` + ``grad``)."""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad_and_value, stack_module_state, vmap

from nfopt.tasks.batched import MLPPlan, layer_features, layer_params, mlp_loss_and_grad
from nfopt.weightspace import NetworkSpec, WeightSpaceFeatures, parse_module

__all__ = ["Population"]

Tensor = torch.Tensor
Params = dict[str, Tensor]

_LOSSES = {"cross_entropy": F.cross_entropy, "mse": F.mse_loss}


class Population:
    """``P`` networks sharing ``template``'s architecture; ``params[name]: (P, *shape)``.

    Parameters are plain tensors (not leaves of a module), so optimizers can update them
    functionally; :meth:`features` views them as ``WeightSpaceFeatures`` with ``B=P, C=1``
    without copying (bias-free layers read as zeros).
    """

    def __init__(
        self,
        template: nn.Module,
        params: Params,
        loss: str = "cross_entropy",
        scales: dict[str, float] | None = None,
        loss_scale: float = 1.0,
    ) -> None:
        if loss not in _LOSSES:
            raise ValueError(f"loss={loss!r}: use one of {sorted(_LOSSES)}")
        sizes = {t.shape[0] for t in params.values()}
        if len(sizes) != 1:
            raise ValueError(f"params disagree on the population size: {sorted(sizes)}")
        self.template = copy.deepcopy(template).to("meta")  # structure only; params live in self.params
        self.params = params
        self.loss = loss
        self._layers = [(name, f"{name}.bias" in params) for name, _ in parse_module(template)]  # (name, has_bias)
        self.spec = NetworkSpec.from_module(template)
        self.plan = MLPPlan.of(template, loss)  # plain MLPs: the batched-GEMM path
        unknown = set(scales or {}) - set(params)
        if unknown:
            raise ValueError(f"scales name no parameter: {sorted(unknown)}")
        self.scales = {k: float(v) for k, v in (scales or {}).items() if float(v) != 1.0}
        self.loss_scale = float(loss_scale)

    def reparameterize(self, scales: dict[str, float], loss_scale: float = 1.0) -> Population:
        """The same networks in coordinates ``p' = p / s`` (the model computes with ``s p'``, so
        gradients become ``s g``) with the training loss multiplied by ``loss_scale``: task
        augmentation that changes the optimisation problem, not the functions."""
        if self.scales or self.loss_scale != 1.0:
            raise ValueError("population is already reparameterised")
        out = Population(self.template, dict(self.params), self.loss, scales, loss_scale)
        out.params = {k: v / out.scales[k] if k in out.scales else v for k, v in self.params.items()}
        return out

    def _effective(self, params: Params) -> Params:
        """The parameters the model computes with: ``s p'`` where reparameterised."""
        if not self.scales:
            return params
        return {k: v * self.scales[k] if k in self.scales else v for k, v in params.items()}

    @classmethod
    def from_modules(cls, modules: Sequence[nn.Module], loss: str = "cross_entropy") -> Population:
        """Stack the parameters of same-shaped modules (copies them)."""
        params, _ = stack_module_state(list(modules))
        return cls(copy.deepcopy(modules[0]), {k: v.detach() for k, v in params.items()}, loss)

    @property
    def size(self) -> int:
        return next(iter(self.params.values())).shape[0]

    def __len__(self) -> int:
        return self.size

    def replace(self, params: Params) -> Population:
        """The same population with new parameters (no copies)."""
        out = copy.copy(self)
        out.params = params
        return out

    # ------------------------------------------------------------------ weight space
    def features(self, tensors: Params | None = None) -> WeightSpaceFeatures:
        """Views of the parameters (or of ``tensors`` stacked like them, e.g. gradients) as
        ``(P, 1, ...)`` weight-space features; bias-free layers read as zeros."""
        return layer_features(self._layers, self.params if tensors is None else tensors)

    def params_from_features(self, feats: WeightSpaceFeatures) -> Params:
        """Inverse of :meth:`features` (views of ``feats``; bias slots of bias-free layers dropped)."""
        if feats.channels != 1 or feats.batch_size != self.size or len(feats) != len(self._layers):
            raise ValueError(f"features {feats!r} do not fit a population of {self.size} x {self.spec}")
        return {**self.params, **layer_params(self._layers, feats)}

    def to_modules(self) -> list[nn.Module]:
        """``P`` real modules carrying copies of the parameters (in the model's own coordinates)."""
        mods, params = [], self._effective(self.params)
        for k in range(self.size):
            m = copy.deepcopy(self.template).to_empty(device=next(iter(params.values())).device)
            m.load_state_dict({n: p[k] for n, p in params.items()})
            mods.append(m)
        return mods

    # ------------------------------------------------------------------ compute
    def _member_loss(self, params: Params, x: Tensor, y: Tensor) -> Tensor:
        loss = _LOSSES[self.loss](functional_call(self.template, self._effective(params), (x,)), y)
        return loss * self.loss_scale if self.loss_scale != 1.0 else loss

    def forward(self, x: Tensor, shared: bool = False) -> Tensor:
        """Outputs of every member: ``x`` is ``(P, N, ...)`` per member, or ``(N, ...)`` with
        ``shared=True``; returns ``(P, N, out)``."""
        fn = lambda p, xb: functional_call(self.template, p, (xb,))  # noqa: E731
        return vmap(fn, in_dims=(0, None if shared else 0))(self._effective(self.params), x)

    def loss_and_grad(self, x: Tensor, y: Tensor, params: Params | None = None) -> tuple[Tensor, Params]:
        """Per-member minibatch loss ``(P,)`` and gradients (stacked like ``params``) in one call;
        ``x: (P, batch, ...)``, ``y: (P, batch, ...)``.

        Plain MLPs (``Sequential`` of Flatten/Linear/elementwise activations) whose parameters do
        not require grad take a batched-GEMM fast path (the members are independent, so the
        gradient of the summed loss is every member's gradient); everything else, and calls that
        must stay differentiable in ``params``, use ``vmap(grad)``."""
        params = self.params if params is None else params
        if self.plan is not None and not any(p.requires_grad for p in params.values()):
            if not torch.is_inference_mode_enabled():
                return mlp_loss_and_grad(self.plan, params, x, y, self.scales, self.loss_scale)
        grads, loss = vmap(grad_and_value(self._member_loss))(params, x, y)
        return loss, grads

    def sample_batch(
        self, x: Tensor, y: Tensor, batch_size: int, generator: torch.Generator | None = None
    ) -> tuple[Tensor, Tensor]:
        """An independent random minibatch for every member: ``(P, batch_size, ...)``."""
        idx = self.batch_indices(len(x), batch_size, generator).to(x.device)
        return x[idx], y[idx]

    def batch_indices(self, n: int, batch_size: int, generator: torch.Generator | None = None) -> Tensor:
        """The example indices ``(P, batch_size)`` of :meth:`sample_batch` (drawn on the CPU: the
        same draws on any device)."""
        return torch.randint(n, (self.size, batch_size), generator=generator)

    @torch.no_grad()
    def evaluate(self, x: Tensor, y: Tensor, batch_size: int = 2048) -> dict[str, Tensor]:
        """Mean loss and (for classification) accuracy of every member on shared data: ``(P,)``.
        The loss is the model's own (without a training ``loss_scale``)."""
        dev = next(iter(self.params.values())).device
        total_loss = torch.zeros(self.size, device=dev)
        correct = torch.zeros(self.size, device=dev)
        for i in range(0, len(x), batch_size):
            xb, yb = x[i : i + batch_size], y[i : i + batch_size]
            out = self.forward(xb, shared=True)  # (P, b, out)
            if self.loss == "cross_entropy":
                lp = F.cross_entropy(out.flatten(0, 1), yb.repeat(self.size), reduction="none")
                total_loss += lp.view(self.size, -1).sum(1)
                correct += (out.argmax(-1) == yb).float().sum(1)
            else:
                total_loss += F.mse_loss(out, yb.expand_as(out), reduction="none").flatten(1).mean(1) * len(xb)
        result = {"loss": total_loss / len(x)}
        if self.loss == "cross_entropy":
            result["accuracy"] = correct / len(x)
        return result
