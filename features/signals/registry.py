"""The signal registry: signals are functions named after their output (Hamilton style).

A signal function's parameters are named after its inputs (state columns, event tables, other
signals or intermediate nodes); :func:`execute` resolves them, computing dependencies first.
Family modules (``stage``, ``activity``, ...) register their functions with the decorators here.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import numpy as np
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


@functools.cache
def _params(fn: Callable[..., Any]) -> tuple[str, ...]:
    """A node function's parameter names: the nodes it reads."""
    return tuple(inspect.signature(fn).parameters)


def is_static(name: str, row_inputs: frozenset[str]) -> bool:
    """True for nodes that depend on the tables only (not on the rows): reusable across dates."""
    if name in row_inputs:
        return False
    if name in EXTRACTED:
        return is_static(EXTRACTED[name], row_inputs)
    if name not in NODES:
        return True
    return all(is_static(p, row_inputs) for p in _params(NODES[name]))


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
    values = evaluate(inputs, wanted, static, row_inputs=row_inputs)
    return {name: values[name] for name in wanted}


def evaluate(
    inputs: dict[str, Any],
    wanted: Iterable[str],
    static: dict[str, Any] | None = None,
    *,
    row_inputs: frozenset[str] = frozenset(),
    previous: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """:func:`execute`, returning every node it resolved (inputs included): what ``previous``
    takes in a later call.

    With ``previous`` (the result of an earlier call), a node none of whose inputs differ from
    that call's is taken from it instead of computed: node functions are pure, so its value would
    be the same. An input differs unless it is the same object or holds equal values
    (:func:`same_value`); a value it cannot compare counts as different. A what-if that adds one
    stakeholder to a deal so recomputes the stakeholder signals, not its stage or activity ones.
    """
    cache = dict(inputs)
    if static:
        cache.update(static)
    provided = set(cache)
    before = previous or {}
    dirty: dict[str, bool] = {}

    def is_dirty(name: str) -> bool:
        if name not in dirty:
            if name in provided:  # compared only when a node that reads it is asked for
                dirty[name] = name not in before or not same_value(cache[name], before[name])
            elif name in EXTRACTED:
                dirty[name] = is_dirty(EXTRACTED[name])
            elif name in NODES:
                params = _params(NODES[name])
                dirty[name] = any([is_dirty(p) for p in params]) or name not in before
            else:
                dirty[name] = True
        return dirty[name]

    def get(name: str) -> Any:
        if name in cache:
            return cache[name]
        if previous is not None and name in previous and not is_dirty(name):
            cache[name] = previous[name]
            return cache[name]
        if name in EXTRACTED:
            group = get(EXTRACTED[name])
            for col in group.columns:
                cache[col] = group[col].reset_index(drop=True)
            return cache[name]
        if name not in NODES:
            raise KeyError(f"no input or signal function named {name!r}")
        fn = NODES[name]
        result = fn(**{p: get(p) for p in _params(fn)})
        if isinstance(result, pd.Series):
            result = result.reset_index(drop=True)
        cache[name] = result
        if static is not None and name in NODES and is_static(name, row_inputs):
            static[name] = result
        return result

    for name in wanted:
        get(name)
    return cache


def same_value(a: Any, b: Any) -> bool:
    """Whether two node values are certainly equal (same object, or equal pandas or NumPy
    values of the same dtype, or equal plain values); False when unsure."""
    if a is b:
        return True
    if type(a) is not type(b):
        return False
    if isinstance(a, pd.DataFrame | pd.Series | pd.Index):
        return bool(a.equals(b)) and _same_dtypes(a, b)
    if isinstance(a, np.ndarray):
        return (
            a.dtype == b.dtype
            and a.shape == b.shape
            and bool(np.array_equal(a, b, equal_nan=a.dtype.kind in "fcmM"))
        )
    if isinstance(a, str | int | float | bool | dict | tuple | pd.Timestamp):
        try:
            return bool(a == b)
        except (TypeError, ValueError):
            return False
    return False


def _same_dtypes(a: Any, b: Any) -> bool:
    if isinstance(a, pd.DataFrame):
        return list(a.columns) == list(b.columns) and list(a.dtypes) == list(b.dtypes)
    return bool(a.dtype == b.dtype)
