"""A CNN with BatchNorm on Fashion-MNIST 28x28, trained with a shipped nfopt learned optimizer
(``nfopt.load_optimizer("nfn_np_small")(model, num_steps=N)`` + ``CosineAnnealingLR``) beside
AdamW with the same schedule: same initialisation, same minibatches. Writes
``<out>/bn_cnn_fashion.{json,png}`` (loss curves) and ends with a ``RESULT`` line.

    .venv/bin/python examples/bn_cnn_fashion.py --steps 1000        # ~minutes on 2 cores
    .venv/bin/python examples/bn_cnn_fashion.py --tiny               # seconds (the tests run this)

Fashion-MNIST is read from ``--data`` (IDX files; default: Debian's dataset-fashion-mnist under
/usr/share/datasets/fashion-mnist); ``--tiny`` falls back to random images when it is missing.
Exit code 3 when the data is missing (without ``--tiny``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _compare import best_of, compare, optimizers, parse_lrs, plot_curves, write_results

from nfopt.data.idx import DataNotFoundError, load_fashion_mnist


def make_cnn(channels: int = 16) -> nn.Module:
    """conv-BN-ReLU-pool x2, then a linear classifier: (B, 1, 28, 28) -> (B, 10)."""
    return nn.Sequential(
        nn.Conv2d(1, channels, 3, padding=1),
        nn.BatchNorm2d(channels),
        nn.ReLU(),
        nn.MaxPool2d(2),  # (B, C, 14, 14)
        nn.Conv2d(channels, 2 * channels, 3, padding=1),
        nn.BatchNorm2d(2 * channels),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(4),  # (B, 2C, 4, 4)
        nn.Flatten(),
        nn.Linear(2 * channels * 16, 10),
    )


METRIC = "test_loss"  # what picks the tuned AdamW from its grid


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--channels", type=int, default=16)
    p.add_argument("--data", default=None, help="directory with the Fashion-MNIST IDX files")
    p.add_argument("--out", default="runs/examples")
    p.add_argument(
        "--adamw-lrs", default="1e-3,3e-3,1e-2,3e-2", help="AdamW's lr grid (the tuned baseline: best of it)"
    )
    p.add_argument("--tiny", action="store_true", help="a few steps of a small CNN (tests)")
    args = p.parse_args(argv)
    try:
        lrs = parse_lrs(args.adamw_lrs)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.tiny:
        args.steps, args.batch_size, args.channels = 15, 32, 4
    try:
        data = load_fashion_mnist(args.data, size=28)
        x_tr, y_tr = data.x_train.view(-1, 1, 28, 28), data.y_train
        x_te, y_te = data.x_test.view(-1, 1, 28, 28)[:2000], data.y_test[:2000]
    except DataNotFoundError as err:
        if not args.tiny:
            print(f"error: {err}", file=sys.stderr)
            return 3
        g = torch.Generator().manual_seed(0)
        x_tr, y_tr = torch.randn(256, 1, 28, 28, generator=g), torch.randint(10, (256,), generator=g)
        x_te, y_te = x_tr[:64], y_tr[:64]

    def batches(gen: torch.Generator):
        idx = torch.randint(len(x_tr), (args.batch_size,), generator=gen)
        return x_tr[idx], y_tr[idx]

    def loss_fn(model, x, y):
        return nn.functional.cross_entropy(model(x), y)

    def evaluate(model):
        logits = model(x_te)
        return {
            "test_loss": float(nn.functional.cross_entropy(logits, y_te)),
            "test_acc": float((logits.argmax(1) == y_te).float().mean()),
        }

    results = compare(
        lambda: make_cnn(args.channels), batches, loss_fn, evaluate, args.steps, optimizers=optimizers(lrs)
    )
    print(f"tuned AdamW (best of the grid on {METRIC}): {best_of(results, 'adamw', METRIC)}")
    out = Path(args.out)
    plot_curves(results, f"BatchNorm CNN, Fashion-MNIST 28x28, {args.steps} steps", out / "bn_cnn_fashion.png")
    write_results(results, out, "bn_cnn_fashion")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
