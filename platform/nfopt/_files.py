"""Small file helpers shared across the package: atomic writes, output directories that are
never silently replaced, and validated YAML specs."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import TypeVar

import torch
import yaml
from pydantic import BaseModel, ValidationError

__all__ = [
    "RunExistsError",
    "atomic_save",
    "claim_output",
    "load_yaml_model",
    "read_yaml",
    "validate_yaml_model",
    "validation_message",
]

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


class RunExistsError(FileExistsError):
    """A previous run's output is where a new one would go (never silently replaced; CLI exit 5)."""


def claim_output(marker: str | Path, overwrite: bool, what: str) -> None:
    """Refuse to write a new result where ``marker`` (the file a finished ``what`` leaves, e.g.
    ``out/results.json``) already is, unless ``overwrite``: raises :class:`RunExistsError`
    naming the file and the fix. Call it before the work starts, not when writing the result."""
    marker = Path(marker)
    if marker.exists() and not overwrite:
        raise RunExistsError(
            f"{marker}: a previous {what} is there; choose another output directory, or pass "
            "--overwrite (overwrite=True) to replace it"
        )


class _UniqueKeyLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses a mapping with the same key twice (PyYAML keeps the last)."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                mark = key_node.start_mark
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r} (line {mark.line + 1}); give each key once", mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def read_yaml(path: Path, error: type[ValueError], what: str, missing_hint: str = ""):
    """Parse ``path`` as YAML (safe, duplicate keys refused); ``error`` names the file when it is
    missing, a directory, not UTF-8 text or not valid YAML."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as err:
        raise error(f"{path}: no such {what} file{missing_hint}") from err
    except IsADirectoryError as err:
        raise error(f"{path}: is a directory; give the {what} file (YAML) inside it") from err
    except UnicodeDecodeError as err:
        raise error(f"{path}: not a text file (byte {err.start} is not UTF-8); give a YAML {what} file") from err
    except OSError as err:
        raise error(f"{path}: cannot read the {what} file ({err.strerror})") from err
    try:
        return yaml.load(text, Loader=_UniqueKeyLoader)
    except yaml.YAMLError as err:
        raise error(f"{path}: not valid YAML: {err}") from err


def load_yaml_model(path: Path, model: type[M], error: type[ValueError], what: str, missing_hint: str = "") -> M:
    """Read ``path`` and validate it as ``model``; any problem raises ``error`` with a message
    that names the file and every offending field (``a.b.c: message``)."""
    return validate_yaml_model(path, read_yaml(path, error, what, missing_hint), model, error)


def validate_yaml_model(path: Path, raw, model: type[M], error: type[ValueError]) -> M:
    """Validate ``raw`` (the parsed YAML of ``path``) as ``model``; problems raise ``error``
    naming the file and every offending field."""
    if not isinstance(raw, dict):
        raise error(f"{path}: expected a mapping at the top level, got {type(raw).__name__}")
    try:
        return model.model_validate(raw)
    except ValidationError as err:
        raise error(f"{path}: {validation_message(err, model)}") from None


def validation_message(err: ValidationError, model: type[BaseModel]) -> str:
    """``invalid MODEL:`` then one indented line per offending field (``a.b.c: message``)."""
    lines = [f"{'.'.join(str(p) for p in e['loc']) or '<root>'}: {e['msg']}" for e in err.errors()]
    return f"invalid {model.__name__}:\n  " + "\n  ".join(lines)
