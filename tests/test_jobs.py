from pathlib import Path

import pytest

from nfopt.jobs import EXPERIMENTS, JobSpecError, load_job

ROOT = Path(__file__).resolve().parents[1]
BASE = "name: j\ntask: digits_mlp\nouter_steps: 3\n"


def test_shipped_jobs_validate_and_live_by_what_runs_them():
    from nfopt.recipes.experiments import load_experiment

    kinds = set()
    assert sorted(p.name for p in (ROOT / "jobs").iterdir() if p.is_dir()) == ["cluster", "experiments", "meta"]
    assert not list((ROOT / "jobs").glob("*.yaml"))
    for f in sorted((ROOT / "jobs" / "experiments").glob("*.yaml")):  # nfopt zoo / nfopt inr
        spec = load_experiment(f)
        kinds.add(spec.experiment)
        assert spec.name
        command = EXPERIMENTS[spec.experiment].command
        with pytest.raises(JobSpecError, match=f"experiment spec .* run it with `{command} "):
            load_job(f)  # `nfopt run` on an experiment names the command that runs it
    for f in sorted((ROOT / "jobs" / "meta").glob("*.yaml")):  # nfopt run / tune / submit
        spec = load_job(f)
        assert spec.outer_steps > 0 and spec.name
    assert kinds == {"zoo", "generalization", "tickets", "inr_fit", "inr_classify", "inr_edit"}


@pytest.mark.parametrize(
    "text, match",
    [
        (BASE + "colour: red\n", r"colour: Extra inputs are not permitted"),
        (BASE + "estimator: {kind: sgd}\n", r"estimator.kind: Input should be 'es', 'pes', 'tbptt' or 'episode_es'"),
        (BASE + "estimator: {params: []}\n", r"estimator.params: List should have at least 1 item"),
        (BASE + "estimator: {params: [a/b]}\n", r"estimator.params.0: String should match pattern"),
        (BASE + "meta_model: {schedule_knots: 1}\n", r"schedule_knots=1: use 0"),
        (BASE + "inner: {meta_loss: best}\n", r"inner.meta_loss: Input should be 'mean', 'log', 'final' or 'tail'"),
        (BASE + "estimator: {sigma: -1}\n", r"estimator.sigma: Input should be greater than 0"),
        (BASE + "estimator: {unroll: 0}\n", r"estimator.unroll"),
        ("name: j\ntask: digits_mlp\n", r"outer_steps: Field required"),
        (BASE + "workers: {count: 0}\n", r"workers.count: Input should be greater than or equal to 1"),
        (BASE + "meta_model: {kind: nfn_np, hidden: 8}\n", r"\['hidden'\] do not apply to kind='nfn_np'"),
        (BASE + "meta_model: {kind: lstm}\n", r"meta_model.kind: Input should be 'mlp', 'nfn_np', 'nfn_hnp' or 'nft'"),
        (BASE + "inner: {horizon_range: [10, 5]}\n", r"horizon_range=\[10, 5\]"),
        (BASE + "inner: {horizon: forever}\n", r"inner.horizon"),
        (BASE + "tracking: {enabled: maybe}\n", r"tracking.enabled: Input should be a valid boolean"),
        (BASE + "evaluate: {suite: heldout, baselines: [sgd]}\n", r"evaluate.baselines.0"),
        (BASE + "checkpoint: {every: 0}\n", r"checkpoint.every"),
        (BASE + "meta_optimizer: {lr: 0}\n", r"meta_optimizer.lr"),
        ("name: [oops\n", r"not valid YAML"),
        ("- 1\n", r"expected a mapping"),
        # strict numbers, safe names, unique keys
        ("name: ../../etc\ntask: digits_mlp\nouter_steps: 3\n", r"name: String should match pattern"),
        ("name: a/b\ntask: digits_mlp\nouter_steps: 3\n", r"name: String should match pattern"),
        ("name: j\ntask: digits_mlp\nouter_steps: 1e18\n", r"outer_steps: Input should be a valid integer"),
        ("name: j\ntask: digits_mlp\nouter_steps: true\n", r"outer_steps: Input should be a valid integer"),
        (BASE + "meta_optimizer: {lr: .inf}\n", r"meta_optimizer.lr: Input should be a finite number"),
        (BASE + "meta_optimizer: {lr: .nan}\n", r"meta_optimizer.lr: Input should be a finite number"),
        (BASE + "meta_optimizer: {lr: true}\n", r"meta_optimizer.lr: Input should be a valid number"),
        (BASE + "seed: 100000000000000000000000\n", r"seed: Input should be less than 2147483648"),
        (BASE + "seed: 1.5\n", r"seed: Input should be a valid integer"),
        (BASE + "inner: {population: '8'}\n", r"inner.population: Input should be a valid integer"),
        (BASE + "evaluate: {suite: heldout, adam_lrs: [0.01, .inf]}\n", r"evaluate.adam_lrs.1"),
        (BASE + "evaluate: {suite: heldout, adam_lrs: [0]}\n", r"evaluate.adam_lrs.0: Input should be greater"),
        (BASE + "outer_steps: 4\n", r"duplicate key 'outer_steps' \(line 4\)"),
    ],
)
def test_malformed_jobs_name_file_field_and_allowed_values(tmp_path, text, match):
    p = tmp_path / "job.yaml"
    p.write_text(text)
    with pytest.raises(JobSpecError, match=f"(?s)job.yaml.*{match}"):
        load_job(p)


def test_missing_job_file(tmp_path):
    with pytest.raises(JobSpecError, match="no such job file"):
        load_job(tmp_path / "none.yaml")


def test_a_directory_or_binary_job_file_is_a_clear_error(tmp_path):
    with pytest.raises(JobSpecError, match="is a directory"):
        load_job(tmp_path)
    p = tmp_path / "job.yaml"
    p.write_bytes(b"\x80\x81\xff\x00binary")
    with pytest.raises(JobSpecError, match=r"job\.yaml: not a text file"):
        load_job(p)


def test_meta_model_inputs_and_lr_head_reach_the_rule(tmp_path):
    from nfopt.recipes.meta_train import build_rule

    p = tmp_path / "job.yaml"
    p.write_text(BASE + "meta_model: {kind: nfn_np, inputs: [fraction], lr_head: false}\n")
    rule = build_rule(load_job(p))
    f = rule.features
    assert (f.adam_direction, f.loss_features, f.fraction, f.tensor_features) == (False, False, True, False)
    assert rule.lr_head is False
    full = build_rule(load_job(ROOT / "jobs" / "meta" / "ablate_nfn_np_all.yaml")).features
    assert full.loss_features and full.fraction and full.tensor_features and full.adam_direction
    p.write_text(BASE + "meta_model: {kind: nfn_np, inputs: [momentum]}\n")
    with pytest.raises(JobSpecError, match=r"meta_model\.inputs\.0"):
        load_job(p)


def test_one_size_table_drives_validation_overrides_and_baselines():
    from nfopt.jobs import META_MODEL_SIZES, JobSpec, apply_overrides
    from nfopt.specs import child_seed, output_dir

    spec = JobSpec.model_validate({"name": "j", "task": "digits_mlp", "outer_steps": 1, "meta_model": {"channels": 6}})
    assert spec.meta_model.as_kind("nft").channels == 6 and spec.meta_model.as_kind("mlp").channels is None
    assert spec.meta_model.as_kind("mlp").kind == "mlp" and spec.meta_model.as_kind("nfn_np") is spec.meta_model
    assert apply_overrides(spec, {"meta_model.kind": "mlp"}).meta_model.channels is None
    for kind, sizes in META_MODEL_SIZES.items():
        for field in {"channels", "layers", "pointwise", "hidden", "blocks", "heads"} - set(sizes):
            with pytest.raises(ValueError, match=f"do not apply to kind='{kind}'"):
                JobSpec.model_validate({**spec.model_dump(), "meta_model": {"kind": kind, field: 2}})
    assert output_dir("runs/{name}/x", "j") == (Path.cwd() / "runs" / "j" / "x")
    assert child_seed(3, 7) == 3 * 1_000_003 + 7 and child_seed(3, 7, stride=1000) == 3007
