"""A wheel of nfopt installed into a fresh virtualenv outside the repository: the CLI runs,
named suites and task families come from the wheel's package data (``share/nfopt/tasks``), and
shipped optimizers load by name."""

import json
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # builds a wheel and a virtualenv: ~30 s

ROOT = Path(__file__).resolve().parents[1]


def _venv(tmp_path: Path) -> Path:
    """A fresh virtualenv whose only view of this environment is its third-party packages (a
    plain path entry: the editable nfopt's ``.pth`` finder there is not run)."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    site = Path(
        subprocess.run(
            [str(venv / "bin" / "python"), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    )
    (site / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return venv


def test_wheel_in_a_fresh_venv_evaluates_a_named_suite_from_anywhere(tmp_path):
    dist = tmp_path / "dist"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(dist), str(ROOT)],
        check=True,
        capture_output=True,
    )
    (wheel,) = dist.glob("nfopt-*.whl")
    venv = _venv(tmp_path)
    py = str(venv / "bin" / "python")
    subprocess.run([py, "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)], check=True)
    work = tmp_path / "elsewhere"  # no tasks/ here, not the repository
    work.mkdir()
    where = subprocess.run(
        [py, "-c", "import nfopt, nfopt.tasks as t; print(nfopt.__file__); print(t.tasks_dir())"],
        cwd=work,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert str(venv) in where[0] and str(venv) in where[1]  # the installed copy and its package data
    nfopt_cli = str(venv / "bin" / "nfopt")
    assert subprocess.run([nfopt_cli, "--version"], capture_output=True, text=True, check=True).stdout.startswith(
        "nfopt 0."
    )
    listed = subprocess.run([nfopt_cli, "optimizers", "list"], cwd=work, capture_output=True, text=True, check=True)
    assert "nfn_np_small" in listed.stdout
    args = "evaluate --suite digits_quick --tasks digits_wide --optimizer nfn_np_small --baselines adam"
    args += " --adam-lrs 0.01 --steps 5 --seeds 1 --tuning-seeds 1 --no-ray --no-track --out report"
    out = subprocess.run(
        [nfopt_cli, *args.split()],
        cwd=work,
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    results = json.loads((work / "report" / "results.json").read_text())
    (task,) = results["tasks"]
    assert task["task"] == "digits_wide" and task["steps"] == 5
    names = {r["name"] for r in task["results"]}
    assert "adam" in names and any(n.startswith("nfn_np_small") for n in names), names
