"""A real ``pipecast serve`` process (uvicorn) on a free loopback port, for end-to-end tests."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from serving.api.launch import launch


@contextmanager
def live_server(
    env: dict[str, str], *, workers: int = 1, timeout: float = 60.0, log: Path | None = None
) -> Iterator[str]:
    """Start ``pipecast serve`` with ``env`` (PIPECAST_* settings); yield its base URL."""
    with launch(env, workers=workers, timeout=timeout, log=log) as (base, _):
        yield base
