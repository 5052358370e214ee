"""On-disk cache of a forecast's fitted parts: the posterior and the scored open pipeline.

A forecast of the same data, date, model configuration and deal-model recipe reuses them instead
of refitting the deal models per past quarter, recompiling and resampling (a cold demo forecast
is about a minute and a half; a warm one a few seconds). The key is a hash of all four, so any
change in the store, date or configuration misses; the posterior is loaded through
:func:`forecasting.model.load_posterior`, which refuses one saved under another configuration.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pandas as pd

from features.data.schema import CanonicalTables
from forecasting.model import MODEL_VERSION, FittedForecastModel, ModelConfig, load_posterior


def data_fingerprint(tables: CanonicalTables) -> str:
    """A hash of every table's rows (column names, order and values)."""
    digest = hashlib.sha256()
    for name, frame in tables.items():
        digest.update(f"{name}:{len(frame)}:{','.join(map(str, frame.columns))}".encode())
        if len(frame):
            hashed = pd.util.hash_pandas_object(frame.astype(str), index=False)
            digest.update(hashed.to_numpy().tobytes())
    return digest.hexdigest()[:20]


def cache_key(
    tables: CanonicalTables, as_of: pd.Timestamp, config: ModelConfig, recipe: str
) -> str:
    payload = {
        "data": data_fingerprint(tables),
        "as_of": pd.Timestamp(as_of).isoformat(),
        "config": config.config_hash(),
        "model_version": MODEL_VERSION,
        "recipe": recipe,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:20]


class ForecastCache:
    """The cached parts of one forecast, in ``root/key/``."""

    def __init__(self, root: Path, key: str) -> None:
        self.dir = Path(root) / key

    def load(
        self, config: ModelConfig
    ) -> tuple[tuple[FittedForecastModel, dict[str, Any]], pd.DataFrame, dict[str, Any]] | None:
        """(posterior and its extras, scored open deals, model notes), or None on a miss."""
        files = [self.dir / n for n in ("posterior.nc", "extra.json", "scored.parquet")]
        if not all(f.exists() for f in files):
            return None
        fitted = load_posterior(files[0], config)
        extra = json.loads(files[1].read_text())
        notes = extra.pop("_notes", {})
        return (fitted, extra), pd.read_parquet(files[2]), notes

    def save(
        self,
        fitted: tuple[FittedForecastModel, dict[str, Any]],
        scored: pd.DataFrame,
        notes: dict[str, Any],
    ) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        fitted[0].save(self.dir / "posterior.nc")
        extra = {**fitted[1], "_notes": notes}
        (self.dir / "extra.json").write_text(json.dumps(extra, default=str))
        frame = scored.copy()
        frame.attrs = {}
        frame.to_parquet(self.dir / "scored.parquet", index=False)
