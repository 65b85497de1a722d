"""Winning tickets: iterative magnitude pruning (IMP, with rewinding to the initialisation) of
small MLPs, NFNs trained to predict the IMP mask from the initialisation alone (NP, NP with
input/output-neuron embeddings, or HNP layers), and the test accuracy of masked networks
retrained from init with NFN, IMP and random masks. IMP's masks are kept in the run directory
(``imp_masks.pt``) and reused by a later run with the same IMP settings, so predictor ablations
do not pay for IMP again."""

from __future__ import annotations

import itertools
import math
import time

import torch
import torch.nn.functional as F

from nfopt.data import Dataset, load_dataset
from nfopt.nn import HNPLinear, NFActivation, NPLinear, fuse_relu
from nfopt.recipes.experiments import claim_experiment, finish_experiment
from nfopt.specs import child_seed
from nfopt.weightspace import NetworkSpec, WeightSpaceFeatures
from nfopt.zoo.spec import TicketSpec

__all__ = [
    "MaskPredictor",
    "imp_masks",
    "imp_round_count",
    "imp_rounds",
    "init_mlps",
    "keep_counts",
    "ordinal_loss",
    "ordinal_targets",
    "run_tickets",
    "topk_masks",
    "train_masked",
]

Params = list[torch.Tensor]  # [W_1 (N, n_1, n_0), b_1 (N, n_1), ...]


def init_mlps(widths: list[int], seeds: list[int]) -> Params:
    """PyTorch-default initialisations of MLPs with neuron widths ``widths``, one per seed."""
    per = []
    for s in seeds:
        torch.manual_seed(s)
        layers = [torch.nn.Linear(a, b) for a, b in itertools.pairwise(widths)]
        per.append([t.detach() for lin in layers for t in (lin.weight, lin.bias)])
    return [torch.stack(ts) for ts in zip(*per)]


def _forward(params: Params, x: torch.Tensor) -> torch.Tensor:
    """``x (N, B, n_0) -> (N, B, n_L)``, ReLU between layers."""
    h = x
    for i in range(0, len(params), 2):
        h = torch.baddbmm(params[i + 1].unsqueeze(1), h, params[i].transpose(1, 2))
        if i + 2 < len(params):
            h = F.relu(h)
    return h


def train_masked(
    init: Params, masks: list[torch.Tensor], data: Dataset, steps: int, batch: int, lr: float, seed: int = 0
) -> Params:
    """Adam from ``init`` with weights held at zero where ``masks`` (one per weight) is 0."""
    params = [(t * masks[i // 2] if i % 2 == 0 else t).clone().requires_grad_() for i, t in enumerate(init)]
    opt = torch.optim.Adam(params, lr=lr)
    gen = torch.Generator().manual_seed(seed)
    x, y = data.x_train.flatten(1), data.y_train
    n = len(init[0])
    for _ in range(steps):
        idx = torch.randint(len(x), (n, batch), generator=gen)
        loss = F.cross_entropy(_forward(params, x[idx]).flatten(0, 1), y[idx].flatten(), reduction="sum") / batch
        opt.zero_grad()
        loss.backward()
        opt.step()
        with torch.no_grad():
            for i in range(0, len(params), 2):
                params[i].mul_(masks[i // 2])
    return [p.detach() for p in params]


@torch.no_grad()
def _test_accuracy(params: Params, data: Dataset) -> torch.Tensor:
    x = data.x_test.flatten(1).expand(len(params[0]), -1, -1)
    return (_forward(params, x).argmax(-1) == data.y_test).float().mean(1)  # (N,)


def keep_counts(widths: list[int], sparsity: float) -> list[int]:
    """Weights kept per layer at ``sparsity`` (layer-wise pruning; at least one per layer)."""
    return [max(1, round((1 - sparsity) * a * b)) for a, b in itertools.pairwise(widths)]


def topk_masks(scores: list[torch.Tensor], keep: list[int]) -> list[torch.Tensor]:
    """Per network and layer, 1 at the ``keep[l]`` highest scores (``scores[l]: (N, out, in)``)."""
    masks = []
    for s, k in zip(scores, keep):
        flat = s.flatten(1)
        m = torch.zeros_like(flat)
        m.scatter_(1, flat.topk(k, dim=1).indices, 1.0)
        masks.append(m.view_as(s))
    return masks


def imp_rounds(init: Params, data: Dataset, spec: TicketSpec) -> list[torch.Tensor]:
    """IMP with rewinding: train, prune ``prune_rate`` of each layer's remaining weights by final
    magnitude, rewind to init; the last round lands exactly on ``sparsity``. Returns, per layer
    ``(N, out, in)``, how many rounds each weight survived (``0 .. R``; ``R``: kept in the final
    mask) — IMP's whole ranking of the weights, not only its last cut."""
    widths = [init[0].shape[2]] + [w.shape[1] for w in init[0::2]]
    target = keep_counts(widths, spec.sparsity)
    rounds = imp_round_count(spec)
    masks = [torch.ones_like(w) for w in init[0::2]]
    survived = [torch.zeros_like(w) for w in init[0::2]]
    for r in range(rounds):
        trained = train_masked(init, masks, data, spec.train_steps, spec.batch_size, spec.lr, seed=spec.seed + r)
        keep = []
        for m, k_final in zip(masks, target):
            alive = int(m[0].sum())
            keep.append(k_final if r == rounds - 1 else max(k_final, round(alive * (1 - spec.prune_rate))))
        scores = [torch.where(m > 0, w.abs(), -1.0) for m, w in zip(masks, trained[0::2])]
        masks = topk_masks(scores, keep)
        survived = [s + m for s, m in zip(survived, masks)]
    return survived


def imp_round_count(spec: TicketSpec) -> int:
    """IMP's rounds ``R``: pruning ``prune_rate`` per round until ``sparsity``."""
    return math.ceil(math.log(1 - spec.sparsity) / math.log(1 - spec.prune_rate))


def imp_masks(init: Params, data: Dataset, spec: TicketSpec) -> list[torch.Tensor]:
    """IMP's final masks (1: kept), per layer ``(N, out, in)`` (see :func:`imp_rounds`)."""
    return _final_masks(imp_rounds(init, data, spec), spec)


def _final_masks(survived: list[torch.Tensor], spec: TicketSpec) -> list[torch.Tensor]:
    """Survival rounds -> IMP's final masks: the weights that survived every round."""
    rounds = imp_round_count(spec)
    return [(s == rounds).to(s) for s in survived]


def ordinal_targets(survived: torch.Tensor, rounds: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Targets of :func:`ordinal_loss` from the IMP round each weight survived to ``(N, out, in)``:
    ``y[..., r-1] = [survived >= r]`` for ``r = 1..R`` ``(N, out, in, R)``, and each round's
    class-balancing positive weight ``(1 - p_r) / p_r`` ``(R,)`` (``p_r``: its positive rate)."""
    r = torch.arange(1, rounds + 1, device=survived.device, dtype=survived.dtype)
    y = (survived.unsqueeze(-1) >= r).to(torch.get_default_dtype())
    pos = y.mean(dim=(0, 1, 2)).clamp(1e-4, 1 - 1e-4)
    return y, (1 - pos) / pos


def ordinal_loss(
    score: torch.Tensor, y: torch.Tensor, pos_weight: torch.Tensor, thresholds: torch.Tensor
) -> torch.Tensor:
    """Cumulative-link (ordinal logistic) loss of one score per weight against the IMP round it
    survived to: for every round ``r = 1..R``, ``P(survived >= r) = sigmoid(score - c_r)``, each
    round's binary cross-entropy balanced by its positive rate. ``score``: ``(N, out, in)``;
    ``y``, ``pos_weight``: from :func:`ordinal_targets` (computed once per training set);
    ``thresholds``: ``(R,)``. Ranking weights by ``score`` is then ranking them by how long IMP
    keeps them."""
    logits = score.unsqueeze(-1) - thresholds
    return F.binary_cross_entropy_with_logits(logits, y.to(logits), pos_weight=pos_weight.to(logits))


class MaskPredictor(torch.nn.Module):
    """Equivariant layers: initial weights ``(N, C, ...)`` -> per-weight keep logits ``(N, 1, ...)``.

    ``kind``: ``"np"`` (NP layers: every neuron permutable, so input pixels and classes are
    exchangeable), ``"np_io"`` (NP layers with learned input/output-neuron embeddings: equivariant
    to hidden permutations only) or ``"hnp"`` (the complete HNP basis, also hidden-only)."""

    def __init__(self, spec: NetworkSpec, channels: int, layers: int, kind: str = "np", in_channels: int = 1) -> None:
        super().__init__()

        def layer(c_in: int, c_out: int) -> torch.nn.Module:
            if kind == "hnp":
                return HNPLinear(spec, c_in, c_out)
            if kind in ("np", "np_io"):
                return NPLinear(spec, c_in, c_out, io_embed=kind == "np_io")
            raise ValueError(f"kind={kind!r}: use 'np', 'np_io' or 'hnp'")

        mods: list[torch.nn.Module] = []
        c = in_channels
        for _ in range(layers - 1):
            mods += [layer(c, channels), NFActivation()]
            c = channels
        mods.append(layer(c, 1))
        self.net = torch.nn.Sequential(*mods)
        fuse_relu(self.net)  # the ReLUs ride in the layers' passes (same function, same state_dict)

    def forward(self, x: WeightSpaceFeatures) -> WeightSpaceFeatures:
        return self.net(x)


def _features(params: Params, scales: list[float], magnitude: bool = False) -> WeightSpaceFeatures:
    """Initial weights scaled by each layer's std ``(N, 1, ...)``, with ``|w|`` as a second channel
    when ``magnitude``."""

    def chans(t: torch.Tensor, s: float) -> torch.Tensor:
        t = t.unsqueeze(1) / s
        return torch.cat([t, t.abs()], 1) if magnitude else t

    return WeightSpaceFeatures(
        [chans(w, scales[i]) for i, w in enumerate(params[0::2])],
        [chans(b, scales[i]) for i, b in enumerate(params[1::2])],
    )


def _cached_imp_rounds(init: Params, data: Dataset, spec: TicketSpec, console) -> tuple[list[torch.Tensor], float]:
    """IMP's survival rounds (:func:`imp_rounds`) and the seconds they took: from ``imp_masks.pt``
    in the run directory when it was made with the same IMP settings, else computed and saved there."""
    path = spec.out_dir / "imp_masks.pt"
    key = spec.imp_key()
    if path.exists():
        saved = torch.load(path, map_location="cpu", weights_only=True)
        if saved.get("key") == key and "survived" in saved:
            console.print(f"IMP masks reused from {path}")
            return list(saved["survived"]), float(saved["seconds"])
        console.print(f"{path} was made with other IMP settings (or without survival rounds): recomputing")
    start = time.perf_counter()
    survived = imp_rounds(init, data, spec)
    seconds = time.perf_counter() - start
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"key": key, "survived": survived, "seconds": seconds}, path)  # the masks derive from it
    return survived, seconds


def _train_predictor(kind, member, spec, net_spec, x_train, y_train, pos_weight, ordinal, rounds, console):
    """Train ensemble member ``member`` of predictor ``kind`` (seed ``spec.seed + member``) on the
    training inits; returns ``x -> [per-layer weight logits (B, n_out, n_in)]``."""
    torch.manual_seed(spec.seed + member)
    model = MaskPredictor(net_spec, spec.channels, spec.layers, kind, in_channels=x_train.channels)
    thresholds = torch.nn.Parameter(torch.zeros(len(y_train), rounds))  # ordinal cut points c_{l,r}
    opt = torch.optim.Adam([*model.parameters(), thresholds], lr=1e-3)
    for epoch in range(spec.nfn_epochs):
        out = model(x_train)
        if spec.loss == "ordinal":
            loss = sum(ordinal_loss(o[:, 0], y, pw, c) for o, (y, pw), c in zip(out.weights, ordinal, thresholds))
        else:
            loss = sum(
                F.binary_cross_entropy_with_logits(o[:, 0], y, pos_weight=pw)
                for o, y, pw in zip(out.weights, y_train, pos_weight)
            )
        opt.zero_grad()
        loss.backward()
        opt.step()
        if (epoch + 1) % max(1, spec.nfn_epochs // 5) == 0:
            member_note = f" (ensemble member {member + 1}/{spec.ensemble})" if spec.ensemble > 1 else ""
            console.print(
                f"mask predictor {kind}{member_note} epoch {epoch + 1}/{spec.nfn_epochs}: {spec.loss} {loss.item():.4f}"
            )

    @torch.no_grad()
    def logits(x: WeightSpaceFeatures) -> list[torch.Tensor]:
        return [o[:, 0] for o in model(x).weights]

    return logits


def run_tickets(spec: TicketSpec, progress: bool = True, overwrite: bool = False) -> dict:
    """The whole experiment; writes ``results.json`` and ``table.md`` to ``spec.out_dir``."""
    claim_experiment(spec, overwrite)
    from rich.console import Console

    console = Console(stderr=True, quiet=not progress)
    kwargs = {"size": spec.data.size} if spec.data.name != "digits" or spec.data.size != 8 else {}
    if spec.data.root:
        kwargs["root"] = spec.data.root
    data = load_dataset(spec.data.name, **kwargs)
    widths = [data.input_size, *spec.widths, data.num_classes]
    init = init_mlps(widths, [child_seed(spec.seed, k, stride=100_003) for k in range(spec.inits)])
    survived, imp_seconds = _cached_imp_rounds(init, data, spec, console)
    rounds = imp_round_count(spec)
    masks = _final_masks(survived, spec)
    console.print(f"IMP masks for {spec.inits} initialisations: {imp_seconds:.0f} s")
    n_train = spec.inits - spec.test_inits
    tr, te = slice(0, n_train), slice(n_train, spec.inits)
    scales = [float(w.std()) for w in init[0::2]]
    net_spec = NetworkSpec.mlp(widths)
    x_train = _features([t[tr] for t in init], scales, spec.magnitude)
    test_init = [t[te] for t in init]
    x_test = _features(test_init, scales, spec.magnitude)
    y_train = [m[tr] for m in masks]
    keep = keep_counts(widths, spec.sparsity)
    pos_weight = [torch.tensor((1 - k / m[0].numel()) / (k / m[0].numel())) for k, m in zip(keep, masks)]
    ordinal = [ordinal_targets(s[tr], rounds) for s in survived] if spec.loss == "ordinal" else []
    predicted, nfn_seconds = {}, {}
    for kind in spec.predictors:
        start = time.perf_counter()
        logits = [
            _train_predictor(kind, member, spec, net_spec, x_train, y_train, pos_weight, ordinal, rounds, console)(
                x_test
            )
            for member in range(spec.ensemble)
        ]
        nfn_seconds[f"nfn_{kind}"] = time.perf_counter() - start
        predicted[f"nfn_{kind}"] = topk_masks([torch.stack(ls).mean(0) for ls in zip(*logits)], keep)
    gen = torch.Generator().manual_seed(spec.seed + 1)
    imp_test = [m[te] for m in masks]
    candidates = {
        **predicted,
        "imp": imp_test,
        "random": topk_masks([torch.rand(m.shape, generator=gen) for m in imp_test], keep),
        "dense": [torch.ones_like(m) for m in imp_test],
    }
    kept = sum(float(b.sum()) for b in imp_test)
    overlap = {k: sum(float((a * b).sum()) for a, b in zip(m, imp_test)) / kept for k, m in predicted.items()}
    results = {}
    for name, m in candidates.items():
        trained = train_masked(test_init, m, data, spec.train_steps, spec.batch_size, spec.lr, seed=spec.seed + 999)
        acc = _test_accuracy(trained, data)
        results[name] = {"mean": float(acc.mean()), "std": float(acc.std()), "per_init": acc.tolist()}
    gap = results["imp"]["mean"] - results["random"]["mean"]
    recovered = {
        k: (results[k]["mean"] - results["random"]["mean"]) / gap if gap > 0 else float("nan") for k in predicted
    }
    meta = {
        "widths": widths,
        "sparsity": spec.sparsity,
        "loss": spec.loss,
        "ensemble": spec.ensemble,
        "imp_rounds": rounds,
        "imp_seconds": imp_seconds,
        "nfn_seconds": nfn_seconds,
        "nfn_imp_overlap": overlap,
        "gap_recovered": recovered,
        "train_inits": n_train,
        "test_inits": spec.test_inits,
    }
    lines = [
        f"Test accuracy at {spec.sparsity:.0%} sparsity ({spec.data.name}, MLP {widths}), retrained from init, "
        f"{spec.test_inits} held-out initialisations (mask predictors trained on {n_train}"
        f"{'; inputs w and |w|' if spec.magnitude else ''}; loss {spec.loss}"
        f"{f'; ensembles of {spec.ensemble} per kind' if spec.ensemble > 1 else ''})",
        "",
        "| mask | test accuracy (mean ± std) | random-to-IMP gap recovered | overlap with IMP | training s |",
        "|---|---|---|---|---|",
        *[
            f"| {k} | {r['mean']:.4f} ± {r['std']:.4f} | "
            + (
                f"{recovered[k]:.0%} | {overlap[k]:.1%} | {nfn_seconds[k]:.0f} |"
                if k in predicted
                else f"- | - | {f'{imp_seconds:.0f}' if k == 'imp' else '-'} |"
            )
            for k, r in results.items()
        ],
        "",
        "Overlap: share of IMP's kept weights the mask also keeps (chance: the kept fraction). IMP's time is "
        "that of the run that computed its masks (imp_masks.pt, reused when the IMP settings match).",
    ]
    metrics = {f"{k}.test_accuracy": r["mean"] for k, r in results.items()}
    metrics |= {f"{k}.imp_overlap": v for k, v in overlap.items()}
    metrics |= {f"{k}.gap_recovered": v for k, v in recovered.items()}
    finish_experiment(spec, meta, results, lines, metrics, "nfopt-zoo")
    return {**meta, "results": results}
