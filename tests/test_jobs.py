from pathlib import Path

import pytest

from nfopt.jobs import JobSpecError, load_job

ROOT = Path(__file__).resolve().parents[1]
BASE = "name: j\ntask: digits_mlp\nouter_steps: 3\n"


def test_shipped_jobs_validate():
    import yaml

    from nfopt.experiments import load_experiment

    kinds = set()
    for f in sorted((ROOT / "jobs").glob("*.yaml")):
        if "experiment" in yaml.safe_load(f.read_text()):  # zoo / INR experiment specs
            spec = load_experiment(f)
            kinds.add(spec.experiment)
        else:
            spec = load_job(f)
            assert spec.outer_steps > 0
        assert spec.name
    assert kinds == {"zoo", "generalization", "tickets", "inr_fit", "inr_classify", "inr_edit"}


@pytest.mark.parametrize(
    "text, match",
    [
        (BASE + "colour: red\n", r"colour: Extra inputs are not permitted"),
        (BASE + "estimator: {kind: sgd}\n", r"estimator.kind: Input should be 'es', 'pes' or 'tbptt'"),
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
