"""The learner and the run loop without Ray: resume equality, non-finite handling, the CLI."""

import math

import torch

from nfopt.cli import main
from nfopt.jobs import JobSpec
from nfopt.lopt import LearnedUpdateRule
from nfopt.meta import Learner, LocalPool, TaskProblem, TruncatedBackprop, Worker
from nfopt.recipes.meta_train import run_job
from nfopt.tasks import TaskFamily


def tiny_spec(tmp_path, **over) -> JobSpec:
    raw = {
        "name": "tiny",
        "task": "digits_mlp",
        "outer_steps": 4,
        "meta_model": {"kind": "nfn_np", "channels": 4, "layers": 2},
        "estimator": {"kind": "tbptt", "unroll": 2},
        "inner": {"population": 2, "tasks_per_worker": 1},
        "workers": {"count": 2},
        "checkpoint": {"every": 1, "dir": str(tmp_path / "runs" / "{name}")},
        "tracking": {"enabled": False},
    }
    raw.update(over)
    return JobSpec.model_validate(raw)


def test_stop_and_resume_gives_the_uninterrupted_theta(tmp_path):
    full = run_job(tiny_spec(tmp_path / "a"), use_ray=False, progress=False)
    part = run_job(tiny_spec(tmp_path / "b"), use_ray=False, progress=False, max_steps=2)
    assert part.steps == 2
    rest = run_job(tiny_spec(tmp_path / "b"), resume=True, use_ray=False, progress=False)
    assert rest.steps == 4
    a = torch.load(full.checkpoint, weights_only=True)["learner"]["theta"]
    b = torch.load(rest.checkpoint, weights_only=True)["learner"]["theta"]
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert full.optimizer_path.exists() and (full.optimizer_path.parent / "meta_loss.png").exists()


def test_meta_parameter_averaging_ships_the_mean_of_the_last_steps_and_survives_resume(tmp_path):
    """``meta_optimizer.average: 0.5`` over 4 outer steps: the saved rule is the mean of θ after
    steps 3 and 4 (not the last θ); stopping after step 3 and resuming gives the same file."""
    seen = []

    def keep(learner, pool, metrics):
        seen.append({k: v.clone() for k, v in learner.current_theta().items()})

    spec = tiny_spec(tmp_path / "a", meta_optimizer={"lr": 0.05, "average": 0.5})
    full = run_job(spec, use_ray=False, progress=False, on_step=keep)
    saved = torch.load(full.optimizer_path, weights_only=True)
    rule = LearnedUpdateRule.from_config(saved["config"])
    rule.load_state_dict(saved["state_dict"])
    got = dict(rule.named_parameters())
    for k in seen[-1]:
        assert torch.allclose(got[k], (seen[2][k] + seen[3][k]) / 2, atol=1e-6), k
    assert any(not torch.allclose(got[k], seen[-1][k]) for k in seen[-1])  # not simply the last θ
    assert saved["metadata"]["averaged_outer_steps"] == 2
    part = tiny_spec(tmp_path / "b", meta_optimizer={"lr": 0.05, "average": 0.5})
    run_job(part, use_ray=False, progress=False, max_steps=3)
    rest = run_job(part, resume=True, use_ray=False, progress=False)
    again = torch.load(rest.optimizer_path, weights_only=True)["state_dict"]
    for k, v in saved["state_dict"].items():
        assert torch.equal(v, again[k]), k


def test_a_fixed_validation_set_scores_the_rule_and_keeps_the_best_across_resume(tmp_path):
    """``validation`` every 2 outer steps (and at the last): ``val_loss`` in the history, the
    best-scoring rule in ``best_optimizer.pt`` (its metadata says which step and score), the
    score a deterministic function of θ, and a resumed run keeps the best it had."""
    from nfopt.evaluation import ValidationSet
    from nfopt.tasks import load_tasks

    val = {"tasks": 2, "networks": 2, "steps": 5, "every": 2}
    spec = tiny_spec(tmp_path / "a", outer_steps=3, validation=val, meta_optimizer={"lr": 0.05})
    full = run_job(spec, use_ray=False, progress=False)
    scores = {h["step"]: h["val_loss"] for h in full.history if "val_loss" in h}
    assert set(scores) == {2, 3} and all(math.isfinite(v) for v in scores.values())
    best = torch.load(full.checkpoint.parent / "best_optimizer.pt", weights_only=True)
    assert best["metadata"]["val_loss"] == min(scores.values())
    assert best["metadata"]["outer_steps"] == min(scores, key=scores.get)
    rule = LearnedUpdateRule.from_config(best["config"])
    rule.load_state_dict(best["state_dict"])
    val_set = ValidationSet.draw(load_tasks("digits_mlp"), tasks=2, networks=2, steps=5)
    assert val_set.score(rule) == best["metadata"]["val_loss"]  # deterministic
    part = tiny_spec(tmp_path / "b", outer_steps=3, validation=val, meta_optimizer={"lr": 0.05})
    run_job(part, use_ray=False, progress=False, max_steps=2)
    rest = run_job(part, resume=True, use_ray=False, progress=False)
    again = torch.load(rest.checkpoint.parent / "best_optimizer.pt", weights_only=True)["metadata"]
    assert again["val_loss"] == best["metadata"]["val_loss"]


def _one_damaged_task(damage):
    """A learner over one worker with one digits task whose inner parameters ``damage`` changed;
    returns ``(learner, worker, the task's seed before the step)``."""
    fam = TaskFamily.load("digits_mlp")
    rule = LearnedUpdateRule("nfn_np", meta_model={"channels": 4, "layers": 2})
    prob = TaskProblem(fam, rule, population=2, offsets=False)
    worker = Worker(lambda: prob, TruncatedBackprop(unroll=3), num_tasks=1, seed=0)
    inner = worker.states[0]["inner"]
    inner["params"] = inner["params"].map(damage)
    learner = Learner({k: v.detach() for k, v in rule.named_parameters()}, LocalPool([worker]), lr=1e-2)
    return learner, worker, inner["seed"]


def test_nonfinite_inner_training_resets_the_task_and_theta_stays_finite():
    learner, worker, seed_before = _one_damaged_task(lambda t: t.clone().fill_(float("nan")))  # a diverged task
    m = learner.step()
    assert m["nonfinite"] > 0
    assert worker.states[0]["inner"]["seed"] != seed_before and worker.states[0]["inner"]["step"] == 0
    assert all(torch.isfinite(v).all() for v in learner.current_theta().values())
    # its non-finite estimate is dropped and counted, never averaged into θ's update
    assert m["dropped_estimates"] == 1 and "meta_loss" not in m and "grad_norm" not in m


def test_cli_exit_codes(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\ntask: digits_mlp\nouter_steps: -1\n")
    assert main(["run", str(bad), "--no-ray"]) == 2
    good = tmp_path / "good.yaml"
    good.write_text(
        "name: cli\ntask: digits_mlp\nouter_steps: 2\nmeta_model: {kind: mlp, hidden: 4}\n"
        "estimator: {kind: pes, unroll: 2}\ninner: {population: 2, tasks_per_worker: 1}\n"
        f"checkpoint: {{every: 1, dir: '{tmp_path}/runs/{{name}}'}}\ntracking: {{enabled: false}}\n"
    )
    assert main(["run", str(good), "--no-ray", "--resume"]) == 3  # nothing to resume yet
    assert main(["run", str(good), "--no-ray"]) == 0
    assert "nfopt run cli" in capsys.readouterr().out


class _Boom:
    """Pickled into a planted checkpoint: unpickling it would create a marker file."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_a_planted_checkpoint_runs_no_code_on_resume(tmp_path):
    spec = tiny_spec(tmp_path)
    marker = tmp_path / "pwned"
    spec.checkpoint_dir.mkdir(parents=True)
    torch.save({"format": "nfopt.run/1", "learner": _Boom(str(marker))}, spec.checkpoint_dir / "latest.pt")
    assert main_run(spec, tmp_path, "--resume") == 2
    assert not marker.exists()


def main_run(spec, tmp_path, *flags) -> int:
    import yaml

    job = tmp_path / "job.yaml"
    job.write_text(yaml.safe_dump(spec.model_dump(mode="json")))
    return main(["run", str(job), "--no-ray", *flags])


def test_an_existing_run_is_never_replaced_without_overwrite(tmp_path, capsys):
    spec = tiny_spec(tmp_path, outer_steps=1)
    assert main_run(spec, tmp_path) == 0
    before = (spec.checkpoint_dir / "learned_optimizer.pt").read_bytes()
    capsys.readouterr()
    assert main_run(spec, tmp_path) == 5
    cap = capsys.readouterr()
    out = " ".join((cap.out + cap.err).split())
    assert "already holds a run" in out and "--resume" in out and "--overwrite" in out
    assert (spec.checkpoint_dir / "learned_optimizer.pt").read_bytes() == before
    assert main_run(spec, tmp_path, "--overwrite") == 0


def test_a_bad_task_fails_before_any_worker_starts(tmp_path, capsys):
    bad = tmp_path / "bad_task.yaml"
    bad.write_text("name: b\ndataset: {name: digits}\nmodel: {kind: mlp}\nbatch_size: 8\ncolour: red\n")
    spec = tiny_spec(tmp_path, task=str(bad))
    assert main_run(spec, tmp_path) == 2
    cap = capsys.readouterr()
    out = cap.out + cap.err
    assert "bad_task.yaml" in out and "colour" in out
    assert not spec.checkpoint_dir.exists()


def test_an_unknown_pretrained_name_fails_before_meta_training(tmp_path, capsys):
    spec = tiny_spec(tmp_path, evaluate={"suite": "digits_quick", "pretrained": ["no_such_optimizer"]})
    assert main_run(spec, tmp_path) == 2
    cap = capsys.readouterr()
    out = " ".join((cap.out + cap.err).split())
    assert "evaluate.pretrained" in out and "nfn_np_small" in out
    assert not spec.checkpoint_dir.exists()


def test_init_from_starts_at_that_optimizer_and_carries_its_budget(tmp_path, capsys):
    first = run_job(tiny_spec(tmp_path / "a", outer_steps=2), use_ray=False, progress=False)
    spent = torch.load(first.optimizer_path, weights_only=True)["metadata"]["inner_steps"]
    assert spent > 0
    spec = tiny_spec(tmp_path / "b", outer_steps=1, init_from=str(first.optimizer_path))
    second = run_job(spec, use_ray=False, progress=False)
    meta = torch.load(second.optimizer_path, weights_only=True)["metadata"]
    assert meta["init_from"] == str(first.optimizer_path) and meta["inner_steps"] > spent
    # the second run's first step started from the first run's θ: its θ differs from a fresh start's
    fresh = run_job(tiny_spec(tmp_path / "c", outer_steps=1), use_ray=False, progress=False)
    a = torch.load(second.checkpoint, weights_only=True)["learner"]["theta"]
    b = torch.load(fresh.checkpoint, weights_only=True)["learner"]["theta"]
    assert any(not torch.equal(a[k], b[k]) for k in a)
    # another rule, or a name that is not shipped: exit 2 before anything runs, naming the field
    other = tiny_spec(tmp_path / "d", init_from=str(first.optimizer_path), meta_model={"kind": "mlp", "hidden": 8})
    assert main_run(other, tmp_path) == 2
    out = " ".join(" ".join(capsys.readouterr()).split())
    assert "init_from" in out and "kind" in out and not other.checkpoint_dir.exists()
    unknown = tiny_spec(tmp_path / "e", init_from="no_such_optimizer")
    assert main_run(unknown, tmp_path) == 2
    out = " ".join(" ".join(capsys.readouterr()).split())
    assert "init_from" in out and "nfn_np_small" in out


def test_a_blown_up_rule_is_an_error_not_a_success(tmp_path, capsys):
    """step_mult 1e6: every step saturates the bound, the meta-gradient is exactly 0, nothing
    trains; the run stops (exit 6) instead of saving an untrained optimizer with exit 0."""
    spec = tiny_spec(
        tmp_path, outer_steps=8, meta_model={"kind": "nfn_np", "channels": 4, "layers": 2, "step_mult": 1e6}
    )
    assert main_run(spec, tmp_path) == 6
    out = " ".join(" ".join(capsys.readouterr()).split())
    assert "usable meta-gradient" in out
    assert not (spec.checkpoint_dir / "learned_optimizer.pt").exists()


def test_no_live_estimate_is_an_error(tmp_path):
    import pytest

    from nfopt.recipes.meta_train import MAX_IDLE_STEPS, NoProgressError

    class DeadPool:  # every worker failed: no estimate at all
        size = 1

        def estimate_all(self, theta):
            return [None]

        def get_states(self):
            return [None]

    seen = []
    with pytest.raises(NoProgressError, match="no live estimate"):
        run_job(
            tiny_spec(tmp_path, outer_steps=50),
            use_ray=False,
            progress=False,
            on_step=lambda learner, pool, m: seen.append(m),
            _pool=DeadPool(),
        )
    assert len(seen) == MAX_IDLE_STEPS and all(m["usable_gradient"] == 0 for m in seen)


def test_unreachable_tracking_server_and_cluster_fail_in_seconds(tmp_path, capsys):
    import time

    spec = tiny_spec(tmp_path, tracking={"enabled": True, "uri": "http://127.0.0.1:9", "experiment": "e"})
    t0 = time.monotonic()
    assert main_run(spec, tmp_path) == 4
    assert time.monotonic() - t0 < 30
    assert "did not answer" in " ".join(" ".join(capsys.readouterr()).split())
    import yaml

    job = tmp_path / "job2.yaml"
    job.write_text(yaml.safe_dump(tiny_spec(tmp_path / "b").model_dump(mode="json")))
    t0 = time.monotonic()
    assert main(["run", str(job), "--address", "127.0.0.1:9"]) == 4
    assert time.monotonic() - t0 < 30
    assert "no Ray cluster answers" in " ".join(" ".join(capsys.readouterr()).split())


def test_a_damaged_or_foreign_checkpoint_is_a_clear_error(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "1000")  # rich wraps long paths mid-word
    spec = tiny_spec(tmp_path, outer_steps=1)
    assert main_run(spec, tmp_path) == 0
    latest = spec.checkpoint_dir / "latest.pt"
    good = latest.read_bytes()
    cases = {
        "truncated": (lambda: latest.write_bytes(good[: len(good) // 2]), spec, "not a checkpoint nfopt can load"),
        "random": (lambda: latest.write_bytes(bytes(range(256)) * 8), spec, "not a checkpoint nfopt can load"),
        "other channels": (
            lambda: latest.write_bytes(good),
            tiny_spec(tmp_path, outer_steps=2, meta_model={"kind": "nfn_np", "channels": 8, "layers": 2}),
            "meta_model: checkpoint",
        ),
        "other task": (
            lambda: latest.write_bytes(good),
            tiny_spec(tmp_path, outer_steps=2, task="mnist1d_mlp"),
            "task: checkpoint",
        ),
    }
    for name, (damage, job, message) in cases.items():
        damage()
        capsys.readouterr()
        assert main_run(job, tmp_path, "--resume") == 2, name
        out = " ".join(" ".join(capsys.readouterr()).split())
        assert "latest.pt" in out and message in out and "Traceback" not in out, (name, out)


def test_a_blown_up_but_finite_task_is_reset():
    learner, worker, seed_before = _one_damaged_task(lambda t: t * 50)  # finite, loss far above its start
    m = learner.step()
    assert m["nonfinite"] > 0 and math.isfinite(m["meta_loss"])
    assert worker.states[0]["inner"]["seed"] != seed_before and worker.states[0]["inner"]["step"] == 0


def test_validate_and_set_check_a_job_without_running_it(tmp_path, capsys, monkeypatch):
    import yaml

    monkeypatch.setenv("COLUMNS", "1000")
    job = tmp_path / "job.yaml"
    job.write_text(yaml.safe_dump(tiny_spec(tmp_path).model_dump(mode="json")))
    assert main(["validate", str(job)]) == 0
    assert "valid" in capsys.readouterr().out and not (tmp_path / "runs").exists()
    assert main(["validate", str(job), "--set", "meta_optimizer.lr=1e-3", "--set", "inner.population=3"]) == 0
    for bad, message in [
        ("meta_optimizer.lr=.inf", "meta_optimizer.lr: Input should be a finite number"),
        ("nope=1", "'nope' is not a job field"),
        ("outer_steps", "write FIELD=VALUE"),
        ("task=no_such_task", "no such task file"),
    ]:
        assert main(["validate", str(job), "--set", bad]) == 2, bad
        assert message in capsys.readouterr().err, bad
    assert main(["run", str(job), "--no-ray", "--set", "outer_steps=1"]) == 0
    assert torch.load(tmp_path / "runs" / "tiny" / "latest.pt", weights_only=True)["learner"]["step"] == 1


def test_a_schedule_phase_trains_only_the_named_meta_parameters_from_a_schedule_free_optimizer(tmp_path, capsys):
    """Phase 2 of a pretraining (Celo-style): start from a rule without a schedule, add one, and
    meta-train only the schedule and the global step by ES over whole runs; the rest of θ stays."""
    first = run_job(tiny_spec(tmp_path / "a", outer_steps=1), use_ray=False, progress=False)
    model = {"kind": "nfn_np", "channels": 4, "layers": 2, "schedule_knots": 3}
    spec = tiny_spec(
        tmp_path / "b",
        outer_steps=2,
        init_from=str(first.optimizer_path),
        meta_model=model,
        estimator={"kind": "episode_es", "sigma": 0.2, "params": ["log_schedule", "log_step_scale"]},
        inner={"population": 2, "tasks_per_worker": 1, "meta_loss": "tail", "horizon": 6},
        meta_optimizer={"lr": 0.1},
    )
    second = run_job(spec, use_ray=False, progress=False)
    before = torch.load(first.optimizer_path, weights_only=True)["state_dict"]
    after = torch.load(second.optimizer_path, weights_only=True)["state_dict"]
    assert set(after) == set(before) | {"log_schedule"}
    assert all(torch.equal(before[k], after[k]) for k in before if k != "log_step_scale")
    assert not torch.equal(after["log_schedule"], torch.zeros(3)) and after["log_step_scale"] != 0
    loaded = LearnedUpdateRule.from_config(torch.load(second.optimizer_path, weights_only=True)["config"])
    assert loaded.schedule_knots == 3
    bad = tiny_spec(tmp_path / "c", estimator={"kind": "episode_es", "params": ["no_such_thing"]})
    assert main_run(bad, tmp_path) == 2
    out = " ".join(" ".join(capsys.readouterr()).split())
    assert "estimator.params" in out and "no_such_thing" in out and "log_step_scale" in out


def test_a_width_phase_adds_and_trains_only_the_width_exponent(tmp_path):
    """Phase 3 of a pretraining: add a width exponent to a trained rule and meta-train only it."""
    first = run_job(tiny_spec(tmp_path / "a", outer_steps=1), use_ray=False, progress=False)
    spec = tiny_spec(
        tmp_path / "b",
        outer_steps=2,
        init_from=str(first.optimizer_path),
        meta_model={"kind": "nfn_np", "channels": 4, "layers": 2, "width_exponent": True},
        estimator={"kind": "episode_es", "sigma": 0.2, "params": ["width_alpha"]},
        inner={"population": 2, "tasks_per_worker": 1, "meta_loss": "tail", "horizon": 6},
        meta_optimizer={"lr": 0.1},
    )
    second = run_job(spec, use_ray=False, progress=False)
    before = torch.load(first.optimizer_path, weights_only=True)["state_dict"]
    saved = torch.load(second.optimizer_path, weights_only=True)
    after = saved["state_dict"]
    assert set(after) == set(before) | {"width_alpha"}
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert after["width_alpha"] != 0
    assert LearnedUpdateRule.from_config(saved["config"]).width_exponent


def test_pools_satisfy_the_worker_pool_protocol():
    from nfopt.cluster import RayPool
    from nfopt.meta import WorkerPool

    assert isinstance(LocalPool([]), WorkerPool)
    assert all(callable(getattr(RayPool, m)) for m in ("estimate_all", "get_states", "set_states"))
    assert isinstance(RayPool.size, property)


def test_validate_checks_init_from_and_estimator_params_without_running(tmp_path, capsys):
    import yaml

    for over, words in (
        ({"init_from": "no_such_optimizer"}, ("init_from", "nfn_np_small")),
        ({"estimator": {"kind": "tbptt", "params": ["nothing_like_it"]}}, ("estimator.params", "nothing_like_it")),
    ):
        spec = tiny_spec(tmp_path, **over)
        job = tmp_path / "job.yaml"
        job.write_text(yaml.safe_dump(spec.model_dump(mode="json")))
        assert main(["validate", str(job)]) == 2
        out = " ".join(" ".join(capsys.readouterr()).split())
        assert all(w in out for w in words) and not spec.checkpoint_dir.exists()
