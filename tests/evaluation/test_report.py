"""Reports: speed-up and win/loss semantics on synthetic curves; every output file written."""

import csv
import json

import pytest
import torch

from nfopt.evaluation import EvalSettings, OptimizerResult, TaskResult, speedup, summarize, win_fraction, write_report
from nfopt.evaluation.report import smooth


def _opt(name, curve, finals, lr=None, grid=None):
    return OptimizerResult(
        name=name,
        train_loss=finals,
        test_loss=finals,
        test_accuracy=[0.5] * len(finals),
        curve=[[v, v] for v in curve],  # two identical seeds
        ms_per_step=1.0,
        lr=lr,
        grid=grid,
    )


def _task(name="t", fast=0.5):
    steps = 100
    adam = [1.0 - 0.009 * t for t in range(steps)]  # reaches 0.109 at the last step
    learned = [max(0.1, 1.0 - 0.009 * t / fast) for t in range(steps)]  # same curve, 1/fast times faster
    never = [1.0] * steps
    return TaskResult(
        name,
        steps,
        [10_000, 10_001],
        [20_000, 20_001],
        [
            _opt("adam", adam, [0.11, 0.11], lr=1e-3, grid={1e-3: 0.11, 1e-2: 0.2}),
            _opt("fast", learned, [0.1, 0.1]),
            _opt("never", never, [1.0, 1.0]),
        ],
    )


def test_smooth_is_a_trailing_mean():
    torch.testing.assert_close(smooth(torch.tensor([2.0, 4.0, 6.0, 8.0]), 2), torch.tensor([2.0, 3.0, 5.0, 7.0]))


def test_speedup_is_the_fraction_of_steps_to_reach_adams_final_loss():
    tr = _task(fast=0.5)
    assert speedup(tr["fast"], tr["adam"]) == pytest.approx(0.5, abs=0.05)
    assert speedup(tr["never"], tr["adam"]) is None


def test_summary_marks_wins_losses_and_grid_edges():
    rows = summarize([_task("a"), _task("b")])
    by = {(r["task"], r["optimizer"]): r for r in rows}
    assert by["a", "adam"]["vs_ref"] == "reference" and by["a", "adam"]["lr_at_grid_edge"]
    assert by["a", "fast"]["vs_ref"] == "beats" and by["a", "never"]["vs_ref"] == "loses"
    assert win_fraction(rows, "fast") == 1.0 and win_fraction(rows, "never") == 0.0


def test_write_report_writes_every_output(tmp_path):
    settings = EvalSettings(seeds=2, tuning_seeds=2)
    paths = write_report([_task("a"), _task("b")], tmp_path / "out", settings, title="demo")
    for key in ("summary_csv", "per_seed_csv", "json", "curves", "speedups", "report"):
        assert paths[key].exists() and paths[key].stat().st_size > 0, key
    for png in ("curves", "speedups"):
        assert paths[png].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (tmp_path / "out" / "curves" / "a.png").exists()
    with open(paths["per_seed_csv"]) as f:
        per_seed = list(csv.DictReader(f))
    assert len(per_seed) == 2 * 3 * 2  # tasks x optimizers x seeds
    assert {r["seed"] for r in per_seed} == {"10000", "10001"}
    data = json.loads(paths["json"].read_text())
    assert data["settings"]["seeds"] == 2 and len(data["tasks"]) == 2 and len(data["summary"]) == 6
    md = paths["report"].read_text()
    assert "![loss curves](curves.png)" in md and "![speed-ups](speedups.png)" in md
    assert "**fast** beats tuned Adam on 100% of the tasks" in md
    assert "grid edge" in md
