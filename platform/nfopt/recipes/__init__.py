"""Recipes: what nfopt *does*, composed from the library (``weightspace``, ``nn``, ``lopt``,
``meta``, ``tasks``, ``evaluation``, ``zoo``, ``inrs``) and the Ray adapter (``cluster``); the
CLI parses arguments, calls one recipe and prints.

* :mod:`~nfopt.recipes.meta_train` — ``nfopt run``: a meta-training job (learner, workers,
  checkpoints, tracking), and the checks it makes before starting;
* :mod:`~nfopt.recipes.sweep` — ``nfopt tune``: a job's search space as Ray Tune trials;
* :mod:`~nfopt.recipes.evaluate` — ``nfopt evaluate``: learned optimizers against tuned
  baselines on a held-out suite, with reports;
* :mod:`~nfopt.recipes.experiments` (loader) and :mod:`~nfopt.recipes.generalization`,
  :mod:`~nfopt.recipes.tickets`, :mod:`~nfopt.recipes.inr_classify`,
  :mod:`~nfopt.recipes.inr_edit` — the seed papers' experiments.

Nothing below this package imports it (``tests/test_import_graph.py``). Submodules are imported
by name (this package imports none of them: ``ray`` and ``mlflow`` load only when used).
"""

__all__: list[str] = []
