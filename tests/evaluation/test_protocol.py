"""The evaluation protocol: tuning seeds are never evaluation seeds, tuning picks the best grid
point, every optimizer sees the same initialisations."""

import pytest
import torch

from nfopt.evaluation import protocol
from nfopt.evaluation.protocol import EvalSettings, evaluate_suite, evaluate_task, tune_lr
from nfopt.lopt import Adam, LearnedUpdateRule
from nfopt.tasks import load_suite_tasks

SMALL = EvalSettings(seeds=2, tuning_seeds=2, adam_lrs=(1e-3, 1e-2, 1e-1), sgd_lrs=(1e-2, 1e-1), steps=15)


def test_tuning_seeds_and_batches_are_never_used_for_evaluation(tiny_suite, monkeypatch):
    calls = []
    real = protocol.train_population

    def spy(rule, task, seeds, steps=None, batch_seed=0):
        calls.append((batch_seed, list(seeds)))
        return real(rule, task, seeds, steps, batch_seed)

    monkeypatch.setattr(protocol, "train_population", spy)
    task = load_suite_tasks(tiny_suite)[0]
    result = evaluate_task(task, {"learned": LearnedUpdateRule("mlp", meta_model={"hidden": 4})}, SMALL)
    tuning = [c for c in calls if c[0] == protocol.TUNE_BATCH_SEED]
    evaluation = [c for c in calls if c[0] == protocol.EVAL_BATCH_SEED]
    assert len(tuning) == 2 and len(evaluation) == 4  # adam + sgd tuned; adam, sgd, adam@1e-3, learned evaluated
    assert protocol.TUNE_BATCH_SEED != protocol.EVAL_BATCH_SEED
    tuned_on = {s for _, seeds in tuning for s in seeds}
    evaluated_on = {s for _, seeds in evaluation for s in seeds}
    assert tuned_on == set(result.tuning_seeds) and evaluated_on == set(result.eval_seeds)
    assert not tuned_on & evaluated_on
    assert all(seeds == result.eval_seeds for _, seeds in evaluation)  # same initialisations for all


def test_tune_lr_picks_the_grid_point_with_the_lowest_mean_loss(tiny_suite):
    task = load_suite_tasks(tiny_suite)[0]
    lrs = [1e-5, 1e-2, 10.0]  # far too small, sensible, divergent
    best, grid = tune_lr(lambda lr: Adam(lr=lr), task, lrs, [1, 2], steps=20)
    assert best == 1e-2 and grid[1e-2] == min(grid.values())
    assert set(grid) == set(lrs)


def test_evaluate_task_reports_every_optimizer(tiny_suite):
    tasks = load_suite_tasks(tiny_suite)
    results = evaluate_suite(tasks, {"learned": LearnedUpdateRule("mlp", meta_model={"hidden": 4})}, SMALL)
    assert [r.task for r in results] == ["digits_a", "teacher"]
    for tr in results:
        assert [r.name for r in tr.results] == ["adam", "sgd", "adam_1e-3", "learned"]
        for r in tr.results:
            assert len(r.train_loss) == 2 and torch.tensor(r.curve).shape == (15, 2)
            assert r.ms_per_step > 0
        assert tr["adam"].lr in SMALL.adam_lrs and tr["sgd"].lr in SMALL.sgd_lrs and tr["learned"].lr is None
        assert tr["adam_1e-3"].lr == 1e-3
    assert results[0]["adam"].test_accuracy is not None and results[1]["adam"].test_accuracy is None  # mse task


def test_the_untrained_learned_rule_equals_adam_at_its_base_lr(tiny_suite):
    # the rule is Adam(lr=step_mult) before meta-training: evaluation must reproduce that exactly
    task = load_suite_tasks(tiny_suite)[0]
    rule = LearnedUpdateRule("mlp", meta_model={"hidden": 4}, step_mult=1e-2)
    a = protocol.train_population(rule, task, [5, 6], 10)
    b = protocol.train_population(Adam(lr=1e-2), task, [5, 6], 10)
    # equal per step to 1e-7; ten steps let rounding drift
    torch.testing.assert_close(a["train_loss"], b["train_loss"], rtol=2e-3, atol=1e-5)


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [("baselines", ("adam", "rmsprop"), "baselines"), ("adam_lrs", (), "adam_lrs"), ("seeds", 0, "seeds")],
)
def test_bad_settings_name_the_field(field, value, message):
    with pytest.raises(ValueError, match=message):
        EvalSettings(**{field: value})


def test_untrained_baseline_is_the_rules_own_initialisation(tiny_suite):
    from nfopt.evaluation.report import summarize
    from nfopt.recipes.evaluate import with_untrained

    torch.manual_seed(0)
    trained = LearnedUpdateRule("nfn_np", meta_model={"channels": 4, "layers": 2}, step_mult=1e-2)
    with torch.no_grad():
        for p in trained.meta_model.parameters():
            p.add_(0.2 * torch.randn_like(p))  # "meta-trained": its head is no longer zero
    opts = with_untrained({"nfn": trained, "adam": Adam(lr=1e-3)})
    assert list(opts) == ["nfn", "nfn (untrained)", "adam"]
    two = with_untrained({"a": trained, "b": LearnedUpdateRule("mlp", meta_model={"hidden": 4}, step_mult=1e-2)})
    assert list(two) == ["a", "untrained (a, b)", "b"]  # one row: both initialisations compute Adam(1e-2)
    init = opts["nfn (untrained)"]
    assert init.config() == trained.config() and init is not trained
    task = load_suite_tasks(tiny_suite)[0]
    a = protocol.train_population(init, task, [5, 6], 10)
    b = protocol.train_population(Adam(lr=1e-2), task, [5, 6], 10)
    torch.testing.assert_close(a["train_loss"], b["train_loss"], rtol=2e-3, atol=1e-5)
    rows = summarize(evaluate_suite([task], {"nfn": trained}, SMALL))
    assert all(r["diverged"] in (0, 1, 2) for r in rows) and "diverged" in rows[0]
