"""INR editing (the NFN paper's weight-space editing experiment): a network maps an INR's
weights to a weight *change* so that the edited INR renders ``edit(image)`` — dilation (digit
and MNIST-like images) or a contrast change (CLAHE, the papers' edit of colour images).
Equivariant editors (NFN-NP, NFN-HNP, NFT, DWSNets) keep the permutation symmetry; the MLP
baseline edits the flattened weight vector."""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F
from torch import nn

from nfopt.data.image import clahe
from nfopt.inr import grid_coords, render
from nfopt.inrs.spec import InrEditSpec
from nfopt.inrs.store import load_inrs
from nfopt.nn import (
    DWSNet,
    FourierIOEncoding,
    GaussianFourierFeatures,
    HNPLinear,
    NFActivation,
    NPLinear,
    build_nft,
    fuse_relu,
)
from nfopt.recipes.experiments import claim_experiment, finish_experiment
from nfopt.weightspace import NetworkSpec, WeightSpaceFeatures

__all__ = ["PAPER_DILATION_MSE", "Editor", "edit_images", "edit_loss", "run_edit"]

#: Dilation MSE on MNIST INRs reported by the NFN / NFT papers (images normalised to [-1, 1]).
PAPER_DILATION_MSE = {"nfn_np": 0.068, "nfn_hnp": 0.070, "mlp": 0.306, "nft": 0.051}


def edit_images(
    images: torch.Tensor, edit: str, contrast: float = 1.5, clip_limit: float = 1.0, tiles: int = 3
) -> torch.Tensor:
    """The target edit of ``(B, C, H, W)`` images in [0, 1]: ``dilate`` (3x3 grey dilation, the
    papers' MNIST edit), ``contrast`` (CLAHE with ``clip_limit`` and ``tiles`` x ``tiles`` tiles, on
    the CIE-LAB lightness of colour images: the papers' CIFAR-10 edit) or ``linear_contrast``
    (scale around 0.5 by ``contrast``, clipped)."""
    if edit == "dilate":
        return F.max_pool2d(images, 3, stride=1, padding=1)
    if edit == "contrast":
        return clahe(images, clip_limit, tiles)
    if edit == "linear_contrast":
        return ((images - 0.5) * contrast + 0.5).clamp(0, 1)
    raise ValueError(f"edit={edit!r}: use 'dilate', 'contrast' or 'linear_contrast'")


class Editor(nn.Module):
    """``x -> x + Δ(x)`` with ``Δ`` an equivariant stack (``nfn_np``/``nfn_hnp``/``nft``/``dwsnets``) or an MLP on
    the flat weights (``mlp``); inputs are divided by per-tensor scales and ``Δ`` multiplied back.
    The NFN and NFT editors see Gaussian Fourier features of every entry (``fourier_features > 0``;
    the DWSNet, as in its paper, sees the standardised weights alone);
    the NP editor also sees sinusoidal IO-neuron encodings (so it may treat the input and output
    neurons by position, as HNP and NFT layers do). ``Δ`` is scaled by a learned gain that starts
    at zero, so the untrained editor is the identity. ``(B, 1, ...) -> (B, 1, ...)``."""

    def __init__(
        self,
        kind: str,
        spec: NetworkSpec,
        channels: int,
        layers: int,
        scale: list[float],
        fourier_features: int = 0,
        fourier_scale: float = 1.0,
    ) -> None:
        super().__init__()
        self.kind = kind
        self.register_buffer("scale", torch.tensor(scale))
        enc: list[nn.Module] = []
        c = 1
        if kind not in ("mlp", "dwsnets") and fourier_features:
            enc.append(GaussianFourierFeatures(1, fourier_features, fourier_scale))
            c = enc[-1].out_channels
        if kind == "nfn_np":
            enc.append(FourierIOEncoding(spec, c))
            c = enc[-1].out_channels
        self.encode = nn.Sequential(*enc)
        if kind in ("nfn_np", "nfn_hnp"):
            layer = NPLinear if kind == "nfn_np" else HNPLinear
            mods: list[nn.Module] = []
            for _ in range(layers - 1):
                mods += [layer(spec, c, channels), NFActivation()]
                c = channels
            mods.append(layer(spec, c, 1))
            self.delta = nn.Sequential(*mods)
            fuse_relu(self.delta)  # the ReLUs ride in the layers' passes (same function, same state_dict)
        elif kind == "nft":
            self.delta = build_nft(
                spec, c, channels=channels, num_blocks=max(1, layers - 1), num_heads=4, out_channels=1
            )
        elif kind == "dwsnets":
            self.delta = DWSNet(spec, c, channels, 1, max(2, layers))
        elif kind == "mlp":
            self.delta = nn.Sequential(
                nn.Linear(spec.num_params, 512),
                nn.ReLU(),
                nn.Linear(512, 512),
                nn.ReLU(),
                nn.Linear(512, spec.num_params),
            )
        else:
            raise ValueError(f"editor kind={kind!r}: use nfn_np, nfn_hnp, nft, dwsnets or mlp")
        self.gain = nn.Parameter(torch.zeros(()))  # ReZero: the untrained editor is exactly the identity

    def _scaled(self, x: WeightSpaceFeatures, inverse: bool) -> WeightSpaceFeatures:
        return x.scale_tensors(self.scale if inverse else 1 / self.scale)

    def forward(self, x: WeightSpaceFeatures) -> WeightSpaceFeatures:
        z = self._scaled(x, inverse=False)
        if self.kind == "mlp":
            d = WeightSpaceFeatures.from_flat(self.delta(z.flatten()), x.spec)
        else:
            d = self.delta(self.encode(z))  # (B, 1, ...)
        return x + self._scaled(d, inverse=True) * self.gain


def _render_images(x: WeightSpaceFeatures, shape: list[int], w0: float) -> torch.Tensor:
    c, h, w = shape
    return render(x, grid_coords(h, w), w0).transpose(1, 2).reshape(-1, c, h, w)


def edit_loss(
    editor: nn.Module, x: WeightSpaceFeatures, target: torch.Tensor, shape: list[int], w0: float
) -> torch.Tensor:
    """Per-INR editing loss ``(B,)``: mean squared error between the rendering of the edited INRs
    ``editor(x)`` (``x`` ``(B, 1, ...)`` SIREN weights, images ``shape`` = ``(C, H, W)``) and the
    edited images ``target`` ``(B, C, H, W)``."""
    return (_render_images(editor(x), shape, w0) - target).square().flatten(1).mean(1)


def _grid(rows: list[torch.Tensor], names: list[str], path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = rows[0].shape[0]
    fig, axes = plt.subplots(len(rows), n, figsize=(1.1 * n, 1.15 * len(rows)), squeeze=False)
    for r, (imgs, name) in enumerate(zip(rows, names)):
        for i in range(n):
            img = imgs[i].detach().clamp(0, 1).permute(1, 2, 0).squeeze(-1).numpy()
            axes[r][i].imshow(img, cmap="gray", vmin=0, vmax=1)
            axes[r][i].set_xticks([])
            axes[r][i].set_yticks([])
        axes[r][0].set_ylabel(name, fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def run_edit(spec: InrEditSpec, progress: bool = True, overwrite: bool = False) -> dict:
    """Train every editor; test MSE between the edited INR's rendering and the edited image."""
    claim_experiment(spec, overwrite)
    from rich.console import Console

    console = Console(stderr=True, quiet=not progress)
    ds = load_inrs(spec.inrs, {"train": spec.max_train, "test": spec.max_test})
    shape = ds.architecture["image_shape"]
    targets = {
        s: edit_images(
            ds.images(s, torch.arange(len(getattr(ds, s)))), spec.edit, spec.contrast, spec.clahe_clip, spec.clahe_tiles
        )
        for s in ("train", "test")
    }
    scale = ds.train.stds()
    results, examples = {}, {}
    show = torch.arange(min(8, len(ds.test)))
    for kind in spec.models:
        torch.manual_seed(spec.seed)
        editor = Editor(
            kind, ds.network_spec, spec.channels, spec.layers, scale, spec.fourier_features, spec.fourier_scale
        )
        opt = torch.optim.Adam(editor.parameters(), lr=spec.lr)
        gen = torch.Generator().manual_seed(spec.seed)
        start = time.perf_counter()
        for epoch in range(spec.epochs):
            total = 0.0
            order = torch.randperm(len(ds.train), generator=gen)
            for i in range(0, len(order), spec.batch_size):
                b = order[i : i + spec.batch_size]
                loss = edit_loss(editor, ds.train.features(b), targets["train"][b], shape, ds.w0).mean()
                opt.zero_grad()
                loss.backward()
                opt.step()
                total += loss.item() * len(b)
            console.print(f"{kind} epoch {epoch + 1}/{spec.epochs}: train mse {total / len(order):.5f}")
        editor.eval()  # batch norm (DWSNets) on its running statistics, not the test batch's
        with torch.no_grad():
            mse = []
            for i in range(0, len(ds.test), 256):
                idx = torch.arange(i, min(i + 256, len(ds.test)))
                mse.append(edit_loss(editor, ds.test.features(idx), targets["test"][idx], shape, ds.w0))
            examples[kind] = _render_images(editor(ds.test.features(show)), shape, ds.w0)
        results[kind] = {
            "test_mse": float(torch.cat(mse).mean()),
            "test_mse_pm1": 4 * float(torch.cat(mse).mean()),  # pixels in [-1, 1], as the papers measure
            "seconds": time.perf_counter() - start,
            "paper_dilation": PAPER_DILATION_MSE.get(kind) if spec.edit == "dilate" else None,
        }
    with torch.no_grad():
        identity = _render_images(ds.test.features(torch.arange(len(ds.test))), shape, ds.w0)
        no_edit = float((identity - targets["test"]).square().mean())
    out_dir = spec.out_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    originals = ds.images("test", show)
    _grid(
        [originals, identity[show], targets["test"][show], *examples.values()],
        ["original", "INR", f"target ({spec.edit})", *examples],
        out_dir / "edits.png",
    )
    meta = {"train_inrs": len(ds.train), "test_inrs": len(ds.test), "edit": spec.edit, "unedited_mse": no_edit}
    lines = [
        f"INR editing ({spec.edit}): test MSE between the edited INR's rendering and the edited image, "
        f"{meta['test_inrs']} test INRs (trained on {meta['train_inrs']}); unedited INRs: {no_edit:.4f} "
        f"({4 * no_edit:.4f} with pixels in [-1, 1])",
        "",
        "| editor | test MSE, pixels in [0, 1] | pixels in [-1, 1] (the papers' scale) | paper, dilation (MNIST) "
        "| seconds |",
        "|---|---|---|---|---|",
        *[
            f"| {k} | {r['test_mse']:.4f} | {r['test_mse_pm1']:.4f} "
            f"| {r['paper_dilation'] if r['paper_dilation'] is not None else '-'} | {r['seconds']:.0f} |"
            for k, r in results.items()
        ],
    ]
    metrics = {f"{k}.test_mse": r["test_mse"] for k, r in results.items()}
    finish_experiment(spec, meta, results, lines, metrics, "nfopt-inr", ("edits.png",))
    return {**meta, "results": results}
