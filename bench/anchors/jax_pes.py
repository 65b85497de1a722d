"""JAX peer of nfopt's meta-training step, in the style of learned_optimization (written here
from its published design; no code copied): a per-parameter MLP learned optimizer meta-trained by
PES over truncated unrolls of a population of inner MLPs, everything under one ``jax.jit`` with
``vmap`` over tasks and networks.

The same problem as ``bench/meta_throughput.py`` measures for nfopt: the ``digits_mlp`` task's
architecture, activation, batch size and horizon (read from nfopt's task so both sides agree), the
same digits data, ``tasks`` tasks of ``population`` networks, antithetic PES with ``unroll`` inner
steps per truncation, per-member minibatches; the learned optimizer has nfopt's per-parameter
features (gradient, parameter, momenta at 6 decays, Adam's direction, each normalised by its
second moment over the tensor; 11 ``tanh(t/s)`` time features) and a 2x32 MLP with a zero
head added to Adam's direction at lr 0.01 under a ``tanh`` bound. Inner steps are counted as
nfopt counts them: ``2 (antithetic) x population x unroll`` per task per outer step.

Installed by the ``bench`` extra (``jax``). Runs on one core: XLA's CPU client starts thread
pools of its own whatever ``XLA_FLAGS`` says (with ``--xla_cpu_multi_thread_eigen=false`` alone
the process used 1.77 cores of 2 here, so its figure was not per core), so the client is created
and every step runs with the calling thread pinned to one CPU (threads inherit the pin at
creation); :attr:`JaxPES.cores_used` is the process's CPU time over wall time in the last
:meth:`JaxPES.measure`. ``python bench/anchors/jax_pes.py`` prints ``RESULT jax_inner_per_s=X
cores_used=Y``.
"""

from __future__ import annotations

import os

os.environ.setdefault("XLA_FLAGS", "--xla_cpu_multi_thread_eigen=false")

import argparse
import itertools
import time
from contextlib import contextmanager
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["JaxPES", "from_nfopt_task", "one_cpu"]


@contextmanager
def one_cpu():
    """Pin the calling thread to the lowest CPU it may use, restoring its set afterwards
    (threads it starts meanwhile keep the pin)."""
    allowed = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {min(allowed)})
    try:
        yield
    finally:
        os.sched_setaffinity(0, allowed)


DECAYS = (0.1, 0.5, 0.9, 0.99, 0.999, 0.9999)
TIMESCALES = (1.0, 3.0, 10.0, 30.0, 100.0, 300.0, 1000.0, 3000.0, 10000.0, 30000.0, 100000.0)
ACTIVATIONS = {
    "relu": jax.nn.relu,
    "tanh": jnp.tanh,
    "gelu": jax.nn.gelu,
    "silu": jax.nn.silu,
    "elu": jax.nn.elu,
    "sigmoid": jax.nn.sigmoid,
}


@dataclass(frozen=True)
class Problem:
    """The inner problem: layer sizes ``(n_0, ..., n_L)``, activation, batch size, horizon and
    the training data (``(N, n_0)`` float32 inputs, ``(N,)`` int labels)."""

    sizes: tuple[int, ...]
    activation: str
    batch_size: int
    horizon: int
    x: np.ndarray
    y: np.ndarray


def from_nfopt_task(name: str = "digits_mlp", index: int = 0) -> Problem:
    """The same problem nfopt meta-trains on: a task drawn from nfopt's family (MLP only)."""
    from nfopt.tasks import TaskFamily

    task = TaskFamily.load(name).sample(index)
    spec = task.network_spec
    if task.kind != "mlp":
        raise ValueError(f"{task.name}: the JAX anchor runs MLP tasks, not {task.kind}")
    sizes = (spec.weight_shapes[0][1], *[w[0] for w in spec.weight_shapes])
    data = task.dataset
    x = data.x_train.reshape(len(data.x_train), -1).numpy().astype(np.float32)
    return Problem(sizes, task.activation, task.batch_size, task.horizon, x, data.y_train.numpy().astype(np.int32))


# ----------------------------------------------------------------------------- inner network
def init_net(key, sizes):
    """PyTorch's default ``nn.Linear`` initialisation (uniform, bound ``1/sqrt(fan_in)``)."""
    params = []
    for n_in, n_out in itertools.pairwise(sizes):
        key, kw, kb = jax.random.split(key, 3)
        bound = 1.0 / np.sqrt(n_in)
        params.append(
            (
                jax.random.uniform(kw, (n_out, n_in), minval=-bound, maxval=bound),
                jax.random.uniform(kb, (n_out,), minval=-bound, maxval=bound),
            )
        )
    return params


def net_loss(params, x, y, act):
    h = x
    for i, (w, b) in enumerate(params):
        h = h @ w.T + b
        if i < len(params) - 1:
            h = act(h)
    logp = jax.nn.log_softmax(h)
    return -jnp.mean(jnp.take_along_axis(logp, y[:, None], axis=1))


# ----------------------------------------------------------------------------- learned optimizer
def init_lopt(key, hidden: int = 32):
    f_entry, f_glob = 3 + len(DECAYS), len(TIMESCALES)
    k1, k2, k3 = jax.random.split(key, 3)
    return {
        "w1": jax.random.normal(k1, (f_entry, hidden)) * np.sqrt(2.0 / f_entry),
        "wg": jax.random.normal(k2, (f_glob, hidden)) * np.sqrt(1.0 / f_glob),
        "b1": jnp.zeros(hidden),
        "w2": jax.random.normal(k3, (hidden, hidden)) * np.sqrt(2.0 / hidden),
        "b2": jnp.zeros(hidden),
        "w3": jnp.zeros((hidden, 2)),  # zero head: starts as Adam
    }


def lopt_update(theta, p, g, m, v, t):
    """One learned-optimizer step of one tensor: ``p, g: (...)``, ``m: (6, ...)``, ``v: (...)``."""
    d = jnp.asarray(DECAYS).reshape((-1,) + (1,) * p.ndim)
    g = jnp.nan_to_num(g)
    m = m * d + g[None] * (1 - d)
    v = 0.999 * v + 0.001 * g * g
    tf = t.astype(jnp.float32)
    adam = (m[2] / (1 - 0.9**tf)) / (jnp.sqrt(v / (1 - 0.999**tf)) + 1e-8)
    feats = jnp.concatenate([g[None], p[None], m, adam[None]], axis=0)  # (F, ...)
    feats = feats * jax.lax.rsqrt(jnp.mean(feats**2, axis=tuple(range(1, feats.ndim)), keepdims=True) + 1e-5)
    glob = jnp.tanh(tf / jnp.asarray(TIMESCALES))  # (11,)
    x = jnp.moveaxis(feats, 0, -1)  # (..., F)
    h = jax.nn.relu(x @ theta["w1"] + glob @ theta["wg"] + theta["b1"])
    h = jax.nn.relu(h @ theta["w2"] + theta["b2"])
    out = h @ theta["w3"]
    s = 0.01 * (out[..., 0] * jnp.exp(1e-3 * out[..., 1]) + adam)
    return p - 0.1 * jnp.tanh(s / 0.1), m, v


# ----------------------------------------------------------------------------- PES
class JaxPES:
    """Antithetic PES over ``tasks`` x ``population`` inner networks, ``unroll`` steps per
    truncation, meta-Adam on θ; :meth:`step` is one jitted outer step."""

    def __init__(
        self, problem: Problem, tasks: int = 2, population: int = 4, unroll: int = 10, sigma: float = 0.01, seed=0
    ):
        self.cores_used = float("nan")
        with one_cpu():  # XLA's client and its thread pools start here: pinned to one CPU
            self._build(problem, tasks, population, unroll, sigma, seed)

    def _build(self, problem: Problem, tasks: int, population: int, unroll: int, sigma: float, seed) -> None:
        self.problem, self.tasks, self.population, self.unroll, self.sigma = problem, tasks, population, unroll, sigma
        act = ACTIVATIONS[problem.activation]
        x, y = jnp.asarray(problem.x), jnp.asarray(problem.y)
        bs, horizon, sizes = problem.batch_size, problem.horizon, problem.sizes

        def new_inner(key):  # one network's training state
            params = init_net(key, sizes)
            return {
                "params": params,
                "m": [(jnp.zeros((len(DECAYS), *w.shape)), jnp.zeros((len(DECAYS), *b.shape))) for w, b in params],
                "v": [(jnp.zeros_like(w), jnp.zeros_like(b)) for w, b in params],
                "t": jnp.zeros((), jnp.int32),
            }

        def inner_step(theta, s, key):
            idx = jax.random.randint(key, (bs,), 0, x.shape[0])
            loss, grads = jax.value_and_grad(net_loss)(s["params"], x[idx], y[idx], act)
            t = s["t"] + 1
            new_p, new_m, new_v = [], [], []
            for (w, b), (gw, gb), (mw, mb), (vw, vb) in zip(s["params"], grads, s["m"], s["v"]):
                w2, mw2, vw2 = lopt_update(theta, w, gw, mw, vw, t)
                b2, mb2, vb2 = lopt_update(theta, b, gb, mb, vb, t)
                new_p.append((w2, b2))
                new_m.append((mw2, mb2))
                new_v.append((vw2, vb2))
            return {"params": new_p, "m": new_m, "v": new_v, "t": t}, loss

        def unroll_net(theta, s, key):  # one network, `unroll` steps -> (state, mean loss)
            def body(carry, k):
                s2, loss = inner_step(theta, carry, k)
                return s2, loss

            s, losses = jax.lax.scan(body, s, jax.random.split(key, unroll))
            return s, jnp.mean(losses)

        pop_unroll = jax.vmap(unroll_net, in_axes=(None, 0, 0))  # over networks

        def task_estimate(theta, ts, key):  # one task's antithetic PES estimate
            k_eps, k_data, k_reset = jax.random.split(key, 3)
            leaves, tree = jax.tree_util.tree_flatten(theta)
            eps = jax.tree_util.tree_unflatten(
                tree,
                [sigma * jax.random.normal(k, v.shape) for k, v in zip(jax.random.split(k_eps, len(leaves)), leaves)],
            )
            plus = jax.tree_util.tree_map(jnp.add, theta, eps)
            minus = jax.tree_util.tree_map(jnp.subtract, theta, eps)
            keys = jax.random.split(k_data, population)  # same minibatches for both branches
            s_plus, l_plus = pop_unroll(plus, ts["plus"], keys)
            s_minus, l_minus = pop_unroll(minus, ts["minus"], keys)
            xi = jax.tree_util.tree_map(jnp.add, ts["xi"], eps)
            coef = (jnp.mean(l_plus) - jnp.mean(l_minus)) / (2 * sigma**2)
            grad = jax.tree_util.tree_map(lambda a: coef * a, xi)
            done = s_plus["t"][0] >= horizon  # a truncation reached the horizon: new networks, xi = 0
            fresh = jax.vmap(new_inner)(jax.random.split(k_reset, population))
            pick = lambda a, b: jnp.where(done, a, b)  # noqa: E731
            ts = {
                "plus": jax.tree_util.tree_map(pick, fresh, s_plus),
                "minus": jax.tree_util.tree_map(pick, fresh, s_minus),
                "xi": jax.tree_util.tree_map(lambda a: jnp.where(done, jnp.zeros_like(a), a), xi),
            }
            return grad, (jnp.mean(l_plus) + jnp.mean(l_minus)) / 2, ts

        def outer_step(theta, opt, ts, key):
            grads, losses, ts = jax.vmap(task_estimate, in_axes=(None, 0, 0))(theta, ts, jax.random.split(key, tasks))
            g = jax.tree_util.tree_map(lambda a: jnp.mean(a, axis=0), grads)
            c = opt["count"] + 1
            m = jax.tree_util.tree_map(lambda a, b: 0.9 * a + 0.1 * b, opt["m"], g)
            v = jax.tree_util.tree_map(lambda a, b: 0.999 * a + 0.001 * b * b, opt["v"], g)
            lr = 3e-4 * jnp.sqrt(1 - 0.999**c) / (1 - 0.9**c)
            theta = jax.tree_util.tree_map(lambda p, a, b: p - lr * a / (jnp.sqrt(b) + 1e-8), theta, m, v)
            return theta, {"m": m, "v": v, "count": c}, ts, jnp.mean(losses)

        key = jax.random.PRNGKey(seed)
        k_theta, k_nets, self._key = jax.random.split(key, 3)
        self.theta = init_lopt(k_theta)
        zeros = jax.tree_util.tree_map(jnp.zeros_like, self.theta)
        self.opt = {"m": zeros, "v": zeros, "count": jnp.zeros((), jnp.int32)}
        nets = jax.vmap(jax.vmap(new_inner))(jax.random.split(k_nets, tasks * population).reshape(tasks, population, 2))
        self.ts = {"plus": nets, "minus": nets, "xi": jax.tree_util.tree_map(lambda a: jnp.stack([a] * tasks), zeros)}
        self._step = jax.jit(outer_step)

    @property
    def inner_steps_per_outer_step(self) -> int:
        return self.tasks * 2 * self.population * self.unroll

    def step(self) -> float:
        with one_cpu():
            self._key, k = jax.random.split(self._key)
            self.theta, self.opt, self.ts, loss = self._step(self.theta, self.opt, self.ts, k)
            return float(loss)  # blocks until done

    def timed_step(self) -> tuple[float, float]:
        """One outer step: its wall-clock seconds and this process's CPU seconds meanwhile (their
        ratio is the cores the step used: the check that a per-core figure is one)."""
        t0, c0 = time.perf_counter(), time.process_time()
        self.step()
        return time.perf_counter() - t0, time.process_time() - c0

    def measure(self, steps: int) -> float:
        """Inner steps per second over ``steps`` outer steps (compiled already by a first step);
        sets :attr:`cores_used`."""
        wall, cpu = (sum(t) for t in zip(*(self.timed_step() for _ in range(steps))))
        self.cores_used = cpu / wall
        return steps * self.inner_steps_per_outer_step / wall


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tasks", type=int, default=2)
    ap.add_argument("--population", type=int, default=4)
    ap.add_argument("--unroll", type=int, default=10)
    ap.add_argument("--steps", type=int, default=30)
    args = ap.parse_args()
    pes = JaxPES(from_nfopt_task(), args.tasks, args.population, args.unroll)
    t0 = time.perf_counter()
    first = pes.step()
    print(f"compiled in {time.perf_counter() - t0:.1f} s; meta-loss {first:.4f}")
    rate = pes.measure(args.steps)
    print(f"RESULT jax_inner_per_s={rate:.0f} cores_used={pes.cores_used:.2f}")


if __name__ == "__main__":
    main()
