"""Validated specs of the zoo experiments (YAML at the edges, plain arguments inside)."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar, Literal

from pydantic import Field, model_validator

from nfopt.specs import Float, Int, Name, StrictModel, TrackingSpec, output_dir

__all__ = ["GeneralizationSpec", "TicketSpec", "ZooDataSpec", "ZooSpec"]


class ZooDataSpec(StrictModel):
    name: Literal["fashion_mnist", "mnist", "digits"] = "fashion_mnist"
    size: Int = Field(default=14, gt=0, description="image side (28 native for (Fashion-)MNIST, 8 for digits)")
    root: str | None = Field(default=None, description="directory with IDX files (default: the usual places)")


class Range(StrictModel):
    low: Float
    high: Float

    @model_validator(mode="after")
    def _ordered(self):
        if self.low > self.high:
            raise ValueError(f"low={self.low} > high={self.high}: give low <= high")
        return self


class HyperSpace(StrictModel):
    """What each zoo member samples. Learning rates, weight decay and init scale log-uniformly;
    dropout and the training fraction uniformly; activation and optimizer per shard."""

    adam_lr: Range = Range(low=1e-4, high=1e-2)
    sgd_lr: Range = Range(low=1e-3, high=2e-1)
    weight_decay: Range = Range(low=1e-8, high=1e-2)
    init_scale: Range = Range(low=0.3, high=3.0)
    dropout: Range = Range(low=0.0, high=0.5)
    train_fraction: Range = Range(low=0.1, high=1.0)
    activations: list[Literal["relu", "tanh", "gelu", "sigmoid", "elu", "silu"]] = Field(
        default_factory=lambda: ["relu", "tanh"]
    )
    optimizers: list[Literal["adam", "sgd"]] = Field(default_factory=lambda: ["adam", "sgd"])

    @model_validator(mode="after")
    def _positive(self):
        for name in ("adam_lr", "sgd_lr", "weight_decay", "init_scale"):
            if getattr(self, name).low <= 0:
                raise ValueError(f"{name}.low must be > 0 (sampled log-uniformly)")
        if not 0 <= self.dropout.low <= self.dropout.high < 1:
            raise ValueError("dropout must lie in [0, 1)")
        if not 0 < self.train_fraction.low <= self.train_fraction.high <= 1:
            raise ValueError("train_fraction must lie in (0, 1]")
        return self


class ZooSpec(StrictModel):
    """A zoo of small CNNs (the Small CNN Zoo's shape: ``conv_layers`` 3x3 stride-2 convolutions
    of ``channels`` channels, global average pooling, a linear head) with sampled
    hyperparameters, weights saved after each epoch in ``save_epochs`` (0 = initialisation)."""

    experiment: Literal["zoo"] = "zoo"
    command: ClassVar[str] = "nfopt zoo"  # what runs it
    name: Name
    data: ZooDataSpec = ZooDataSpec()
    conv_layers: Int = Field(default=3, ge=1)
    channels: Int = Field(default=16, gt=0)
    runs: Int = Field(default=256, gt=0, description="training runs (members); checkpoints = runs x len(save_epochs)")
    shard_size: Int = Field(default=16, gt=0, description="runs trained together as one population (one Ray task)")
    epochs: Int = Field(default=8, gt=0)
    steps_per_epoch: Int = Field(default=100, gt=0, description="minibatch steps per epoch (same for every run)")
    save_epochs: list[Int] = Field(default=[0, 1, 2, 3, 4, 5, 6, 7, 8])
    batch_size: Int = Field(default=64, gt=0)
    eval_examples: Int = Field(default=2000, gt=0, description="train/test examples for the saved accuracies")
    space: HyperSpace = HyperSpace()
    out: str = Field(default="zoos/{name}", description="'{name}' is replaced by the zoo name")
    num_cpus: Float = Field(default=1.0, gt=0, description="CPUs per shard task")
    seed: Int = 0

    @model_validator(mode="after")
    def _epochs(self):
        bad = [e for e in self.save_epochs if not 0 <= e <= self.epochs]
        if bad or not self.save_epochs:
            raise ValueError(f"save_epochs={self.save_epochs}: need a non-empty list within [0, epochs={self.epochs}]")
        return self

    @property
    def out_dir(self) -> Path:
        return output_dir(self.out, self.name)

    @property
    def num_shards(self) -> int:
        return -(-self.runs // self.shard_size)


class GeneralizationSpec(StrictModel):
    """Predict a zoo member's test accuracy from its weights (invariant NFN-NP/HNP, NFT, STATNN).

    No permutation augmentation: every predictor is exactly invariant to hidden-neuron
    permutations, so permuted inputs would give the same outputs and gradients."""

    experiment: Literal["generalization"] = "generalization"
    command: ClassVar[str] = "nfopt zoo"  # what runs it
    name: Name
    zoo: str = Field(description="a zoo directory (written by `nfopt zoo`)")
    predictors: list[Literal["nfn_np", "nfn_hnp", "nft", "statnn"]] = Field(
        default_factory=lambda: ["nfn_np", "nfn_hnp", "nft", "statnn"]
    )
    channels: Int = Field(default=16, gt=0)
    layers: Int = Field(default=3, ge=1, description="equivariant layers (NFN) or blocks (NFT)")
    epochs: Int = Field(default=30, gt=0)
    batch_size: Int = Field(default=64, gt=0)
    lr: Float = Field(default=1e-3, gt=0)
    test_fraction: Float = Field(default=0.2, gt=0, lt=1, description="share of training runs held out")
    min_epoch: Int = Field(default=0, ge=0, description="use checkpoints saved at or after this epoch")
    out: str = "runs/{name}"
    tracking: TrackingSpec = TrackingSpec()
    seed: Int = 0

    @property
    def out_dir(self) -> Path:
        return output_dir(self.out, self.name)


class TicketSpec(StrictModel):
    """Winning tickets: IMP masks of small MLPs, and an NFN trained to predict them from the
    initialisation; compared by test accuracy of the masked network retrained from init."""

    experiment: Literal["tickets"] = "tickets"
    command: ClassVar[str] = "nfopt zoo"  # what runs it
    name: Name
    data: ZooDataSpec = ZooDataSpec(name="digits", size=8)
    widths: list[Int] = Field(default=[64, 64], min_length=1, description="hidden widths of the MLPs")
    inits: Int = Field(default=128, gt=1, description="initialisations (each gets its IMP mask)")
    test_inits: Int = Field(default=32, gt=0, description="of which held out to test the mask predictor")
    sparsity: Float = Field(default=0.95, gt=0, lt=1)
    prune_rate: Float = Field(default=0.2, gt=0, lt=1, description="fraction of remaining weights pruned per round")
    train_steps: Int = Field(default=300, gt=0)
    batch_size: Int = Field(default=64, gt=0)
    lr: Float = Field(default=3e-3, gt=0)
    channels: Int = Field(default=16, gt=0)
    layers: Int = Field(default=3, ge=1)
    nfn_epochs: Int = Field(default=200, gt=0)
    predictors: list[Literal["np", "np_io", "hnp"]] = Field(
        default=["np"],
        min_length=1,
        description="mask predictors, each trained on the same IMP masks: np (every neuron permutable), np_io "
        "(NP layers with learned input/output-neuron embeddings), hnp (the complete hidden-neuron basis)",
    )
    magnitude: bool = Field(default=False, description="give the predictors |w| as a second input channel")
    ensemble: Int = Field(
        default=1,
        gt=0,
        description="train this many predictors of each kind (seeds seed, seed+1, ...) and rank weights by their "
        "mean logit",
    )
    loss: Literal["bce", "ordinal"] = Field(
        default="bce",
        description="bce: class-balanced cross-entropy against IMP's final mask; ordinal: a cumulative-link loss "
        "against the round each weight survived to in IMP (its whole pruning order)",
    )
    out: str = "runs/{name}"
    tracking: TrackingSpec = TrackingSpec()
    seed: Int = 0

    def imp_key(self) -> dict:
        """The fields IMP's masks depend on (a cached ``imp_masks.pt`` is reused only when they match)."""
        keys = ("data", "widths", "inits", "sparsity", "prune_rate", "train_steps", "batch_size", "lr", "seed")
        return {k: v for k, v in self.model_dump().items() if k in keys}

    @model_validator(mode="after")
    def _split(self):
        if self.test_inits >= self.inits:
            raise ValueError(f"test_inits={self.test_inits} must be < inits={self.inits}")
        return self

    @property
    def out_dir(self) -> Path:
        return output_dir(self.out, self.name)
