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
    before = (out / "results.json").read_text()
    assert main(args) == 5  # the report is there: never replaced without --overwrite
    assert "--overwrite" in capsys.readouterr().err and (out / "results.json").read_text() == before


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


def _damaged_files(tmp_path):
    import torch

    good = _saved(tmp_path)
    payload = torch.load(good, weights_only=True)
    files = {}
    files["truncated"] = tmp_path / "trunc.pt"
    files["truncated"].write_bytes(good.read_bytes()[:500])
    files["random"] = tmp_path / "rand.pt"
    files["random"].write_bytes(bytes(range(256)) * 4)
    files["no config"] = tmp_path / "noconfig.pt"
    torch.save({k: v for k, v in payload.items() if k != "config"}, files["no config"])
    sd = {k: v.clone() for k, v in payload["state_dict"].items()}
    key = next(iter(sd))
    files["wrong shapes"] = tmp_path / "shapes.pt"
    torch.save({**payload, "state_dict": {**sd, key: torch.zeros(3, 3)}}, files["wrong shapes"])
    files["nan"] = tmp_path / "nan.pt"
    torch.save({**payload, "state_dict": {**sd, key: torch.full_like(sd[key], float("nan"))}}, files["nan"])
    return files


MESSAGES = {
    "truncated": "not a readable nfopt learned-optimizer file",
    "random": "not a readable nfopt learned-optimizer file",
    "no config": "field 'config' is missing",
    "wrong shapes": "field 'state_dict' does not fit its config",
    "nan": "non-finite (NaN/inf) weights",
}


def test_damaged_optimizer_files_are_clear_errors(tiny_suite, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "1000")
    for name, path in _damaged_files(tmp_path).items():
        args = ["evaluate", "--optimizer", str(path), "--suite", str(tiny_suite), "--no-ray", "--no-track"]
        assert main(args) == 2, name
        err = capsys.readouterr().err
        assert path.name in err and MESSAGES[name] in err and "Traceback" not in err, (name, err)


def test_bad_arguments_and_data_are_clear_errors(tiny_suite, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "1000")
    (tmp_path / "a_file").write_text("x")
    base = ["evaluate", "--suite", str(tiny_suite), "--no-ray", "--no-track", "--baselines", "adam"]
    suite = tmp_path / "suite.yaml"
    cases = [
        (["--steps", "0"], 2, "steps=0"),
        (["--steps", "-5"], 2, "steps=-5"),
        (["--adam-lrs", "inf,nan"], 2, "finite positive learning rates"),
        (["--out", str(tmp_path / "a_file")], 2, "is a file"),
        (["--optimizer", "runs:/bogus/learned_optimizer.pt"], 3, "no such MLflow artifact"),
        (["--suite", str(tmp_path)], 2, "is a directory"),
    ]
    for extra, code, message in cases:
        assert main(base + extra + ["--tracking-uri", f"sqlite:///{tmp_path / 'm.db'}"]) == code, extra
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err, (extra, err)
    task = "  - name: t\n    model: {kind: mlp}\n    batch_size: 8\n    horizon: 5\n"
    for dataset, code, message in [
        ("{name: digits, options: {bogus: 1}}", 2, "options ['bogus'] are not options of dataset 'digits'"),
        ("{name: fashion_mnist, size: 100000}", 2, "size: Input should be less than or equal to 256"),
        ("{name: cifar10, options: {data_dir: /nonexistent}}", 3, "CIFAR-10 pickle batches"),
    ]:
        suite.write_text(f"name: s\ntasks:\n{task}    dataset: {dataset}\n")
        assert main(["evaluate", "--suite", str(suite), "--no-ray", "--no-track", "--baselines", "adam"]) == code
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err, (dataset, err)
