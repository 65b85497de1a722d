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


def test_importing_everything_starts_no_ray_and_writes_nothing(tmp_path):
    import subprocess
    import sys

    code = (
        "import nfopt, nfopt.nn, nfopt.lopt, nfopt.tasks, nfopt.meta\n"
        "import nfopt.cluster, nfopt.track, nfopt.recipes.meta_train, nfopt.cli\n"
        "import ray, os; assert not ray.is_initialized(); print(sorted(os.listdir('.')))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
