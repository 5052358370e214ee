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


# --- function length (issue 8) -----------------------------------------------------------------
MAX_LINES = 80
# A function may be longer when the line above its ``def`` (or decorators) says why.
LONG_NOTE = "# long function:"


def long_functions(source: str, name: str) -> list[str]:
    """Functions of ``source`` longer than :data:`MAX_LINES` lines (decorators excluded, the
    docstring included) without a :data:`LONG_NOTE` comment just above them."""
    import ast

    lines = source.splitlines()
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            n = (node.end_lineno or node.lineno) - node.lineno + 1
            top = min([node.lineno, *(d.lineno for d in node.decorator_list)])
            above = lines[top - 2].strip() if top >= 2 else ""
            if n > MAX_LINES and not above.startswith(LONG_NOTE):
                found.append(f"{name}:{node.lineno} {node.name} ({n} lines)")
    return found


def test_no_function_in_features_is_longer_than_80_lines() -> None:
    long = [
        f
        for path in sorted((ROOT / "features").rglob("*.py"))
        for f in long_functions(path.read_text(), str(path.relative_to(ROOT)))
    ]
    assert not long, long


def test_the_length_check_finds_a_long_function_and_honours_its_note() -> None:
    body = "".join(f"    x{i} = {i}\n" for i in range(MAX_LINES))
    source = f"def long():\n{body}\n\n{LONG_NOTE} one table, row by row\ndef noted():\n{body}"
    assert long_functions(source, "m.py") == [f"m.py:1 long ({MAX_LINES + 1} lines)"]
