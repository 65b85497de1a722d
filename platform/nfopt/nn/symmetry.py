"""Which neuron permutations a weight-space layer respects.

``"np"``: every neuron layer, inputs and outputs included, may be permuted (the symmetry of a
weight space taken as a set of neuron layers; NP layers, pools over all neurons). ``"hnp"``:
only hidden neurons (the true symmetry of a network; layers that tell input and output neurons
apart: HNP layers, IO embeddings and encodings). Layers declare it as a class attribute
``symmetry`` (an instance may narrow it, e.g. ``NPLinear(io_embed=True)``); a model made of
layers has the smallest group among its parts (:func:`symmetry_of`);
:func:`nfopt.testing.assert_equivariant` tests a layer under its own.
"""

from __future__ import annotations

from typing import Literal

from torch import nn

__all__ = ["Symmetry", "symmetry_of"]

Symmetry = Literal["np", "hnp"]


def symmetry_of(module: nn.Module) -> Symmetry:
    """``module``'s declared symmetry; for a composite, ``"hnp"`` if any part is HNP-only."""
    own = getattr(module, "symmetry", None)  # an instance may narrow its class's (NPLinear(io_embed=True))
    parts = [getattr(m, "symmetry", None) for m in module.modules()]
    if own == "hnp" or "hnp" in parts:
        return "hnp"
    return "np"
