"""``nfopt evaluate`` end to end (in-process, no Ray) and its errors."""

import json

from nfopt.cli import main
from nfopt.lopt import LearnedUpdateRule, save_optimizer


def _saved(tmp_path):
    return save_optimizer(
        LearnedUpdateRule("mlp", meta_model={"hidden": 4}, step_mult=1e-2), tmp_path / "lopt.pt", {"job": "demo"}
    )


def test_evaluate_writes_a_report_and_logs_it(tiny_suite, tmp_path, capsys):
    import mlflow

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    out = tmp_path / "report"
    args = ["evaluate", "--optimizer", str(_saved(tmp_path)), "--suite", str(tiny_suite), "--seeds", "2"]
    args += ["--tuning-seeds", "2", "--adam-lrs", "1e-3,1e-2", "--sgd-lrs", "1e-2,1e-1", "--steps", "10"]
    args += ["--no-ray", "--out", str(out), "--tracking-uri", uri, "--experiment", "ev"]
    assert main(args) == 0
    summary = json.loads((out / "results.json").read_text())["summary"]
    assert {r["optimizer"] for r in summary} == {"adam", "sgd", "adam_1e-3", "mlp:demo", "mlp:demo (untrained)"}
    assert "**mlp:demo** beats its untrained initialisation on" in (out / "report.md").read_text()
    assert "vs tuned Adam" in capsys.readouterr().out
    mlflow.set_tracking_uri(uri)
    (run,) = mlflow.search_runs(experiment_names=["ev"], output_format="list")
    assert "digits_a.mlp:demo.train_loss" in run.data.metrics
    names = {a.path for a in mlflow.MlflowClient().list_artifacts(run.info.run_id)}
    assert {"report.md", "summary.csv", "results.json", "speedups.png", "curves.png", "curves"} <= names


def test_a_malformed_suite_is_refused_with_the_field_named(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: bad\ntasks:\n  - name: x\n    dataset: {name: digits}\n    model: {kind: mlp, width: -3}\n")
    assert main(["evaluate", "--suite", str(bad), "--no-ray", "--no-track"]) == 2
    err = capsys.readouterr().err
    assert "width" in err


def test_missing_optimizer_file_and_bad_grid(tiny_suite, tmp_path, capsys):
    assert main(["evaluate", "--optimizer", str(tmp_path / "none.pt"), "--suite", str(tiny_suite), "--no-ray"]) == 3
    assert main(["evaluate", "--suite", str(tiny_suite), "--adam-lrs", "fast", "--no-ray"]) == 2
    assert "--adam-lrs" in capsys.readouterr().err
    assert main(["evaluate", "--suite", str(tiny_suite), "--tasks", "nope", "--no-ray"]) == 2


def test_a_jobs_evaluate_section_writes_the_report_next_to_the_run(tiny_suite, tmp_path):
    import yaml

    from tests.helpers import tiny_job

    spec = tiny_job(tmp_path, name="withEval", outer_steps=2, workers={"count": 1})
    raw = spec.model_dump()
    raw["evaluate"] = {"suite": str(tiny_suite), "seeds": 1, "tuning_seeds": 1, "steps": 5}
    raw["evaluate"] |= {"adam_lrs": [1e-2], "sgd_lrs": [0.1], "baselines": ["mlp"]}
    job = tmp_path / "job.yaml"
    job.write_text(yaml.safe_dump(raw))
    assert main(["run", str(job), "--no-ray"]) == 0
    summary = json.loads((tmp_path / "runs" / "withEval" / "evaluation" / "results.json").read_text())["summary"]
    names = {r["optimizer"] for r in summary}
    learned = {"mlp (learned)", "mlp (learned, same budget)"}
    assert names == {"adam", "sgd", "adam_1e-3", *learned, "untrained (mlp (learned), mlp (learned, same budget))"}
    report = (tmp_path / "runs" / "withEval" / "evaluation" / "report.md").read_text()
    assert all(f"**{n}** beats its untrained initialisation on" in report for n in learned)  # one shared row
