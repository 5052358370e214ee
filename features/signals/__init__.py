"""Point-in-time deal facts: deal states as of any date, signals, training snapshots and labels."""

from features.signals.driver import compute_signals, custom_column_names, describe_signals
from features.signals.registry import SIGNALS, SignalKind, SignalSpec

__all__ = [
    "SIGNALS",
    "SignalKind",
    "SignalSpec",
    "compute_signals",
    "custom_column_names",
    "describe_signals",
]
