"""Validated YAML configuration files (stage config, CRM mappings): one way to read and report.

Errors name the file and the dotted key that is wrong, e.g.
``stages.yaml: invalid stage configuration\n  stages.0.win_probability: ...``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from features.errors import ConfigError

__all__ = ["ConfigError", "KeyedError", "parse_yaml", "read_yaml", "validate"]

M = TypeVar("M", bound=BaseModel)


class KeyedError(ValueError):
    """A validation failure whose key pydantic cannot know (a cross-field check names it)."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"{key}: {message}")
        self.key = key


def _format(source: str, what: str, err: ValidationError) -> str:
    lines = [f"{source}: invalid {what}"]
    for e in err.errors():
        ctx_err = (e.get("ctx") or {}).get("error")
        if isinstance(ctx_err, KeyedError):
            lines.append(f"  {ctx_err}")
            continue
        loc = ".".join(str(p) for p in e["loc"]) or "(top level)"
        lines.append(f"  {loc}: {str(e['msg']).removeprefix('Value error, ')}")
    return "\n".join(lines)


def validate(model: type[M], data: Any, source: str, what: str, top_key: str) -> M:
    """Validate parsed YAML ``data`` as ``model``; ``source`` names the file in errors."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping with a '{top_key}' key at the top level")
    try:
        return model.model_validate(data)
    except ValidationError as err:
        raise ConfigError(_format(source, what, err)) from None


def read_yaml(path: str | Path, what: str) -> Any:
    """Parse a YAML file, or raise ConfigError naming it."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{p}: {what} file not found")
    return parse_yaml(p.read_text(), str(p))


def parse_yaml(text: str, source: str) -> Any:
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise ConfigError(f"{source}: not valid YAML: {err}") from None
