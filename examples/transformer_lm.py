"""A small Transformer language model (``nn.TransformerEncoder`` with a causal mask, character
level) trained with a shipped nfopt learned optimizer (``nfopt.load_optimizer("nfn_np_small")(model,
num_steps=N)`` + ``CosineAnnealingLR``) beside AdamW with the same schedule: same initialisation,
same minibatches. The learned optimizer takes the whole model — embeddings, attention
projections, LayerNorms, the MLPs — with nothing refused. Writes
``<out>/transformer_lm.{json,png}`` and ends with a ``RESULT`` line.

    .venv/bin/python examples/transformer_lm.py --steps 1000   # ~minutes on 2 cores
    .venv/bin/python examples/transformer_lm.py --tiny          # seconds (the tests run this)

The corpus is every text file under ``--data`` (default: ``/usr/share/common-licenses``, the
licence texts every Debian system carries: ~0.5 MB of English); the last 10% is held out.
Exit code 3 when the directory has no text.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _compare import best_of, compare, optimizers, parse_lrs, plot_curves, write_results

DEFAULT_CORPUS = "/usr/share/common-licenses"


def read_corpus(directory: str | Path, limit: int = 2_000_000) -> str:
    """The text of every readable UTF-8 file under ``directory`` (sorted, up to ``limit``
    characters); ``FileNotFoundError`` naming the directory when there is none."""
    d = Path(directory)
    parts, total = [], 0
    for f in sorted(p for p in d.rglob("*") if p.is_file()) if d.is_dir() else []:
        try:
            text = f.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        parts.append(text)
        total += len(text)
        if total >= limit:
            break
    if not parts:
        raise FileNotFoundError(f"{d}: no text files there; pass --data DIR with a corpus of .txt files")
    return "".join(parts)[:limit]


class CharTransformer(nn.Module):
    """Token + position embeddings, a causal ``nn.TransformerEncoder``, a linear read-out:
    ``(B, T)`` token ids -> ``(B, T, vocab)`` logits."""

    def __init__(self, vocab: int, context: int, width: int = 64, heads: int = 4, layers: int = 2) -> None:
        super().__init__()
        self.tok = nn.Embedding(vocab, width)
        self.pos = nn.Embedding(context, width)
        layer = nn.TransformerEncoderLayer(width, heads, 4 * width, dropout=0.0, batch_first=True, norm_first=True)
        self.body = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, vocab)
        self.register_buffer("mask", nn.Transformer.generate_square_subsequent_mask(context), persistent=False)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        t = idx.shape[1]
        h = self.tok(idx) + self.pos(torch.arange(t, device=idx.device))  # (B, T, W)
        h = self.body(h, mask=self.mask[:t, :t], is_causal=True)
        return self.head(self.norm(h))  # (B, T, V)


METRIC = "heldout_loss"  # what picks the tuned AdamW from its grid


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--context", type=int, default=64)
    p.add_argument("--width", type=int, default=64)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--data", default=DEFAULT_CORPUS, help="directory of text files")
    p.add_argument("--out", default="runs/examples")
    p.add_argument(
        "--adamw-lrs", default="1e-3,3e-3,1e-2,3e-2", help="AdamW's lr grid (the tuned baseline: best of it)"
    )
    p.add_argument("--tiny", action="store_true", help="a few steps of a tiny model (tests)")
    args = p.parse_args(argv)
    try:
        lrs = parse_lrs(args.adamw_lrs)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.tiny:
        args.steps, args.batch_size, args.context, args.width, args.layers = 12, 8, 16, 16, 1
    try:
        text = read_corpus(args.data)
    except FileNotFoundError as err:
        print(f"error: {err}", file=sys.stderr)
        return 3
    chars = sorted(set(text))
    index = {c: i for i, c in enumerate(chars)}
    ids = torch.tensor([index[c] for c in text])  # (N,) character ids
    split = int(0.9 * len(ids))
    train, held = ids[:split], ids[split:]
    ctx = args.context

    def windows(src: torch.Tensor, n: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        start = torch.randint(len(src) - ctx - 1, (n,), generator=gen)
        x = torch.stack([src[s : s + ctx] for s in start.tolist()])
        y = torch.stack([src[s + 1 : s + ctx + 1] for s in start.tolist()])
        return x, y

    def loss_fn(model, x, y):
        return nn.functional.cross_entropy(model(x).flatten(0, 1), y.flatten())

    eval_x, eval_y = windows(held, 64, torch.Generator().manual_seed(123))

    def evaluate(model):
        return {"heldout_loss": float(loss_fn(model, eval_x, eval_y))}

    results = compare(
        lambda: CharTransformer(len(chars), ctx, args.width, max(1, args.width // 16), args.layers),
        lambda gen: windows(train, args.batch_size, gen),
        loss_fn,
        evaluate,
        args.steps,
        optimizers=optimizers(lrs),
    )
    print(f"tuned AdamW (best of the grid on {METRIC}): {best_of(results, 'adamw', METRIC)}")
    out = Path(args.out)
    plot_curves(results, f"char Transformer LM, {args.steps} steps", out / "transformer_lm.png")
    write_results(results, out, "transformer_lm")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
