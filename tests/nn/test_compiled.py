"""nfopt's torch.compile helpers (nfopt.nn.compiled)."""

import torch

from nfopt.nn.compiled import compile_bound


class _Scale:
    def __init__(self, value: float) -> None:
        self.value = value


def _times(scale: _Scale, x: torch.Tensor) -> torch.Tensor:
    return x * scale.value


def test_bound_functions_keep_their_own_graphs_under_tensor_only_guards():
    """Two compiled functions of one Python function with different constants and same-shaped
    tensors: each runs its own graph (with ``functools.partial`` the second ran the first's)."""
    x = torch.ones(3)
    two = compile_bound(_times, _Scale(2.0), device="cpu")
    three = compile_bound(_times, _Scale(3.0), device="cpu")
    for _ in range(2):
        torch.testing.assert_close(two(x), 2 * x)
        torch.testing.assert_close(three(x), 3 * x)
