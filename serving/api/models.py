"""The models a server answers with: the MLflow ``champion`` versions, swapped when the alias moves.

A worker loads the champion versions at startup and checks the alias every
``model_refresh_seconds`` (a registry read); when it points elsewhere, the new versions are loaded
*beside* the old ones and then swapped in with one reference assignment. A request takes the
current :class:`Served` once, at its start, and uses it to the end, so it never mixes versions and
a swap never fails it. A failed load (registry down, a broken version) keeps the old models and
is reported by ``/readyz``.

Without a champion the scoring endpoints differ on purpose (documented in their OpenAPI text):
lists and a deal's page fall back to historical stage rates and say so (``method``), since a rep
still needs an ordering; the what-if endpoint answers 503, since its question is about the model.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from training.fitting import FittedModels
from training.scoring import FallbackScorer

log = logging.getLogger("pipecast.api.models")

Versions = dict[str, str | None]


@dataclass(frozen=True)
class Served:
    """One consistent set of models (or none) and the versions that name it."""

    models: FittedModels | None
    versions: Versions
    loaded_at: float
    fallback_reason: str | None = None

    @property
    def key(self) -> tuple[tuple[str, str | None], ...]:
        """Part of every cache key of a scored answer."""
        return tuple(sorted(self.versions.items()))

    @property
    def scorer(self) -> Any:
        """What scores deals: the models, or the stage-rate fallback that says why."""
        if self.models is not None:
            return self.models
        return FallbackScorer(reason=self.fallback_reason or "no champion model")


NO_MODELS = Served(
    models=None,
    versions={"win_probability": None, "slip": None},
    loaded_at=0.0,
    fallback_reason="no champion model registered yet (`pipecast train` or "
    "POST /v1/models/retrain)",
)


@dataclass
class ModelHolder:
    """Keeps the champion models of one worker and refreshes them in a background thread."""

    resolve: Callable[[], Versions]  # the versions the champion alias points at now
    load: Callable[[Versions], FittedModels]  # load exactly these versions
    refresh_seconds: float = 5.0
    _served: Served = field(default=NO_MODELS, init=False)
    _last_error: str | None = field(default=None, init=False)
    _checked: bool = field(default=False, init=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False)
    _stop: threading.Event = field(default_factory=threading.Event, init=False)
    _thread: threading.Thread | None = field(default=None, init=False)

    def current(self) -> Served:
        """The models to use for one whole request (take it once, at the start)."""
        return self._served

    @property
    def last_error(self) -> str | None:
        return self._last_error

    @property
    def checked(self) -> bool:
        """Whether the registry has been asked at least once."""
        return self._checked

    def refresh(self) -> bool:
        """Load the champion versions if they changed; True if the served models changed.

        Never raises: on failure the old models stay and the error is kept for ``/readyz``.
        """
        with self._lock:  # one load at a time; readers never wait for it
            try:
                versions = self.resolve()
            except Exception as err:  # registry unreachable: keep serving what we have
                self._last_error = f"cannot read the model registry: {err}"
                log.warning(self._last_error)
                return False
            self._checked = True
            if versions == self._served.versions and self._served.models is not None:
                self._last_error = None
                return False
            if any(v is None for v in versions.values()):
                missing = ", ".join(k for k, v in versions.items() if v is None)
                if self._served.models is None:
                    self._last_error = None
                    self._served = Served(
                        None,
                        versions,
                        time.time(),
                        f"no champion version of {missing} yet (`pipecast train` or "
                        "POST /v1/models/retrain)",
                    )
                return False
            try:
                models = self.load(versions)
            except Exception as err:
                self._last_error = f"cannot load {versions}: {err}"
                log.exception("cannot load champion models %s", versions)
                return False
            self._served = Served(models, dict(versions), time.time())
            self._last_error = None
            log.info("serving models %s", versions)
            return True

    def start(self) -> None:
        """Load now, then check the alias every ``refresh_seconds`` in a daemon thread."""
        self.refresh()
        if self.refresh_seconds <= 0 or self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="pipecast-models", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
            self._thread = None

    def _loop(self) -> None:
        while not self._stop.wait(self.refresh_seconds):
            self.refresh()


class Registry:
    """The MLflow registry as the server reads it, one call at a time.

    :func:`training.tracking.using` points MLflow's process-wide URI at the target for the
    duration of a call; two threads interleaving those calls could restore each other's URI
    mid-call, so the server serialises them here.
    """

    def __init__(self, target: Any) -> None:
        self.target = target
        self._lock = threading.Lock()

    def champion_versions(self) -> Versions:
        from training.tracking import champion_versions

        with self._lock:
            return champion_versions(self.target)

    def load(self, versions: Versions) -> FittedModels:
        from training.tracking import load_versions

        with self._lock:
            return load_versions(self.target, versions)

    def list_models(self) -> list[dict[str, Any]]:
        from training.tracking import list_models

        with self._lock:
            return list_models(self.target)

    def promote(self, name: str, version: str, *, force: bool = False) -> str:
        from training.tracking import promote

        with self._lock:
            return promote(self.target, name, version, force=force)
