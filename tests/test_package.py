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


def test_readme_example_runs():
    """The README's API example is executed verbatim, so it cannot rot."""
    text = (ROOT / "README.md").read_text()
    m = re.search(r"<!-- example -->\s*```python\n(.*?)```", text, re.S)
    assert m, "README.md lost its '<!-- example -->' python block"
    namespace: dict = {}
    exec(compile(m.group(1), "README.md", "exec"), namespace)
    assert namespace["err"] < 1e-5
