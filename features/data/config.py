"""Validated YAML configuration files (stage config, CRM mappings): one way to read and report.

Errors name the file and the dotted key that is wrong, e.g.
``stages.yaml: invalid stage configuration\n  stages.0.win_probability: ...``. A file that is not
UTF-8 and a key given twice in one block are refused too, naming the file and the line: YAML
itself would silently keep the last of two equal keys, so one of two stage maps would vanish.
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
    """A validation failure whose key pydantic cannot know (a cross-field check names it).

    A ``ValueError`` because pydantic turns those raised inside validators into its own errors.
    """

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
    """Parse a UTF-8 YAML file, or raise ConfigError naming it (and the line, if there is one)."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{p}: {what} file not found")
    data = p.read_bytes()
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = data.count(b"\n", 0, err.start) + 1
        raise ConfigError(
            f"{p}: the {what} file is not UTF-8 text (byte 0x{data[err.start]:02X} on line "
            f"{line}, probably Latin-1 or Windows-1252); save it as UTF-8"
        ) from None
    return parse_yaml(text, str(p))


class _DuplicateKey(Exception):
    def __init__(self, key: object, line: int, first: int) -> None:
        super().__init__(f"duplicate key {key!r} on line {line} (first on line {first})")


class _UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML's safe loader, refusing a key that appears twice in one mapping."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)  # type: ignore[no-untyped-call]
            line = key_node.start_mark.line + 1
            try:
                if key in seen:
                    raise _DuplicateKey(key, line, seen[key])
            except TypeError:  # an unhashable key: PyYAML reports it itself below
                continue
            seen[key] = line
        return super().construct_mapping(node, deep=deep)


def parse_yaml(text: str, source: str) -> Any:
    try:
        return yaml.load(text, Loader=_UniqueKeyLoader)
    except _DuplicateKey as err:
        raise ConfigError(f"{source}: {err}") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"{source}: not valid YAML: {err}") from None
