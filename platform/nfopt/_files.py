"""Small file helpers shared across the package: atomic writes and validated YAML specs."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import TypeVar

import torch
import yaml
from pydantic import BaseModel, ValidationError

__all__ = ["atomic_save", "load_yaml_model"]

M = TypeVar("M", bound=BaseModel)


def atomic_save(obj, path: str | Path) -> Path:
    """``torch.save`` to a temp file in the same directory, then rename: never a torn file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def load_yaml_model(path: Path, model: type[M], error: type[ValueError], what: str, missing_hint: str = "") -> M:
    """Read ``path`` and validate it as ``model``; any problem raises ``error`` with a message
    that names the file and every offending field (``a.b.c: message``)."""
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError as err:
        raise error(f"{path}: no such {what} file{missing_hint}") from err
    except yaml.YAMLError as err:
        raise error(f"{path}: not valid YAML: {err}") from err
    if not isinstance(raw, dict):
        raise error(f"{path}: expected a mapping at the top level, got {type(raw).__name__}")
    try:
        return model.model_validate(raw)
    except ValidationError as err:
        lines = [f"{'.'.join(str(p) for p in e['loc']) or '<root>'}: {e['msg']}" for e in err.errors()]
        raise error(f"{path}: invalid {model.__name__}:\n  " + "\n  ".join(lines)) from None
