"""The one protocol of every optimizer in nfopt (hand-designed or learned).

Purely functional over a population of ``P`` networks of one architecture, given as
``(P, 1, ...)`` :class:`~nfopt.weightspace.WeightSpaceFeatures`:

* ``state = opt.init(spec, population=P, dtype=..., device=..., num_steps=None)`` (``num_steps``:
  the training horizon when known; rules that do not use it ignore it)
* ``new_params, new_state = opt.update(theta, state, params, grads, loss)``

``theta`` holds meta-parameters (a dict of tensors, as from ``dict(rule.named_parameters())``,
or ``None`` for the rule's own), so estimators can perturb them (ES) or differentiate through
the update (truncated backprop); ``loss`` is the ``(P,)`` minibatch loss or ``None``.
States are dicts of tensors and features, and :func:`flatten_state`/:func:`unflatten_state`
turn them into flat ``{name: tensor}`` dicts for checkpoints.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import torch

from nfopt.weightspace import NetworkSpec, WeightSpaceFeatures

__all__ = ["UpdateRule", "flatten_state", "unflatten_state"]


@runtime_checkable
class UpdateRule(Protocol):
    def init(
        self, spec: NetworkSpec, population: int = 1, dtype=torch.float32, device=None, num_steps: int | None = None
    ) -> dict: ...

    def update(
        self, theta: Any, state: dict, params: WeightSpaceFeatures, grads: WeightSpaceFeatures, loss: Any = None
    ) -> tuple[WeightSpaceFeatures, dict]: ...


def flatten_state(state: dict) -> dict[str, torch.Tensor]:
    """``{"step": t, "m": features}`` -> ``{"step": t, "m.w0": ..., "m.b0": ..., ...}``."""
    flat = {}
    for key, value in state.items():
        if isinstance(value, WeightSpaceFeatures):
            for i, (w, b) in enumerate(value):
                flat[f"{key}.w{i}"], flat[f"{key}.b{i}"] = w, b
        else:
            flat[key] = torch.as_tensor(value)
    return flat


def unflatten_state(flat: dict[str, torch.Tensor]) -> dict:
    """Inverse of :func:`flatten_state`."""
    state: dict = {}
    groups: dict[str, dict[str, torch.Tensor]] = {}
    for name, t in flat.items():
        key, _, part = name.rpartition(".")
        if key and part[:1] in "wb" and part[1:].isdigit():
            groups.setdefault(key, {})[part] = t
        else:
            state[name] = t
    for key, parts in groups.items():
        n = len(parts) // 2
        state[key] = WeightSpaceFeatures([parts[f"w{i}"] for i in range(n)], [parts[f"b{i}"] for i in range(n)])
    return state
