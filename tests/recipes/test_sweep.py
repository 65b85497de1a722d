"""A 4-trial ASHA sweep on a tiny task finishes, exports its best trial and restores."""

import pytest
import yaml

ray = pytest.importorskip("ray")

pytestmark = pytest.mark.slow  # starts Ray: seconds to a minute

from nfopt.jobs import load_job  # noqa: E402
from tests.helpers import tiny_job  # noqa: E402


def test_asha_sweep_exports_the_best_trial_and_restores(ray_session, tmp_path):
    from nfopt.lopt import load_optimizer
    from nfopt.recipes.sweep import run_sweep

    spec = tiny_job(
        tmp_path,
        name="sweep",
        outer_steps=4,
        workers={"count": 1, "num_cpus": 0.25},
        tracking={"enabled": True, "uri": f"sqlite:///{tmp_path / 'mlflow.db'}"},
        search={
            "num_samples": 4,
            "grace_period": 1,
            "report_every": 2,
            "storage_path": str(tmp_path / "tune"),
            "space": {
                "meta_optimizer.lr": {"loguniform": [1e-4, 1e-2]},
                "estimator.sigma": {"choice": [0.01, 0.02]},
            },
        },
    )
    result = run_sweep(spec, tmp_path / "job.yaml")
    assert len(result.rows) == 4 and not any(r["error"] for r in result.rows)
    assert set(result.best) == {"meta_optimizer.lr", "estimator.sigma"}
    best = load_job(result.best_job)  # a runnable job spec
    assert best.search is None and best.meta_optimizer.lr == pytest.approx(result.best["meta_optimizer.lr"])
    assert yaml.safe_load(result.best_job.read_text())["name"] == "sweep-best"
    assert load_optimizer(result.best_optimizer).rule.kind == "mlp"
    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = mlflow.search_runs(experiment_names=["sweep-sweep"])
    assert len(runs) >= 5  # one per trial and the sweep's best
    again = run_sweep(spec, tmp_path / "job.yaml", resume=True)  # Tuner.restore of the finished sweep
    assert len(again.rows) == 4
