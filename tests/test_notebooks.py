"""Every worked analysis in notebooks/ runs top to bottom against the packages."""

import runpy
from pathlib import Path

import pytest

NOTEBOOKS = sorted((Path(__file__).parents[1] / "notebooks").glob("*.py"))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs(path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys):
    monkeypatch.setenv("PIPECAST_NOTEBOOK_DEALS", "1500")
    monkeypatch.setenv("PIPECAST_NOTEBOOK_OUT", str(tmp_path))
    runpy.run_path(str(path), run_name="__main__")
    assert "plot written to" in capsys.readouterr().out
    assert list(tmp_path.glob("*.png"))


def test_there_is_a_notebook():
    assert NOTEBOOKS
