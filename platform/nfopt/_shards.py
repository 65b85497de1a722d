"""Resumable sharded datasets (model zoos, INR datasets): a JSON manifest plus one
``weights_only``-loadable file per shard, each written atomically once complete, so an
interrupted build resumes by producing only the shards whose file is missing or unreadable."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from pydantic import BaseModel

from nfopt._files import RunExistsError, atomic_save

__all__ = [
    "missing_shards",
    "read_manifest",
    "read_shard",
    "same_spec",
    "shard_path",
    "shard_progress",
    "write_manifest",
    "write_shard",
]

log = logging.getLogger(__name__)


def shard_path(root: Path, shard: int, group: str = "shards") -> Path:
    return root / group / f"shard_{shard:05d}.pt"


def same_spec(old: dict, spec: BaseModel) -> bool:
    """Whether ``old`` (the ``spec.model_dump()`` stored by an earlier build) describes the same build
    as ``spec``: every stored field equal, and fields added to the spec class since then (absent
    from ``old``) at their defaults; a stored field the class no longer has is a mismatch."""
    new = spec.model_dump(mode="json")
    if set(old) - set(new):
        return False
    for name, field in type(spec).model_fields.items():
        value = getattr(spec, name)
        if name not in old:
            if value != field.get_default(call_default_factory=True):
                return False
        elif isinstance(value, BaseModel):
            if not (isinstance(old[name], dict) and same_spec(old[name], value)):
                return False
        elif old[name] != new[name]:
            return False
    return True


def write_manifest(path: Path, spec: BaseModel, **fields) -> None:
    """Write the manifest ``{"spec": spec.model_dump(), **fields}`` atomically; an existing
    manifest must hold the same spec (:func:`same_spec`: a build never mixes shards of two specs,
    but survives fields added to the spec class at their defaults), else :class:`RunExistsError`."""
    if path.exists():
        if not same_spec(json.loads(path.read_text()).get("spec", {}), spec):
            raise RunExistsError(
                f"{path}: holds data built from a different spec; build into another `out` directory "
                "or delete it to start over"
            )
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps({"spec": spec.model_dump(), **fields}, indent=2))
    tmp.replace(path)


def read_manifest(path: Path, fmt: str, what: str, fix: str) -> dict:
    """The manifest at ``path``; a missing one raises ``FileNotFoundError`` naming ``fix``."""
    if not path.exists():
        raise FileNotFoundError(f"{path}: not {what}; {fix}")
    manifest = json.loads(path.read_text())
    if manifest.get("format") != fmt:
        raise ValueError(f"{path}: format {manifest.get('format')!r} is not {fmt!r}")
    return manifest


def write_shard(path: Path, fmt: str, payload: dict) -> Path:
    return atomic_save({"format": fmt, **payload}, path)


def read_shard(path: Path, fmt: str) -> dict:
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise ValueError(f"{path}: unreadable shard ({err}); delete it and rebuild to regenerate it") from err
    if not isinstance(payload, dict) or payload.get("format") != fmt:
        got = payload.get("format") if isinstance(payload, dict) else type(payload).__name__
        raise ValueError(f"{path}: format {got!r} is not {fmt!r}")
    return payload


def missing_shards(paths: list[Path], fmt: str) -> list[int]:
    """Indices of ``paths`` without a complete, readable shard."""
    missing = []
    for k, path in enumerate(paths):
        if not path.exists():
            missing.append(k)
            continue
        try:
            read_shard(path, fmt)
        except ValueError as err:
            log.warning("%s; regenerating shard %d", err, k)
            missing.append(k)
    return missing


@contextmanager
def shard_progress(title: str, total: int, completed: int, enabled: bool = True) -> Iterator[Callable[[], None]]:
    """A progress bar (elapsed time, ETA) over ``total`` shards of which ``completed`` already
    exist; yields ``advance()`` to call as each further shard is written."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    with Progress(
        TextColumn(f"[bold]{title}[/bold]"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total} shards"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        disable=not enabled,
    ) as bar:
        task = bar.add_task("", total=total, completed=completed)
        yield lambda: bar.advance(task)
