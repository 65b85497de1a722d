from pathlib import Path

import pytest

from nfopt.tasks import TaskFamily, TaskSpecError, load_suite, load_suite_tasks, load_task_family, tasks_dir
from nfopt.tasks.spec import load_task_source

FAMILIES = ["digits_mlp", "fashion8_mlp32", "fashion_cnn", "mnist1d_mlp", "teacher_student"]


@pytest.mark.parametrize("name", FAMILIES)
def test_shipped_families_validate_and_sample_reproducibly(name):
    fam = TaskFamily.load(name)
    a, b, c = fam.sample(1), fam.sample(1), fam.sample(2)
    assert a == b and a.name == f"{name}/1"
    assert (a.widths, a.activation, a.horizon) == (b.widths, b.activation, b.horizon)
    lo, hi = fam.spec.horizon
    assert lo <= c.horizon <= hi


def test_fashion8_mlp32_is_the_standard_task():
    t = TaskFamily.load("fashion8_mlp32").sample(0)
    assert (t.widths, t.activation, t.batch_size) == ((32,), "relu", 128)


def test_every_yaml_in_tasks_validates():
    root = tasks_dir()
    files = sorted(root.glob("*.yaml"))
    assert {f.stem for f in files} >= set(FAMILIES)
    for f in files:
        load_task_source(f)  # a family, or a mixture (kind: mixture)
    for f in sorted((root / "suites").glob("*.yaml")):
        load_suite(f)


def test_heldout_suite_differs_from_training_families():
    tasks = load_suite_tasks("heldout")
    assert len(tasks) >= 8
    train = [TaskFamily.load(n) for n in ("digits_mlp", "fashion8_mlp32")]
    for t in tasks:
        for fam in train:  # could_draw ignores horizons: stricter than comparing them too
            assert not fam.could_draw(t), f"{t.name} could be drawn from {fam.name}"
    kinds = {(t.spec.dataset.name, t.activation, len(t.widths)) for t in tasks}
    assert len(kinds) >= 6


def _write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "bad.yaml"
    p.write_text(text)
    return p


BASE = "name: x\ndataset: {name: digits}\nmodel: {kind: mlp}\nbatch_size: 8\n"


@pytest.mark.parametrize(
    "text, match",
    [
        (BASE + "colour: red\n", r"bad.yaml.*colour: Extra inputs are not permitted"),
        (BASE.replace("{kind: mlp}", "{kind: mlp, width: [64, 16]}"), r"model.mlp.*width=\[64, 16\]"),
        (BASE.replace("{kind: mlp}", "{kind: mlp, depth: 3}"), r"model.mlp.depth"),
        (BASE.replace("batch_size: 8", "batch_size: 0"), r"batch_size=\[0, 0\]: need 1 <= min <= max"),
        (BASE + "loss: mse\n", r"classification; use loss: cross_entropy"),
        (BASE.replace("digits}", "mnist1d}").replace("mlp}", "cnn}"), r"cnn needs an image dataset"),
        (BASE.replace("digits", "imagenet"), r"dataset.name"),
        ("name: [unclosed\n", r"not valid YAML"),
        ("- a\n- b\n", r"expected a mapping"),
    ],
)
def test_invalid_specs_name_the_file_and_field(tmp_path, text, match):
    with pytest.raises(TaskSpecError, match=f"(?s){match}"):
        load_task_family(_write(tmp_path, text))


def test_missing_file():
    with pytest.raises(TaskSpecError, match="no such task file"):
        load_task_family("does_not_exist")
