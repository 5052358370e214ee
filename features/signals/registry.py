"""The signal registry: signals are functions named after their output (Hamilton style).

A signal function's parameters are named after its inputs (state columns, event tables, other
signals or intermediate nodes); :func:`execute` resolves them, computing dependencies first.
Family modules (``stage``, ``activity``, ...) register their functions with the decorators here.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import pandas as pd


class SignalKind(StrEnum):
    NUMBER = "number"
    FLAG = "flag"  # 1.0 / 0.0, NaN when unknown
    CATEGORY = "category"


@dataclass(frozen=True)
class SignalSpec:
    """What a signal means; serving uses it to explain scores."""

    name: str
    description: str
    kind: SignalKind = SignalKind.NUMBER
    # Missing on deals-only imports (see module docstring), never guessed.
    needs_history: bool = False


# --- registry and decorators ----------------------------------------------------------------------
SIGNALS: dict[str, SignalSpec] = {}
NODES: dict[str, Callable[..., Any]] = {}
EXTRACTED: dict[str, str] = {}  # column -> group node that computes it


def declare(name: str, description: str, kind: SignalKind = SignalKind.NUMBER, **kw: Any) -> None:
    SIGNALS[name] = SignalSpec(name, description, kind, **kw)


def signal(
    description: str, kind: SignalKind = SignalKind.NUMBER, *, needs_history: bool = False
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Register a function as the signal named after it."""

    def wrap(fn: Callable[..., Any]) -> Callable[..., Any]:
        declare(fn.__name__, description, kind, needs_history=needs_history)
        NODES[fn.__name__] = fn
        return fn

    return wrap


def node(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Register an intermediate result that signals depend on (not an output column)."""
    NODES[fn.__name__] = fn
    return fn


def signal_group(
    specs: Sequence[SignalSpec],
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Register a function that returns several signals as a frame (Hamilton's extract_columns)."""

    def wrap(fn: Callable[..., Any]) -> Callable[..., Any]:
        NODES[fn.__name__] = fn
        for spec in specs:
            SIGNALS[spec.name] = spec
            EXTRACTED[spec.name] = fn.__name__
        return fn

    return wrap


def is_static(name: str, row_inputs: frozenset[str]) -> bool:
    """True for nodes that depend on the tables only (not on the rows): reusable across dates."""
    if name in row_inputs:
        return False
    if name in EXTRACTED:
        return is_static(EXTRACTED[name], row_inputs)
    if name not in NODES:
        return True
    return all(is_static(p, row_inputs) for p in inspect.signature(NODES[name]).parameters)


def execute(
    inputs: dict[str, Any],
    wanted: Iterable[str],
    static: dict[str, Any] | None = None,
    *,
    row_inputs: frozenset[str] = frozenset(),
) -> dict[str, Any]:
    """Resolve each wanted node from the inputs, computing its dependencies first (memoised).

    Table-level nodes (event indexes) are kept in ``static`` when given, so successive calls on
    the same tables for different dates build them once.
    """
    cache = dict(inputs)
    if static:
        cache.update(static)

    def get(name: str) -> Any:
        if name in cache:
            return cache[name]
        if name in EXTRACTED:
            group = get(EXTRACTED[name])
            for col in group.columns:
                cache[col] = group[col].reset_index(drop=True)
            return cache[name]
        if name not in NODES:
            raise KeyError(f"no input or signal function named {name!r}")
        fn = NODES[name]
        result = fn(**{p: get(p) for p in inspect.signature(fn).parameters})
        if isinstance(result, pd.Series):
            result = result.reset_index(drop=True)
        cache[name] = result
        if static is not None and name in NODES and is_static(name, row_inputs):
            static[name] = result
        return result

    return {name: get(name) for name in wanted}
