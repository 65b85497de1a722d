"""Validated specs of the INR experiments: fitting INR datasets, classifying INRs, editing them."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar, Literal

from pydantic import Field, model_validator

from nfopt.specs import Float, Int, Name, StrictModel, TrackingSpec, output_dir

__all__ = ["InrClassifySpec", "InrEditSpec", "InrFitSpec", "InrSourceSpec"]


class _Strict(StrictModel):
    @property
    def out_dir(self) -> Path:
        return output_dir(self.out, self.name)


class InrSourceSpec(_Strict):
    """The images to fit: grey ``fashion_mnist``/``mnist`` (IDX files) and ``digits`` (sklearn);
    colour ``cifar10`` (python pickle batches) and ``photo_patches`` (square crops of the two
    colour photographs bundled with scikit-learn, labelled by photo: always available offline)."""

    name: Literal["fashion_mnist", "mnist", "digits", "cifar10", "photo_patches"] = "fashion_mnist"
    size: Int = Field(default=28, gt=0, description="image side the INRs are fitted at")
    root: str | None = Field(default=None, description="directory with IDX / CIFAR files (default: the usual places)")
    train_limit: Int | None = Field(
        default=None, gt=0, description="first N training images (None: all; photo_patches: 5000)"
    )
    test_limit: Int | None = Field(
        default=None, gt=0, description="first N test images (None: all; photo_patches: 1000)"
    )
    crop: Int = Field(default=64, gt=0, description="photo_patches: side of the crops, resized to `size`")


class InrFitSpec(_Strict):
    """SIRENs fitted to every image of a dataset (both splits), ``shard_size`` at a time as one
    batched population; resumable (complete shards are kept)."""

    experiment: Literal["inr_fit"] = "inr_fit"
    command: ClassVar[str] = "nfopt inr fit"  # what runs it
    name: Name
    source: InrSourceSpec = InrSourceSpec()
    hidden: Int = Field(default=32, gt=0, description="SIREN width")
    hidden_layers: Int = Field(default=2, ge=1)
    w0: Float = Field(default=30.0, gt=0, description="sine frequency in every sine layer (original SIREN)")
    steps: Int = Field(default=300, gt=0, description="Adam steps per image")
    shared_init: bool = Field(
        default=False,
        description="start every SIREN from the same initialisation (weights then encode the image, not init noise)",
    )
    lr: Float = Field(default=1e-3, gt=0)
    shard_size: Int = Field(default=500, gt=0, description="images fitted together (one Ray task)")
    num_cpus: Float = Field(default=1.0, gt=0)
    out: str = "inrs/{name}"
    seed: Int = 0


class InrClassifySpec(_Strict):
    """Classify INRs by the class of the image they represent: Inr2Array (autoencoder, then a
    classifier on the latent arrays), an NFN-NP classifier on weights, a DWSNet (raw weights, hidden-neuron
    equivariant layers), an MLP on flat weights."""

    experiment: Literal["inr_classify"] = "inr_classify"
    command: ClassVar[str] = "nfopt inr classify"  # what runs it
    name: Name
    inrs: str = Field(description="an INR dataset directory (written by `nfopt inr fit`)")
    models: list[Literal["inr2array", "nfn_np", "dwsnets", "mlp"]] = Field(
        default_factory=lambda: ["inr2array", "nfn_np", "mlp"]
    )
    augment: bool = Field(default=True, description="random hidden permutations of training INRs")
    epochs: Int = Field(default=20, gt=0, description="classifier epochs")
    ae_epochs: Int = Field(default=10, gt=0, description="Inr2Array autoencoder epochs")
    batch_size: Int = Field(default=64, gt=0)
    lr: Float = Field(default=1e-3, gt=0)
    channels: Int = Field(default=32, gt=0)
    layers: Int = Field(default=2, ge=1)
    dws_layers: Int = Field(default=4, ge=2, description="DWSNet: DWS layers (input lift, residual blocks, output)")
    fourier_features: Int = Field(
        default=64, ge=0, description="NFN classifier: Gaussian Fourier features per weight entry (0: raw weights)"
    )
    fourier_scale: Float = Field(default=1.0, gt=0, description="std of those features' frequencies")
    dropout: Float = Field(default=0.1, ge=0, lt=1, description="dropout before the classifier heads' last layer")
    ae_blocks: Int = Field(default=2, ge=0, description="NFT blocks in the Inr2Array encoder")
    ae_max_train: Int | None = Field(default=None, gt=0, description="first N training INRs for the autoencoder")
    ae_schedule: Literal["constant", "cosine"] = Field(
        default="constant", description="Inr2Array autoencoder learning rate: constant, or cosine-annealed to 0"
    )
    num_latents: Int = Field(default=16, gt=0)
    latent_dim: Int = Field(default=64, gt=0)
    max_train: Int | None = Field(default=None, gt=0, description="first N training INRs (None: all)")
    out: str = "runs/{name}"
    tracking: TrackingSpec = TrackingSpec()
    seed: Int = 0


class InrEditSpec(_Strict):
    """Learn weight-space edits: the edited INR should render ``edit(image)``."""

    experiment: Literal["inr_edit"] = "inr_edit"
    command: ClassVar[str] = "nfopt inr edit"  # what runs it
    name: Name
    inrs: str = Field(description="an INR dataset directory (written by `nfopt inr fit`)")
    edit: Literal["dilate", "contrast", "linear_contrast"] = Field(
        default="dilate",
        description="dilate: 3x3 grey dilation; contrast: CLAHE (on CIE-LAB lightness for colour images, the NFN "
        "paper's edit); linear_contrast: scale around 0.5 by `contrast`",
    )
    contrast: Float = Field(default=1.5, gt=0, description="contrast factor around 0.5 (edit: linear_contrast)")
    clahe_clip: Float = Field(default=1.0, gt=0, description="CLAHE clip limit (edit: contrast)")
    clahe_tiles: Int = Field(default=3, ge=1, description="CLAHE tiles per side (edit: contrast)")
    models: list[Literal["nfn_np", "nfn_hnp", "nft", "dwsnets", "mlp"]] = Field(
        default_factory=lambda: ["nfn_np", "nfn_hnp", "mlp"]
    )
    epochs: Int = Field(default=20, gt=0)
    batch_size: Int = Field(default=64, gt=0)
    lr: Float = Field(default=1e-3, gt=0)
    channels: Int = Field(default=32, gt=0)
    layers: Int = Field(default=3, ge=1)
    fourier_features: Int = Field(
        default=32, ge=0, description="equivariant editors: Gaussian Fourier features per weight entry (0: none)"
    )
    fourier_scale: Float = Field(default=1.0, gt=0, description="std of those features' frequencies")
    max_train: Int | None = Field(default=None, gt=0)
    max_test: Int | None = Field(default=None, gt=0)
    out: str = "runs/{name}"
    tracking: TrackingSpec = TrackingSpec()
    seed: Int = 0

    @model_validator(mode="after")
    def _models(self):
        if not self.models:
            raise ValueError("models: give at least one of nfn_np, nfn_hnp, nft, dwsnets, mlp")
        return self
