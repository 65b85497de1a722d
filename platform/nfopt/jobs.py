"""Job specs (``jobs/meta/*.yaml``): what ``nfopt run`` meta-trains, where, and how it is tracked;
and the table of experiment specs (``jobs/experiments/*.yaml``, :data:`EXPERIMENTS`).

Validated by pydantic: unknown keys are errors, and every error names the file and the field
and says what is allowed."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, ValidationError, model_validator

from nfopt._files import read_yaml, validate_yaml_model, validation_message
from nfopt.evaluation.protocol import ADAM_LRS, SGD_LRS
from nfopt.inrs.spec import InrClassifySpec, InrEditSpec, InrFitSpec
from nfopt.meta.estimators import EstimatorKind
from nfopt.meta.problems import MetaLoss
from nfopt.specs import Float, Int, Name, Rate, Seed, StrictModel, TrackingSpec, output_dir
from nfopt.zoo.spec import GeneralizationSpec, TicketSpec, ZooSpec

__all__ = [
    "EXPERIMENTS",
    "META_MODEL_SIZES",
    "EstimatorSpec",
    "InnerSpec",
    "JobSpec",
    "JobSpecError",
    "MetaModelSpec",
    "MetaOptimizerSpec",
    "SearchSpec",
    "ValidationSpec",
    "apply_overrides",
    "load_job",
]

#: The one table of meta-model size fields: which each kind takes.
META_MODEL_SIZES: dict[str, tuple[str, ...]] = {
    "mlp": ("hidden",),
    "nfn_np": ("channels", "layers", "pointwise"),
    "nfn_hnp": ("channels", "layers", "pointwise"),
    "nft": ("channels", "blocks", "heads"),
}
_SIZE_FIELDS = tuple(dict.fromkeys(f for sizes in META_MODEL_SIZES.values() for f in sizes))  # all of them


class MetaModelSpec(StrictModel):
    """The learned optimizer: meta-model ``kind`` and size, and the update rule's scales."""

    kind: Literal["mlp", "nfn_np", "nfn_hnp", "nft"] = "nfn_np"
    channels: Int | None = Field(default=None, gt=0, description="NFN/NFT channels")
    layers: Int | None = Field(default=None, ge=2, description="NFN layers")
    pointwise: Int | None = Field(
        default=None, ge=0, description="NFN per-entry hidden layers before the head (the per-parameter MLP's depth)"
    )
    hidden: Int | None = Field(default=None, gt=0, description="per-parameter MLP width")
    blocks: Int | None = Field(default=None, gt=0, description="NFT blocks")
    heads: Int | None = Field(default=None, gt=0, description="NFT heads")
    step_mult: Float = Field(default=1e-2, gt=0, description="base learning rate of the rule")
    exp_mult: Float = Field(default=1e-3, gt=0)
    bound: Float = Field(default=0.1, gt=0, description="largest per-parameter step")
    hand: Literal["adam", "momentum", "none"] = "adam"
    inputs: list[Literal["adam_direction", "loss_features", "fraction", "tensor_features"]] = Field(
        default_factory=lambda: ["adam_direction", "loss_features", "fraction", "tensor_features"],
        description="the rule's optional inputs (ablations leave some out)",
    )
    lr_head: bool = Field(default=True, description="per-tensor log step sizes from the meta-model's pooled output")
    schedule_knots: Int = Field(
        default=0,
        ge=0,
        description="knots of a learned log step schedule over the training fraction (0: none; >= 2); "
        "meta-train it with estimator.kind episode_es",
    )
    width_exponent: bool = Field(
        default=False,
        description="a learned power law in each tensor's fan-in, (fan_in / 64)^alpha on its step "
        "(theta entry width_alpha, 0 at init); meta-train it with estimator.kind episode_es on a mixture of widths",
    )

    @model_validator(mode="after")
    def _knots(self):
        if self.schedule_knots == 1:
            raise ValueError("schedule_knots=1: use 0 (no schedule) or at least 2 knots")
        return self

    @model_validator(mode="after")
    def _fits_kind(self):
        allowed = set(META_MODEL_SIZES[self.kind])
        extra = {k for k in _SIZE_FIELDS if getattr(self, k) is not None} - allowed
        if extra:
            raise ValueError(f"{sorted(extra)} do not apply to kind={self.kind!r}; it takes {sorted(allowed)}")
        return self

    def meta_kwargs(self) -> dict:
        return {k: getattr(self, k) for k in _SIZE_FIELDS if getattr(self, k)}

    def as_kind(self, kind: str) -> MetaModelSpec:
        """The same rule settings with another meta-model ``kind`` at its default size (size
        fields the new kind does not take are dropped; the ones it shares are kept)."""
        if kind == self.kind:
            return self
        keep = set(META_MODEL_SIZES[kind])
        return self.model_copy(update={"kind": kind, **{f: None for f in _SIZE_FIELDS if f not in keep}})


class EstimatorSpec(StrictModel):
    kind: EstimatorKind = "pes"
    sigma: Float = Field(default=0.01, gt=0, description="perturbation scale (ES/PES/episode_es)")
    unroll: Int = Field(default=10, gt=0, description="inner steps per truncation (episode_es: whole runs)")
    remat: bool = Field(
        default=False,
        description="tbptt: recompute each inner step in the backward pass instead of keeping its activations "
        "(memory of one step rather than of the whole truncation, about one extra forward per step)",
    )
    params: list[Name] | None = Field(
        default=None,
        min_length=1,
        description="meta-train only these meta-parameters (names or dotted prefixes, e.g. log_schedule, "
        "log_step_scale, meta_model); the rest stay as they start (default: all)",
    )
    compile: bool = Field(
        default=False,
        description="es, pes, episode_es: run each inner step of a plain-MLP task (inner gradient and the rule's "
        "update) as one torch.compile graph per architecture plan (compiled on first use, tens of seconds each)",
    )

    @model_validator(mode="after")
    def _fits_kind(self):
        if self.remat and self.kind != "tbptt":
            raise ValueError(f"remat applies to estimator kind 'tbptt' only (this one is {self.kind!r}): drop it")
        if self.compile and self.kind == "tbptt":
            raise ValueError("compile applies to the forward-only estimators (es, pes, episode_es), not 'tbptt'")
        return self


class InnerSpec(StrictModel):
    population: Int = Field(default=4, gt=0, description="networks per task, trained together")
    tasks_per_worker: Int = Field(default=2, gt=0)
    meta_loss: MetaLoss = "mean"
    horizon: Literal["task", "loguniform"] | Int = "task"
    horizon_range: tuple[Int, Int] | None = None

    @model_validator(mode="after")
    def _horizon(self):
        if isinstance(self.horizon, int) and self.horizon < 1:
            raise ValueError("horizon must be 'task', 'loguniform' or a positive integer")
        if self.horizon_range is not None and not 1 <= self.horizon_range[0] <= self.horizon_range[1]:
            raise ValueError(f"horizon_range={list(self.horizon_range)}: need 1 <= min <= max")
        return self


class MetaOptimizerSpec(StrictModel):
    lr: Float = Field(default=3e-3, gt=0)
    clip: Float = Field(default=1.0, ge=0, description="global meta-gradient norm clip (0: off)")
    average: Float = Field(
        default=0.0,
        ge=0,
        lt=1,
        description="the saved learned optimizer is the uniform mean of θ over this final fraction of the outer "
        "steps (Polyak/SWA averaging of the meta-parameters); 0: the last θ",
    )

    def average_from(self, outer_steps: int) -> int | None:
        """The outer step after which θ is averaged (``None``: no averaging)."""
        return round(outer_steps * (1 - self.average)) if self.average > 0 else None


class WorkersSpec(StrictModel):
    count: Int = Field(default=1, ge=1)
    num_cpus: Float = Field(default=1.0, ge=0)
    num_gpus: Float = Field(default=0.0, ge=0)
    timeout_s: Float = Field(default=300.0, gt=0, description="a worker slower than this is replaced")
    place_timeout_s: Float = Field(
        default=120.0,
        gt=0,
        description="a new worker is waited for this long once; without room in the cluster the run goes on without it",
    )


class CheckpointSpec(StrictModel):
    every: Int = Field(default=50, gt=0, description="outer steps between checkpoints")
    dir: str = Field(default="runs/{name}", description="'{name}' is replaced by the job name")


class EvaluateSpec(StrictModel):
    """After meta-training: compare on a held-out suite against Adam tuned per task (log grid,
    separate tuning seeds) and against ``baselines`` meta-trained with the same budget."""

    suite: str = Field(description="a suite in tasks/suites/ or a path")
    seeds: Int = Field(default=5, gt=0)
    tuning_seeds: Int = Field(default=3, gt=0)
    tuned_baselines: list[Literal["adam", "sgd"]] = Field(default=["adam", "sgd"], description="tuned per task")
    adam_lrs: list[Rate] = Field(default=list(ADAM_LRS), min_length=1)
    sgd_lrs: list[Rate] = Field(default=list(SGD_LRS), min_length=1)
    steps: Int | None = Field(default=None, gt=0, description="inner steps (default: each task's horizon)")
    baselines: list[Literal["mlp", "nfn_np", "nfn_hnp", "nft"]] = Field(default_factory=list)
    pretrained: list[str] = Field(
        default_factory=list, description="shipped learned optimizers to put beside it (nfopt.list_pretrained())"
    )


class ValidationSpec(StrictModel):
    """A fixed validation set (:mod:`nfopt.evaluation.validation`): every ``every`` outer steps
    the rule that would be saved (the running mean of θ when ``meta_optimizer.average`` is on)
    trains ``networks`` networks on each of ``tasks`` fixed draws of the job's task for ``steps``
    steps; the score (mean log of final over initial train loss, lower is better) is logged as
    ``val_loss``, and the best-scoring rule so far is kept as ``best_optimizer.pt``."""

    tasks: Int = Field(default=4, gt=0, description="fixed tasks drawn from the job's task family or mixture")
    networks: Int = Field(default=2, gt=0, description="networks (initialisations) per task")
    steps: Int = Field(
        default=1000,
        gt=0,
        description="inner steps of each validation run (the rule is told); short runs mislead (300 ranked "
        "phase-1 rules opposite to the held-out suite, 1000 picked the best: bench/results/ablation/budget.md)",
    )
    every: Int = Field(default=50, gt=0, description="outer steps between validations")


class SearchSpec(StrictModel):
    """A Ray Tune sweep over job fields (``nfopt tune``): ``space`` maps dotted job fields to one
    of ``{loguniform: [lo, hi]}``, ``{uniform: [lo, hi]}``, ``{choice: [...]}``, ``{grid: [...]}``."""

    space: dict[str, dict[Literal["loguniform", "uniform", "choice", "grid"], list]] = Field(min_length=1)
    num_samples: Int = Field(default=4, gt=0)
    scheduler: Literal["asha", "fifo"] = "asha"
    algorithm: Literal["random", "optuna", "hyperopt"] = Field(
        default="random",
        description="how trials' values are chosen: random (and grid) sampling, or a model-based searcher "
        "(optuna's TPE, hyperopt; installed by the `search` extra: pip install 'nfopt[search]')",
    )
    seed: Int | None = Field(default=None, description="the searcher's seed (optuna, hyperopt)")
    metric: str = "meta_loss"
    grace_period: Int = Field(
        default=2,
        gt=0,
        description="ASHA: outer steps a trial runs before it may be stopped (judged at its first report from then on)",
    )
    report_every: Int = Field(default=1, gt=0, description="outer steps between reports (and checkpoints)")
    max_concurrent: Int | None = Field(default=None, gt=0)
    storage_path: str = Field(default="runs/tune", description="made absolute; '{name}' allowed")

    @model_validator(mode="after")
    def _distributions(self):
        for key, dist in self.space.items():
            if len(dist) != 1:
                raise ValueError(f"space.{key}: give exactly one of loguniform, uniform, choice, grid")
            ((kind, values),) = dist.items()
            if kind in ("loguniform", "uniform") and (len(values) != 2 or not values[0] < values[1]):
                raise ValueError(f"space.{key}: {kind} needs [low, high] with low < high")
            if kind == "loguniform" and values[0] <= 0:
                raise ValueError(f"space.{key}: loguniform needs low > 0")
            if kind in ("choice", "grid") and not values:
                raise ValueError(f"space.{key}: {kind} needs at least one value")
            if kind == "grid" and self.algorithm != "random":
                raise ValueError(
                    f"space.{key}: grid needs algorithm: random ({self.algorithm} samples; use choice instead)"
                )
        return self


class JobSpec(StrictModel):
    """A meta-training job."""

    name: Name
    task: str = Field(description="task family or mixture: a name in tasks/ or a path to its YAML")
    meta_model: MetaModelSpec = MetaModelSpec()
    estimator: EstimatorSpec = EstimatorSpec()
    inner: InnerSpec = InnerSpec()
    meta_optimizer: MetaOptimizerSpec = MetaOptimizerSpec()
    outer_steps: Int = Field(gt=0)
    workers: WorkersSpec = WorkersSpec()
    checkpoint: CheckpointSpec = CheckpointSpec()
    tracking: TrackingSpec = TrackingSpec()
    evaluate: EvaluateSpec | None = None
    validation: ValidationSpec | None = None
    search: SearchSpec | None = None
    init_from: str | None = Field(
        default=None,
        description="start θ from this learned optimizer (a shipped name, e.g. nfn_np_small, a .pt file, "
        "or a runs:/ or models:/ URI) "
        "instead of the untrained rule; its meta_model must match; its budget is carried over",
    )
    seed: Seed = 0

    @property
    def checkpoint_dir(self) -> Path:
        return output_dir(self.checkpoint.dir, self.name)


class JobSpecError(ValueError):
    """A job file that does not validate; the message names the file, the fields and what is allowed."""


def apply_overrides(spec: JobSpec, overrides: dict, what: str = "search.space") -> JobSpec:
    """``spec`` with dotted fields replaced (``{"meta_optimizer.lr": 1e-3}``), validated. A new
    ``meta_model.kind`` drops size fields the kind does not take."""
    raw = spec.model_dump()
    for key, value in overrides.items():
        *path, leaf = key.split(".")
        cur = raw
        for part in path:
            if not isinstance(cur.get(part), dict):
                raise JobSpecError(f"{what}: {key!r} is not a job field")
            cur = cur[part]
        if leaf not in cur:
            raise JobSpecError(f"{what}: {key!r} is not a job field")
        cur[leaf] = value
    kind = overrides.get("meta_model.kind")
    if kind is not None and kind != spec.meta_model.kind and kind in META_MODEL_SIZES:
        allowed = set(META_MODEL_SIZES[kind])
        for f in _SIZE_FIELDS:
            if f not in allowed and f"meta_model.{f}" not in overrides:
                raw["meta_model"][f] = None
    try:
        return JobSpec.model_validate(raw)
    except ValidationError as err:
        raise JobSpecError(f"{what} {overrides}: {validation_message(err, JobSpec)}") from None


#: The experiment specs (files with an ``experiment:`` field) by kind; each class names the
#: command that runs it (``command``).
EXPERIMENTS = {
    "zoo": ZooSpec,
    "generalization": GeneralizationSpec,
    "tickets": TicketSpec,
    "inr_fit": InrFitSpec,
    "inr_classify": InrClassifySpec,
    "inr_edit": InrEditSpec,
}


def load_job(path: str | Path) -> JobSpec:
    """Read and validate a meta-training job; an experiment spec (``experiment:`` field) is
    refused with the command that runs it."""
    path = Path(path)
    raw = read_yaml(path, JobSpecError, "job")
    if isinstance(raw, dict) and "experiment" in raw:
        kind = raw["experiment"]
        command = EXPERIMENTS[kind].command if kind in EXPERIMENTS else "nfopt inr ... or nfopt zoo"
        raise JobSpecError(
            f"{path}: an experiment spec (experiment: {kind}), not a meta-training job; run it with `{command} {path}`"
        )
    return validate_yaml_model(path, raw, JobSpec, JobSpecError)  # the file is read once
