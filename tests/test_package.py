import re
from pathlib import Path

import nfopt
import nfopt.nn
import nfopt.testing
import nfopt.weightspace

ROOT = Path(__file__).resolve().parents[1]


def test_public_api_is_explicit():
    for mod in (nfopt, nfopt.nn, nfopt.testing, nfopt.weightspace):
        assert mod.__all__, mod.__name__
        for name in mod.__all__:
            assert hasattr(mod, name), f"{mod.__name__}.{name}"


def test_readme_examples_run():
    """The README's API examples are executed verbatim, so they cannot rot."""
    text = (ROOT / "README.md").read_text()
    blocks = re.findall(r"<!-- example -->\s*```python\n(.*?)```", text, re.S)
    assert len(blocks) >= 2, "README.md lost its '<!-- example -->' python blocks"
    assert len(blocks) >= 3
    for block in blocks:
        namespace: dict = {}
        exec(compile(block, "README.md", "exec"), namespace)
        if "err" in namespace:  # the equivariance/invariance examples
            assert namespace["err"] < 1e-4
