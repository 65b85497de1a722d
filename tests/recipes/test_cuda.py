"""A meta-training job with GPU workers: runs, checkpoints, resumes on a machine without a GPU,
and back on one. Skipped without a CUDA device (``pytest -m cuda``)."""

import pytest
import torch

from nfopt.recipes.meta_train import run_job
from tests.helpers import run_without_cuda
from tests.recipes.test_meta_train import tiny_spec

pytestmark = [pytest.mark.cuda, pytest.mark.usefixtures("no_tf32")]


@pytest.mark.parametrize("estimator", [{"kind": "pes", "unroll": 2}, {"kind": "tbptt", "unroll": 2}])
def test_gpu_job_runs_and_resumes_without_a_gpu(tmp_path, estimator):
    spec = tiny_spec(tmp_path, estimator=estimator, workers={"count": 2, "num_gpus": 0.5})
    part = run_job(spec, use_ray=False, progress=False, max_steps=2)
    assert part.steps == 2 and part.checkpoint.exists()
    theta = torch.load(part.checkpoint, weights_only=True)["learner"]["theta"]
    assert all(torch.isfinite(v).all() and v.device.type == "cpu" for v in theta.values())
    code = (
        "from pathlib import Path\n"
        "from nfopt.recipes.meta_train import run_job\n"
        "from tests.recipes.test_meta_train import tiny_spec\n"
        f"spec = tiny_spec(Path({str(tmp_path)!r}), estimator={estimator!r}, workers={{'count': 2, 'num_gpus': 0.5}})\n"
        "print('steps', run_job(spec, resume=True, use_ray=False, progress=False, max_steps=1).steps)\n"
    )
    assert run_without_cuda(code, timeout=600).strip().endswith("steps 3")
    rest = run_job(spec, resume=True, use_ray=False, progress=False)  # and back on the GPU
    assert rest.steps == 4
    theta = torch.load(rest.checkpoint, weights_only=True)["learner"]["theta"]
    assert all(torch.isfinite(v).all() for v in theta.values())
