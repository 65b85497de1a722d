"""Meta-training on a CUDA device: the inner population, its data, the rule's features and the
meta-model run on the GPU and give the CPU's estimates; no host sync per inner step; estimates
and worker states reach a CPU-only learner. Skipped without a CUDA device (``pytest -m cuda``)."""

import warnings

import pytest
import torch

from nfopt.lopt import FeatureConfig, LearnedUpdateRule
from nfopt.meta import ES, PES, TaskProblem, TruncatedBackprop, Worker
from nfopt.meta.checkpoint import load_checkpoint, save_checkpoint
from nfopt.tasks import TaskFamily
from tests.helpers import run_without_cuda

pytestmark = [pytest.mark.cuda, pytest.mark.usefixtures("no_tf32")]

FEATURES = FeatureConfig(adam_direction=True, fraction=True, tensor_features=True)


def _rule(kind: str = "nfn_np") -> tuple[LearnedUpdateRule, dict]:
    torch.manual_seed(0)
    size = {"channels": 4, "layers": 2} if kind.startswith("nfn") else {"hidden": 8}
    rule = LearnedUpdateRule(kind, meta_model=size, features=FEATURES)
    theta = {k: v.detach() + 0.05 * torch.randn_like(v) for k, v in rule.named_parameters()}  # a live head
    return rule, theta


def _problem(device: str, kind: str = "nfn_np", compile: bool = False) -> tuple[TaskProblem, dict]:
    rule, theta = _rule(kind)
    prob = TaskProblem(
        TaskFamily.load("digits_mlp"), rule, population=3, meta_loss="log", device=device, compile=compile
    )
    return prob, theta


def _close(a: dict, b: dict, rtol: float = 2e-3, atol: float = 1e-5) -> None:
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k].cpu(), b[k].cpu(), rtol=rtol, atol=atol, msg=k)


@pytest.mark.parametrize("kind", ["nfn_np", "nfn_hnp", "mlp"])
@pytest.mark.parametrize("est", [PES(sigma=0.01, unroll=4), ES(sigma=0.01, unroll=4), TruncatedBackprop(unroll=3)])
def test_estimates_on_cuda_equal_the_cpu(est, kind):
    out = {}
    # θ on the problem's device (as a Worker sends it), and a CUDA problem given CPU θ
    for problem_device, theta_device in (("cpu", "cpu"), ("cuda", "cuda"), ("cuda", "cpu")):
        prob, theta = _problem(problem_device, kind)
        theta = {k: v.to(theta_device) for k, v in theta.items()}
        gen = torch.Generator().manual_seed(0)
        state = est.init(prob, 11)
        for _ in range(2):  # the second estimate continues the first's inner state (PES: its ξ)
            res = est.estimate(prob, theta, state, gen)
            state = res.state
        assert all(v.device.type == theta_device for v in res.grad.values())  # estimates live with θ
        assert state_device({k: v for k, v in state.items() if k != "xi"}) == {problem_device}
        out[problem_device, theta_device] = res
    ref = out["cpu", "cpu"]
    for key in (("cuda", "cuda"), ("cuda", "cpu")):
        # ES/PES coefficients divide loss differences by 2σ²: float32 rounding of both devices shows there
        _close(out[key].grad, ref.grad, rtol=5e-2, atol=5e-2 * _scale(ref.grad))
        assert out[key].metrics["meta_loss"] == pytest.approx(ref.metrics["meta_loss"], rel=1e-4)
        assert out[key].metrics["inner_steps"] == ref.metrics["inner_steps"]


def _scale(grad: dict) -> float:
    return max(float(v.abs().max()) for v in grad.values()) + 1e-12


def state_device(state) -> set[str]:
    """Device types of every tensor in an estimator state."""
    found = set()

    def walk(obj):
        if isinstance(obj, torch.Tensor):
            found.add(obj.device.type)
        elif isinstance(obj, dict):
            for v in obj.values():
                walk(v)
        elif isinstance(obj, (list, tuple)):
            for v in obj:
                walk(v)
        elif hasattr(obj, "tensors"):
            for t in obj.tensors():
                walk(t)

    walk(state)
    return found


def _syncs(prob: TaskProblem, theta: dict, state: dict, steps: int) -> int:
    """Host syncs of one unroll of ``steps`` inner steps (CUDA's sync debug mode, warnings counted)."""
    torch.cuda.synchronize()
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            with torch.no_grad():
                prob.unroll(theta, state, steps)
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return sum("synchroniz" in str(w.message).lower() for w in seen)


@pytest.mark.parametrize("kind", ["nfn_np", "mlp"])
def test_an_unroll_syncs_with_the_host_a_fixed_number_of_times_not_per_step(kind):
    prob, theta = _problem("cuda", kind)
    theta = {k: v.cuda() for k, v in theta.items()}
    state = prob.init_state(11)
    prob.unroll(theta, state, 2)  # warm: data copied, caches built
    short, long = _syncs(prob, theta, state, 2), _syncs(prob, theta, state, 12)
    # before the constants were cached and the indices copied once: 9-10 and 49 (H200, torch 2.11)
    assert long - short <= 1 and short <= 4, f"host syncs per unroll: 2 steps {short}, 12 steps {long}"


def test_compiled_unroll_on_cuda_equals_the_eager_one():
    eager, theta = _problem("cuda", "mlp")
    compiled, _ = _problem("cuda", "mlp", compile=True)
    state = eager.init_state(11)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # a fallback to eager steps would warn
        a = eager.unroll(theta, state, 10)
        b = compiled.unroll(theta, compiled.init_state(11), 10)
    torch.testing.assert_close(b[0], a[0], rtol=1e-4, atol=1e-6)
    for x, y in zip(b[1]["params"].tensors(), a[1]["params"].tensors()):
        torch.testing.assert_close(x, y, rtol=1e-4, atol=1e-6)


def test_cuda_worker_returns_cpu_estimates_and_its_state_loads_without_cuda(tmp_path):
    rule, theta = _rule()
    make = lambda: TaskProblem(TaskFamily.load("digits_mlp"), rule, population=2, device="cuda")  # noqa: E731
    worker = Worker(make, PES(sigma=0.01, unroll=3), num_tasks=2, seed=5)
    est = worker.estimate(theta)
    assert all(v.device.type == "cpu" for v in est.grad.values())
    assert state_device(worker.states) == {"cuda"}
    assert state_device(worker.get_state()["states"]) == {"cpu"}  # what leaves a worker is on the CPU
    path = save_checkpoint({"format": "nfopt.run/1", "worker": worker.get_state()}, tmp_path / "ck.pt")
    code = (
        "from nfopt.meta.checkpoint import load_checkpoint\n"
        f"ck = load_checkpoint({str(path)!r})\n"
        "ts = [t for s in ck['worker']['states'] for t in (s['plus']['loss0'], *s['plus']['params'].tensors())]\n"
        "assert all(t.device.type == 'cpu' for t in ts)\n"
        "print('ok', len(ts))\n"
    )
    assert run_without_cuda(code).startswith("ok")
    again = Worker(make, PES(sigma=0.01, unroll=3), num_tasks=2, seed=6)
    again.set_state(load_checkpoint(path)["worker"])  # back on the problem's device, and it continues alike
    assert state_device(again.states) == {"cuda"}
    a, b = worker.estimate(theta), again.estimate(theta)
    for k in a.grad:
        torch.testing.assert_close(b.grad[k], a.grad[k], msg=k)
