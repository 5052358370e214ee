"""Run one benchmark phase in a child process and read back its figures and its own peak RSS."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parents[1]


def run_child(name: str, code: str) -> dict:
    """Run ``code`` (which prints one JSON line last) with the project importable.

    Each phase gets a fresh interpreter so ``ru_maxrss`` (from ``os.wait4``) is that phase's own.
    """
    proc = subprocess.Popen(
        [sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, cwd=ROOT
    )
    assert proc.stdout is not None
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    if status != 0:
        raise SystemExit(f"phase {name} failed ({status})")
    result: dict = json.loads(out.strip().splitlines()[-1])
    result["peak_rss_mb"] = usage.ru_maxrss / 1024  # Linux reports KiB
    return result
