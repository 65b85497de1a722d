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


def _search(**over):
    from nfopt.jobs import SearchSpec

    return SearchSpec.model_validate({"space": {"meta_optimizer.lr": {"loguniform": [1e-4, 1e-2]}}, **over})


def test_search_algorithms_build_their_searchers():
    from nfopt.recipes.sweep import search_algorithm

    assert search_algorithm(_search()) is None  # Tune's random/grid sampling
    pytest.importorskip("optuna")
    from ray.tune.search.optuna import OptunaSearch

    assert isinstance(search_algorithm(_search(algorithm="optuna", seed=0)), OptunaSearch)
    pytest.importorskip("hyperopt")
    from ray.tune.search.hyperopt import HyperOptSearch

    assert isinstance(search_algorithm(_search(algorithm="hyperopt")), HyperOptSearch)


def test_a_grid_needs_random_search_and_a_missing_searcher_names_the_extra(monkeypatch):
    import builtins

    from pydantic import ValidationError

    from nfopt.recipes.sweep import search_algorithm

    with pytest.raises(ValidationError, match="grid needs algorithm: random"):
        _search(algorithm="optuna", space={"estimator.sigma": {"grid": [0.01, 0.02]}})
    real = builtins.__import__

    def no_optuna(name, *a, **k):
        if name.split(".")[0] == "optuna" or name == "ray.tune.search.optuna":
            raise ImportError(f"No module named {name!r}")
        return real(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", no_optuna)
    with pytest.raises(ImportError, match=r"search.algorithm: optuna .*nfopt\[search\]"):
        search_algorithm(_search(algorithm="optuna"))


def test_optuna_sweep_and_asha_count_outer_steps(ray_session, tmp_path):
    """Trials report every 2 outer steps; ASHA's clock (and the table's `steps`) is outer steps,
    so a finished trial shows the job's 4, not its 2 reports."""
    pytest.importorskip("optuna")
    from nfopt.recipes.sweep import run_sweep

    spec = tiny_job(
        tmp_path,
        name="optuna",
        outer_steps=4,
        workers={"count": 1, "num_cpus": 0.25},
        search={
            "algorithm": "optuna",
            "seed": 0,
            "num_samples": 2,
            "max_concurrent": 1,
            "grace_period": 4,
            "report_every": 2,
            "storage_path": str(tmp_path / "tune"),
            "space": {"meta_optimizer.lr": {"loguniform": [1e-4, 1e-2]}},
        },
    )
    result = run_sweep(spec, tmp_path / "job.yaml")
    assert len(result.rows) == 2 and not any(r["error"] for r in result.rows)
    assert [r["steps"] for r in result.rows] == [4, 4]  # grace 4 outer steps: nobody stopped early
    lrs = [r["meta_optimizer.lr"] for r in result.rows]
    assert all(1e-4 <= lr <= 1e-2 for lr in lrs) and lrs[0] != lrs[1]
