"""Hypothesis strategies over random MLP/CNN weight spaces (depth 1-5, widths 1-16,
kernels 1x1-3x3, channels 1-4)."""

import random

from hypothesis import strategies as st

from nfopt.testing import random_spec


@st.composite
def specs(draw, conv=None, depth=(1, 5), width=(1, 16)):
    seed = draw(st.integers(0, 2**31 - 1))
    return random_spec(random.Random(seed), depth=depth, width=width, conv=conv)


channels = st.integers(1, 4)
