"""Training one shard of a zoo: ``shard_size`` small CNNs with their own hyperparameters as one
population (grouped convolutions: member ``p``'s channels are group ``p``), so a shard costs
about as much as one wide network. Pure torch; :func:`nfopt.cluster.fanout.as_completed` runs shards on Ray."""

from __future__ import annotations

import math
import random

import torch
import torch.nn.functional as F
from torch import nn

from nfopt.data import Dataset, load_dataset
from nfopt.specs import child_seed
from nfopt.zoo.spec import ZooSpec

__all__ = ["build_cnn", "load_zoo_data", "sample_shard", "train_shard"]


def _tanh(x: torch.Tensor) -> torch.Tensor:
    """``tanh(x) = 2 sigmoid(2x) - 1``: the same function (absolute error ~1e-7), ~3x faster
    here than ``torch.tanh``, whose CPU kernel runs at ~3 ns per element in this build (sigmoid
    ~0.4 ns): tanh shards of a zoo spent a third of their time in it."""
    return torch.sigmoid(2.0 * x) * 2.0 - 1.0


_ACT = {"relu": F.relu, "tanh": _tanh, "gelu": F.gelu, "sigmoid": torch.sigmoid, "elu": F.elu, "silu": F.silu}
_ACT_MODULE = {"relu": nn.ReLU, "tanh": nn.Tanh, "gelu": nn.GELU, "sigmoid": nn.Sigmoid, "elu": nn.ELU, "silu": nn.SiLU}


def build_cnn(in_channels: int, channels: int, conv_layers: int, num_classes: int, activation: str = "relu"):
    """The zoo architecture as an ``nn.Sequential`` (3x3 stride-2 convs, global average pool,
    linear head); zoo weights load into it with ``load_state_dict``."""
    mods: list[nn.Module] = []
    c = in_channels
    for _ in range(conv_layers):
        mods += [nn.Conv2d(c, channels, 3, stride=2, padding=1), _ACT_MODULE[activation]()]
        c = channels
    mods += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c, num_classes)]
    return nn.Sequential(*mods)


def load_zoo_data(spec: ZooSpec) -> Dataset:
    kwargs = {"size": spec.data.size}
    if spec.data.root:
        kwargs["root"] = spec.data.root
    return load_dataset(spec.data.name, **kwargs)


def _loguniform(rng: random.Random, r) -> float:
    return math.exp(rng.uniform(math.log(r.low), math.log(r.high)))


def sample_shard(spec: ZooSpec, shard: int) -> list[dict]:
    """The hyperparameters of every run in ``shard``: a deterministic function of (seed, shard),
    so a resumed build retrains exactly the missing shards. Activation and optimizer are drawn
    per shard (one population shares them), the rest per run."""
    rng = random.Random(f"{spec.seed}/{shard}")
    s = spec.space
    activation, optimizer = rng.choice(s.activations), rng.choice(s.optimizers)
    first = shard * spec.shard_size
    runs = []
    for run in range(first, min(spec.runs, first + spec.shard_size)):
        runs.append(
            {
                "run": run,
                "seed": child_seed(spec.seed, run),
                "activation": activation,
                "optimizer": optimizer,
                "lr": _loguniform(rng, s.adam_lr if optimizer == "adam" else s.sgd_lr),
                "weight_decay": _loguniform(rng, s.weight_decay),
                "init_scale": _loguniform(rng, s.init_scale),
                "dropout": rng.uniform(s.dropout.low, s.dropout.high),
                "train_fraction": rng.uniform(s.train_fraction.low, s.train_fraction.high),
            }
        )
    return runs


def _init(spec: ZooSpec, data: Dataset, runs: list[dict]) -> list[torch.Tensor]:
    """Stacked parameters ``[W_1, b_1, ..., W_head, b_head]`` each ``(P, ...)``: PyTorch's
    default initialisation per run seed, times the run's init scale."""
    per_run = []
    for r in runs:
        torch.manual_seed(r["seed"])
        net = build_cnn(data.input_shape[0], spec.channels, spec.conv_layers, data.num_classes, r["activation"])
        per_run.append([p.detach() * r["init_scale"] for p in net.parameters()])
    return [torch.stack(ps).requires_grad_() for ps in zip(*per_run)]


def _forward(params, x: torch.Tensor, act, drop: torch.Tensor | None, gen=None) -> torch.Tensor:
    """``x (P, B, C, H, W) -> logits (P, B, classes)``; ``drop (P,)`` dropout rates or None."""
    p, b = x.shape[:2]
    h = x.transpose(0, 1).reshape(b, -1, *x.shape[3:])  # (B, P*C, H, W): member p's channels are group p
    # channels-last: oneDNN's grouped convolutions run ~3x faster on it here (forward+backward,
    # 16 members, batch 64, 28x28: 32 vs 94 ms over the three convolutions, one thread)
    h = h.contiguous(memory_format=torch.channels_last)
    for w, bias in zip(params[0:-2:2], params[1:-2:2]):
        h = act(F.conv2d(h, w.flatten(0, 1), bias.flatten(), stride=2, padding=1, groups=p))  # (B, P*c, H', W')
        if drop is not None:
            h = _dropout(h, (1 - drop).repeat_interleave(w.shape[1]), gen)
    pooled = h.mean((2, 3)).view(b, p, -1)  # (B, P, c)
    return torch.einsum("bpc,poc->pbo", pooled, params[-2]) + params[-1][:, None]


def _dropout(h: torch.Tensor, keep: torch.Tensor, gen=None) -> torch.Tensor:
    """Inverted dropout of a channels-last ``h (B, C, H, W)`` with per-channel keep
    probabilities ``keep (C,)``, quantised to multiples of 1/256 (the scale uses the quantised
    value, so the layer stays unbiased). Computed on the ``(B H W, C)`` view of h's memory with
    a mask of random bytes, four per full-range 32-bit draw: CPU uniforms cost ~3 ns each and elementwise
    ops mixing a channels-last ``h`` with a contiguous mask take a slow strided path (together
    45 ms of a 78 ms zoo step)."""
    c = h.shape[1]
    flat = h.permute(0, 2, 3, 1).reshape(-1, c)  # (B H W, C): a view for channels-last h
    raw = torch.empty((flat.numel() + 3) // 4, dtype=torch.int32).random_(-(2**31), 2**31, generator=gen)
    u8 = raw.view(torch.uint8)[: flat.numel()].view(flat.shape)
    thr = (keep * 256).round().clamp(1, 256)  # (C,): P(byte < thr) = thr / 256
    out = flat * (u8 <= (thr - 1).to(torch.uint8)) * (256.0 / thr)
    return out.view(h.shape[0], *h.shape[2:], c).permute(0, 3, 1, 2)  # (B, C, H, W), channels-last


@torch.no_grad()
def _accuracy(params, x, y, act, chunk: int = 1000) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-run accuracy and loss ``(P,)`` on shared examples ``x (N, C, H, W)``."""
    p = params[0].shape[0]
    correct, loss = torch.zeros(p), torch.zeros(p)
    for i in range(0, len(x), chunk):
        xb, yb = x[i : i + chunk], y[i : i + chunk]
        logits = _forward(params, xb.expand(p, *xb.shape), act, None)
        correct += (logits.argmax(-1) == yb).sum(1)
        loss += F.cross_entropy(logits.transpose(1, 2), yb.expand(p, -1), reduction="none").sum(1)
    return correct / len(x), loss / len(x)


def train_shard(spec: ZooSpec, shard: int, data: Dataset | None = None) -> dict:
    """Train the runs of ``shard``; returns ``{"runs": [hyperparameters], "epochs": [saved
    epochs], "params": {name: (R, E, ...)}, "train_acc"/"test_acc"/"test_loss": (R, E)}``."""
    data = data or load_zoo_data(spec)
    runs = sample_shard(spec, shard)
    p = len(runs)
    act = _ACT[runs[0]["activation"]]
    params = _init(spec, data, runs)
    lr = torch.tensor([r["lr"] for r in runs])
    wd = torch.tensor([r["weight_decay"] for r in runs])
    drop = torch.tensor([r["dropout"] for r in runs])
    gen = torch.Generator().manual_seed(spec.seed * 7919 + shard)
    n = len(data.x_train)
    sizes = torch.tensor([max(spec.batch_size, int(r["train_fraction"] * n)) for r in runs]).clamp(max=n)
    order = torch.stack([torch.randperm(n, generator=gen) for _ in runs])  # run p trains on order[p, :sizes[p]]
    xe_tr, ye_tr = data.x_train[: spec.eval_examples], data.y_train[: spec.eval_examples]
    xe_te, ye_te = data.x_test[: spec.eval_examples], data.y_test[: spec.eval_examples]
    state = [torch.zeros_like(t) for t in params], [torch.zeros_like(t) for t in params]
    names = [n for n, _ in build_cnn(data.input_shape[0], spec.channels, spec.conv_layers, 2).named_parameters()]
    saved = {k: [] for k in names}
    metrics = {"train_acc": [], "test_acc": [], "test_loss": []}

    def save() -> None:
        for k, t in zip(names, params):
            saved[k].append(t.detach().clone())
        tr, _ = _accuracy(params, xe_tr, ye_tr, act)
        te, te_loss = _accuracy(params, xe_te, ye_te, act)
        metrics["train_acc"].append(tr)
        metrics["test_acc"].append(te)
        metrics["test_loss"].append(te_loss)

    step = 0
    if 0 in spec.save_epochs:
        save()
    for epoch in range(1, spec.epochs + 1):
        for _ in range(spec.steps_per_epoch):
            pick = (torch.rand(p, spec.batch_size, generator=gen) * sizes[:, None]).long()
            idx = order.gather(1, pick)  # (P, B) indices into each run's subset
            logits = _forward(params, data.x_train[idx], act, drop, gen)
            loss = F.cross_entropy(logits.transpose(1, 2), data.y_train[idx], reduction="none").mean(1).sum()
            grads = torch.autograd.grad(loss, params)
            step += 1
            with torch.no_grad():
                for i, (t, g) in enumerate(zip(params, grads)):
                    shape = (p,) + (1,) * (t.ndim - 1)
                    g = torch.nan_to_num(g + wd.view(shape) * t, nan=0.0)  # L2 weight decay
                    if runs[0]["optimizer"] == "adam":
                        m, v = state[0][i], state[1][i]
                        m.mul_(0.9).add_(g, alpha=0.1)
                        v.mul_(0.999).addcmul_(g, g, value=0.001)
                        mh, vh = m / (1 - 0.9**step), v / (1 - 0.999**step)
                        t -= lr.view(shape) * mh / (vh.sqrt() + 1e-8)
                    else:
                        buf = state[0][i]
                        buf.mul_(0.9).add_(g)
                        t -= lr.view(shape) * buf
        if epoch in spec.save_epochs:
            save()
    return {
        "runs": runs,
        "epochs": sorted(spec.save_epochs),
        "params": {k: torch.stack(v, 1) for k, v in saved.items()},  # (R, E, ...)
        **{k: torch.stack(v, 1) for k, v in metrics.items()},  # (R, E)
    }
