"""Pretrained learned optimizers shipped with the package, loadable by name.

Each lives in ``nfopt/pretrained/`` as ``<name>.pt`` (a :func:`~nfopt.lopt.save_optimizer` file:
config, weights and metadata — the job that produced it and its budget — loaded with
``weights_only=True``), beside ``<name>.yaml`` (the job spec) and ``<name>.md`` (its evaluation
report). :func:`ship_pretrained` adds one from a finished run.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

from nfopt.lopt.io import TrainedOptimizer, load_optimizer

__all__ = ["PRETRAINED_DIR", "list_pretrained", "load_pretrained", "pretrained_path", "ship_pretrained"]

PRETRAINED_DIR = Path(__file__).resolve().parents[1] / "pretrained"
_NAME = re.compile(r"^[a-z0-9][a-z0-9_\-]*$")


def list_pretrained(directory: Path | None = None) -> dict[str, str]:
    """``{name: one-line description}`` of every shipped learned optimizer, sorted by name."""
    d = directory or PRETRAINED_DIR
    out = {}
    for p in sorted(d.glob("*.pt")):
        meta = load_optimizer(p).metadata
        budget = meta.get("inner_steps")
        kind = meta.get("kind") or (meta.get("spec") or {}).get("meta_model", {}).get("kind", "?")
        extra = f", {budget / 1e6:.1f}M inner steps" if budget else ""
        out[p.stem] = f"{kind} learned optimizer meta-trained on {meta.get('task', '?')}{extra}"
    return out


def pretrained_path(name: str, directory: Path | None = None) -> Path:
    """The file of shipped optimizer ``name``; ``KeyError`` naming the ones there are."""
    p = (directory or PRETRAINED_DIR) / f"{name}.pt"
    if not _NAME.match(name) or not p.is_file():
        have = ", ".join(list_pretrained(directory)) or "none"
        raise KeyError(f"no pretrained learned optimizer named {name!r}; shipped: {have}")
    return p


def load_pretrained(name: str, directory: Path | None = None) -> TrainedOptimizer:
    """Load shipped optimizer ``name`` (see :func:`list_pretrained`)."""
    return load_optimizer(pretrained_path(name, directory))


def ship_pretrained(
    run_dir: str | Path,
    name: str,
    report: str | Path | None = None,
    directory: Path | None = None,
    overwrite: bool = False,
) -> Path:
    """Copy a finished run's ``learned_optimizer.pt`` and ``job.json`` (as ``<name>.pt`` and
    ``<name>.json``) and an evaluation ``report`` (``<name>.md``) into the pretrained directory.
    Refuses to replace a shipped optimizer unless ``overwrite``."""
    if not _NAME.match(name):
        raise ValueError(f"name {name!r}: use lower-case letters, digits, '_' and '-'")
    src = Path(run_dir)
    opt = src / "learned_optimizer.pt"
    if not opt.is_file():
        raise FileNotFoundError(f"{opt}: no learned optimizer there; finish the run first (nfopt run JOB --resume)")
    load_optimizer(opt)  # a readable file, or a clear error naming it
    d = directory or PRETRAINED_DIR
    d.mkdir(parents=True, exist_ok=True)
    dest = d / f"{name}.pt"
    if dest.exists() and not overwrite:
        raise FileExistsError(f"{dest} exists: pass overwrite=True (--overwrite) to replace it")
    shutil.copyfile(opt, dest)
    if (src / "job.json").is_file():
        shutil.copyfile(src / "job.json", d / f"{name}.json")
    if report is not None:
        shutil.copyfile(report, d / f"{name}.md")
    return dest
