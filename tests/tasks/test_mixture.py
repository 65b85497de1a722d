"""Task mixtures and task augmentation: seeded, reproducible, function-preserving, disjoint from
the held-out suite."""

from collections import Counter
from pathlib import Path

import pytest
import torch

from nfopt.tasks import TaskMixture, TaskSpecError, load_suite_tasks, load_tasks, tasks_dir

MIXTURES = sorted(p.stem for p in tasks_dir().glob("mix_*.yaml"))

TINY_MIX = """
kind: mixture
name: tiny_mix
families:
  - family: digits_mlp
    weight: 3
  - family: teacher_student
    weight: 1
augment: {prob: 1.0, reparam: [0.1, 10.0], reparam_tensor: [0.5, 2.0], loss_scale: [0.1, 10.0]}
"""


@pytest.fixture
def tiny_mix(tmp_path) -> TaskMixture:
    p = tmp_path / "tiny_mix.yaml"
    p.write_text(TINY_MIX)
    return load_tasks(p)


def test_shipped_mixtures_exist_and_load():
    assert "mix_small" in MIXTURES
    for name in MIXTURES:
        mix = load_tasks(name)
        assert isinstance(mix, TaskMixture) and len(mix.families()) >= 5


def test_mixture_sampling_is_seeded_and_follows_the_weights(tiny_mix):
    a, b = tiny_mix.sample(7), tiny_mix.sample(7)
    assert a == b and a.name == "tiny_mix/7" and a.seed == 7
    tasks = [tiny_mix.sample(s) for s in range(200)]
    counts = Counter(t.family for t in tasks)
    assert set(counts) == {"digits_mlp", "teacher_student"}
    assert 2.0 < counts["digits_mlp"] / counts["teacher_student"] < 4.5  # weights 3 : 1
    assert len({t.reparam for t in tasks}) == 200  # every task its own reparameterisation
    assert all(0.1 * 0.5 <= s <= 10 * 2 for t in tasks for s in t.reparam)
    assert all(tiny_mix.could_draw(t) for t in tasks[:20])


def test_augmentation_changes_the_problem_not_the_function(tiny_mix):
    task = next(t for t in (tiny_mix.sample(s) for s in range(50)) if t.family == "digits_mlp")
    plain_task = type(task)(**{**task.__dict__, "reparam": None, "loss_scale": 1.0})
    aug, plain = task.population(3, seed=1), plain_task.population(3, seed=1)
    d = task.dataset
    xb, yb = aug.sample_batch(d.x_train, d.y_train, 32, torch.Generator().manual_seed(0))
    torch.testing.assert_close(aug.forward(xb), plain.forward(xb))  # same networks
    assert not all(torch.equal(aug.params[k], plain.params[k]) for k in aug.params)  # other coordinates
    la, ga = aug.loss_and_grad(xb, yb)
    lp, gp = plain.loss_and_grad(xb, yb)
    torch.testing.assert_close(la, lp * task.loss_scale)
    for name, s in zip(plain.params, task.reparam):
        torch.testing.assert_close(ga[name], gp[name] * s * task.loss_scale, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(aug.evaluate(d.x_test, d.y_test)["loss"], plain.evaluate(d.x_test, d.y_test)["loss"])
    # the vmap(grad) path (CNNs, differentiable calls) agrees with the batched-MLP fast path
    params = {k: v.clone().requires_grad_() for k, v in aug.params.items()}
    lv, gv = aug.loss_and_grad(xb, yb, params)
    torch.testing.assert_close(lv.detach(), la)
    for k in ga:
        torch.testing.assert_close(gv[k].detach(), ga[k], rtol=1e-4, atol=1e-6)
    assert [m(xb[0]).shape for m in aug.to_modules()] == [plain.to_modules()[0](xb[0]).shape] * 3


@pytest.mark.parametrize("name", MIXTURES)
def test_heldout_suite_is_disjoint_from_every_mixture(name):
    mix = load_tasks(name)
    for t in load_suite_tasks("heldout"):
        assert not mix.could_draw(t), f"{t.name} could be drawn from {name}"


@pytest.mark.parametrize(
    "text, match",
    [
        (TINY_MIX.replace("reparam: [0.1, 10.0]", "reparam: [0, 10.0]"), r"augment.*reparam=\[0.0, 10.0\]"),
        (TINY_MIX.replace("weight: 3", "weight: -1"), r"families.0.weight"),
        (TINY_MIX.replace("family: digits_mlp", "family: no_such_family"), r"no_such_family.yaml: no such task"),
        (TINY_MIX.replace("prob: 1.0", "prob: 2"), r"augment.prob"),
    ],
)
def test_invalid_mixtures_name_the_file_and_field(tmp_path: Path, text, match):
    p = tmp_path / "bad_mix.yaml"
    p.write_text(text)
    with pytest.raises(TaskSpecError, match=f"(?s)bad_mix.yaml|{match}") as err:
        load_tasks(p)
    assert __import__("re").search(f"(?s){match}", str(err.value)), str(err.value)


def test_named_tasks_are_found_outside_the_repository(tmp_path, monkeypatch):
    """After `pip install` elsewhere: no ./tasks, no repository beside the package: the copy
    the wheel installs under <prefix>/share/nfopt/tasks."""
    import shutil
    import sys

    from nfopt.tasks import spec as task_spec

    share = tmp_path / "share" / "nfopt" / "tasks"
    shutil.copytree(task_spec.tasks_dir(), share)
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("NFOPT_TASKS_DIR", raising=False)
    monkeypatch.setattr(sys, "prefix", str(tmp_path))
    monkeypatch.setattr(task_spec, "__file__", str(tmp_path / "site-packages" / "nfopt" / "tasks" / "spec.py"))
    assert task_spec.tasks_dir() == share
    assert task_spec.load_suite("heldout").name == "heldout"
