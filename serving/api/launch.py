"""A real ``pipecast serve`` process on a free loopback port, for the end-to-end tests and the
load benchmark: started with the given ``PIPECAST_*`` settings, waited for until it answers,
stopped on exit."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import httpx

PIPECAST = str(Path(sys.executable).with_name("pipecast"))


class ServerNotReady(RuntimeError):
    """The server exited, or did not answer its readiness path in time."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def launch(
    env: dict[str, str],
    *,
    workers: int = 1,
    ready: str = "/healthz",
    timeout: float = 60.0,
    log: Path | None = None,
) -> Iterator[tuple[str, int]]:
    """Start ``pipecast serve`` with ``env`` on a free loopback port; yield its base URL and pid
    once ``ready`` answers 200 (``/readyz``: the champion loaded and the store reachable)."""
    port = free_port()
    with ExitStack() as stack:
        out = stack.enter_context(open(log, "wb")) if log is not None else subprocess.DEVNULL
        args = ["serve", "--host", "127.0.0.1", "--port", str(port), "--workers", str(workers)]
        proc = subprocess.Popen(
            [PIPECAST, *args],
            env={**os.environ, **env},
            stdout=out,
            stderr=subprocess.STDOUT,
        )
        base = f"http://127.0.0.1:{port}"
        try:
            _wait(proc, f"{base}{ready}", timeout)
            yield base, proc.pid
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _wait(proc: subprocess.Popen[bytes], url: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise ServerNotReady(f"pipecast serve exited with {proc.returncode}")
        try:
            if httpx.get(url, timeout=2.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            raise ServerNotReady(f"pipecast serve did not answer {url} in {timeout:.0f} s")
        time.sleep(0.2)
