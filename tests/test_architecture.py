"""The layer contracts of ``make lint`` hold, and they do catch an import that breaks them."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]
PACKAGES = ("features", "training", "forecasting", "serving")
LINT = str(Path(sys.executable).with_name("lint-imports"))


def _copy_tree(dest: Path) -> None:
    shutil.copy(ROOT / "pyproject.toml", dest / "pyproject.toml")
    for pkg in PACKAGES:
        shutil.copytree(ROOT / pkg, dest / pkg, ignore=shutil.ignore_patterns("__pycache__"))


def _lint(where: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(where)}
    return subprocess.run(
        [LINT, "--no-cache"], cwd=where, env=env, capture_output=True, text=True, check=False
    )


def test_contracts_hold_on_the_tree(tmp_path: Path) -> None:
    _copy_tree(tmp_path)
    result = _lint(tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "broken" in result.stdout and "0 broken" in result.stdout


@pytest.mark.parametrize(
    ("module", "bad_import", "contract"),
    [
        ("features/data/_bad.py", "import training", "Layers: serving"),
        ("training/_bad.py", "import serving.cli", "Layers: serving"),
        ("features/data/_bad.py", "import features.signals", "Inside features"),
        ("features/signals/_bad.py", "import mlflow", "no MLflow"),
        ("features/pipeline/_bad.py", "import fastapi", "no MLflow"),
    ],
)
def test_a_wrong_import_breaks_a_contract(
    tmp_path: Path, module: str, bad_import: str, contract: str
) -> None:
    _copy_tree(tmp_path)
    (tmp_path / module).write_text(f'"""deliberately wrong"""\n\n{bad_import}  # noqa\n')
    result = _lint(tmp_path)
    assert result.returncode != 0
    broken = [line for line in result.stdout.splitlines() if line.endswith("BROKEN")]
    assert any(contract in line for line in broken), result.stdout
