"""`TaskFamily` (a spec that samples tasks) and `Task` (one concrete inner training problem)."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field, replace
from functools import cached_property, lru_cache
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from nfopt.data import Dataset, load_dataset
from nfopt.specs import child_seed
from nfopt.tasks.population import Population
from nfopt.tasks.spec import (
    CNNSpec,
    MLPSpec,
    SuiteSpec,
    TaskFamilySpec,
    TaskMixtureSpec,
    load_suite,
    load_task_family,
    load_task_source,
)
from nfopt.weightspace import NetworkSpec

__all__ = ["Task", "TaskFamily", "TaskMixture", "TaskSampler", "build_model", "load_suite_tasks", "load_tasks"]

_ACTIVATIONS = {
    "relu": nn.ReLU,
    "tanh": nn.Tanh,
    "gelu": nn.GELU,
    "sigmoid": nn.Sigmoid,
    "elu": nn.ELU,
    "silu": nn.SiLU,
    "leaky_relu": nn.LeakyReLU,
}


@lru_cache(maxsize=16)
def _dataset(name: str, size: int | None, num_train: int | None, options: tuple) -> Dataset:
    kwargs = dict(options)
    if size is not None:
        kwargs["size"] = size
    d = load_dataset(name, **kwargs)
    return d.subset(num_train) if num_train else d


def build_model(
    kind: str, widths: tuple[int, ...], activation: str, input_shape: tuple[int, ...], out: int, kernel_size: int = 3
) -> nn.Sequential:
    """An MLP (``widths`` = hidden widths) or CNN (``widths`` = conv channels) for the data."""
    act = _ACTIVATIONS[activation]
    mods: list[nn.Module] = []
    if kind == "mlp":
        n = 1
        for d in input_shape:
            n *= d
        mods.append(nn.Flatten())
        for w in widths:
            mods += [nn.Linear(n, w), act()]
            n = w
        mods.append(nn.Linear(n, out))
    else:
        c = input_shape[0]
        for w in widths:
            mods += [nn.Conv2d(c, w, kernel_size, padding=kernel_size // 2), act()]
            c = w
        mods += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c, out)]
    return nn.Sequential(*mods)


@dataclass(frozen=True)
class Task:
    """One inner training problem: data, an architecture, a batch size, a loss and a horizon."""

    name: str
    family: str
    seed: int
    spec: TaskFamilySpec = field(repr=False)
    kind: str
    widths: tuple[int, ...]
    activation: str
    batch_size: int
    loss: str
    horizon: int
    reparam: tuple[float, ...] | None = None  # per parameter tensor (named_parameters order): p = s p'
    loss_scale: float = 1.0

    @property
    def dataset(self) -> Dataset:
        d = self.spec.dataset
        return _dataset(d.name, d.size, d.num_train, tuple(sorted(d.options.items())))

    def build_model(self, seed: int | None = None) -> nn.Module:
        """A freshly initialised inner network (deterministic for a given ``seed``)."""
        data = self.dataset
        ks = self.spec.model.kernel_size if isinstance(self.spec.model, CNNSpec) else 3
        with torch.random.fork_rng(devices=[]):
            # the CPU generator only (the model is built on the CPU): torch.manual_seed also
            # queues a CUDA seeding with a formatted stack, ~0.4 ms per network here
            torch.default_generator.manual_seed(self.seed if seed is None else seed)
            return build_model(self.kind, self.widths, self.activation, data.input_shape, data.output_size, ks)

    @cached_property
    def network_spec(self) -> NetworkSpec:
        return NetworkSpec.from_module(self.build_model())

    def loss_fn(self, out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(out, target) if self.loss == "cross_entropy" else F.mse_loss(out, target)

    def population(self, size: int, seed: int = 0) -> Population:
        """``size`` independently initialised networks as a :class:`~nfopt.tasks.Population`."""
        return self.population_of([child_seed(seed, k, stride=100_003) for k in range(size)])

    def population_of(self, seeds: list[int]) -> Population:
        """One network per initialisation seed, in this task's (possibly reparameterised)
        coordinates: the same functions as :meth:`build_model` gives."""
        pop = Population.from_modules([self.build_model(s) for s in seeds], self.loss)
        if self.reparam is None and self.loss_scale == 1.0:
            return pop
        names = list(pop.params)
        scales = dict(zip(names, self.reparam)) if self.reparam is not None else {}
        return pop.reparameterize(scales, self.loss_scale)


class TaskFamily:
    """A validated family spec; :meth:`sample` draws concrete tasks reproducibly."""

    def __init__(self, spec: TaskFamilySpec) -> None:
        self.spec = spec

    @classmethod
    def load(cls, ref: str | Path) -> TaskFamily:
        """From ``tasks/<ref>.yaml`` or a path."""
        return cls(load_task_family(ref))

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def horizon(self) -> tuple[int, int]:
        return self.spec.horizon

    def families(self) -> list[TaskFamilySpec]:
        return [self.spec]

    def could_draw(self, task: Task) -> bool:
        """Whether :meth:`sample` can produce ``task``'s data, architecture, activation and batch
        size (horizons aside): what disjointness of a held-out suite is checked against."""
        return could_draw(self.spec, task)

    def sample(self, seed: int) -> Task:
        """The task for ``seed``: architecture, activation, batch size and horizon drawn from the ranges."""
        rng = random.Random(f"{self.spec.name}:{seed}")
        m = self.spec.model
        if isinstance(m, MLPSpec):
            depth = rng.randint(*m.hidden_layers)
            widths = tuple(rng.randint(*m.width) for _ in range(depth))
        else:
            depth = rng.randint(*m.conv_layers)
            widths = tuple(rng.randint(*m.channels) for _ in range(depth))
        return Task(
            name=f"{self.spec.name}/{seed}",
            family=self.spec.name,
            seed=seed,
            spec=self.spec,
            kind=m.kind,
            widths=widths,
            activation=rng.choice(list(m.activation)),
            batch_size=rng.randint(*self.spec.batch_size),
            loss=self.spec.loss,
            horizon=rng.randint(*self.spec.horizon),
        )

    def __repr__(self) -> str:
        return f"TaskFamily({self.spec.name!r})"


def could_draw(fam: TaskFamilySpec, task: Task) -> bool:
    """Whether family ``fam`` can draw ``task`` (data, architecture, activation, batch size)."""
    m = fam.model
    depth = m.hidden_layers if isinstance(m, MLPSpec) else m.conv_layers
    width = m.width if isinstance(m, MLPSpec) else m.channels
    kernel_ok = not isinstance(m, CNNSpec) or (
        isinstance(task.spec.model, CNNSpec) and task.spec.model.kernel_size == m.kernel_size
    )
    return (
        task.spec.dataset == fam.dataset
        and task.kind == m.kind
        and kernel_ok
        and depth[0] <= len(task.widths) <= depth[1]
        and all(width[0] <= w <= width[1] for w in task.widths)
        and task.activation in m.activation
        and fam.batch_size[0] <= task.batch_size <= fam.batch_size[1]
        and task.loss == fam.loss
    )


def _loguniform(rng: random.Random, lo: float, hi: float) -> float:
    return math.exp(rng.uniform(math.log(lo), math.log(hi)))


class TaskMixture:
    """A weighted mixture of task families with task augmentation (:class:`~nfopt.tasks.spec.AugmentSpec`):
    :meth:`sample` draws a family by weight, a task from it, then its reparameterisation and loss
    scale — all from the seed alone, so a seed names one task everywhere."""

    def __init__(self, spec: TaskMixtureSpec) -> None:
        self.spec = spec
        self.components = [
            (TaskFamily(c.family if isinstance(c.family, TaskFamilySpec) else load_task_family(c.family)), c.weight)
            for c in spec.families
        ]

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def horizon(self) -> tuple[int, int]:
        """The smallest range holding every family's horizons."""
        hs = [f.horizon for f, _ in self.components]
        return min(h[0] for h in hs), max(h[1] for h in hs)

    def families(self) -> list[TaskFamilySpec]:
        return [f.spec for f, _ in self.components]

    def could_draw(self, task: Task) -> bool:
        return any(f.could_draw(task) for f, _ in self.components)

    def sample(self, seed: int) -> Task:
        rng = random.Random(f"{self.spec.name}:{seed}")
        fams, weights = zip(*self.components)
        fam = rng.choices(fams, weights=weights)[0]
        task = fam.sample(rng.randrange(2**31))
        aug = self.spec.augment
        reparam, loss_scale = None, 1.0
        if rng.random() < aug.prob:
            n = len(list(task.build_model().parameters()))
            s_net = _loguniform(rng, *aug.reparam)
            reparam = tuple(s_net * _loguniform(rng, *aug.reparam_tensor) for _ in range(n))
            loss_scale = _loguniform(rng, *aug.loss_scale)
        return replace(task, name=f"{self.spec.name}/{seed}", seed=seed, reparam=reparam, loss_scale=loss_scale)

    def __repr__(self) -> str:
        return f"TaskMixture({self.spec.name!r}, {len(self.components)} families)"


TaskSampler = TaskFamily | TaskMixture


def load_tasks(ref: str | Path) -> TaskSampler:
    """A :class:`TaskFamily` or :class:`TaskMixture` from ``tasks/<ref>.yaml`` or a path."""
    spec = load_task_source(ref)
    return TaskMixture(spec) if isinstance(spec, TaskMixtureSpec) else TaskFamily(spec)


def load_suite_tasks(ref: str | Path | SuiteSpec) -> list[Task]:
    """The concrete tasks of a suite (``tasks/suites/<ref>.yaml``), each named as in the suite."""
    suite = ref if isinstance(ref, SuiteSpec) else load_suite(ref)
    tasks = []
    for t in suite.tasks:
        family = TaskFamilySpec.model_validate(t.model_dump(exclude={"seed"}))
        task = TaskFamily(family).sample(t.seed)
        fields = {k: getattr(task, k) for k in Task.__dataclass_fields__}
        tasks.append(Task(**{**fields, "name": t.name}))
    return tasks
