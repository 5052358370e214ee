"""The pipeline health PNG: written, a real PNG of the expected size, with and without a target."""

import struct
import sys

import pytest

from features.data.calendar import to_timestamp
from features.pipeline.metrics import compute_metrics
from features.pipeline.plots import plot_pipeline
from tests.factory import deal, tables

AS_OF = to_timestamp("2025-06-15")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def build(targets=(("company", "company", "2025Q2", 100_000.0),)):
    return tables(
        deals=[
            deal("D1", "2025-01-10", stage="proposal", amount=300_000.0,
                 expected_close_date="2025-06-30"),
            deal("D2", "2025-02-01", amount=50_000.0, expected_close_date="2025-05-31"),
            deal("W1", "2024-10-01", stage="closed_won", outcome="won", closed_at="2025-03-01",
                 amount=120_000.0, forecast_category="closed"),
            deal("L1", "2024-11-01", stage="closed_lost", outcome="lost", closed_at="2025-04-01",
                 amount=80_000.0, forecast_category="closed", loss_reason="price"),
        ],
        stage_history=[
            ("D1", "qualification", "2025-01-10"),
            ("D1", "proposal", "2025-06-12"),
            ("D2", "qualification", "2025-02-01"),
            ("W1", "qualification", "2024-10-01"),
            ("W1", "proposal", "2024-12-01"),
            ("W1", "closed_won", "2025-03-01"),
            ("L1", "qualification", "2024-11-01"),
            ("L1", "closed_lost", "2025-04-01"),
        ],
        targets=list(targets),
    )  # fmt: skip


def png_size(path):
    """(width, height) from the IHDR chunk, after checking the signature."""
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC
    assert data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


@pytest.mark.parametrize("targets", [(("company", "company", "2025Q2", 100_000.0),), ()])
def test_png_written(tmp_path, targets, cfg):
    metrics = compute_metrics(build(targets), cfg, AS_OF)
    assert (metrics.coverage.target is None) == (not targets)
    out = plot_pipeline(metrics, cfg, tmp_path / "health.png")
    assert out == tmp_path / "health.png"
    assert png_size(out) == (1430, 1045)  # 13 x 9.5 in at 110 dpi
    assert out.stat().st_size > 30_000  # three drawn panels, not a blank canvas
    assert out.read_bytes().endswith(b"IEND\xaeB`\x82")


def test_no_open_deals_still_draws(tmp_path, cfg):
    # As of a day before any deal existed: every count is zero, every median unknown.
    metrics = compute_metrics(build(), cfg, to_timestamp("2024-01-01"))
    assert metrics.open_pipeline.count == 0
    out = plot_pipeline(metrics, cfg, tmp_path / "empty.png")
    assert png_size(out) == (1430, 1045)


def test_leaves_no_pyplot_state(tmp_path, cfg):
    import matplotlib

    backend = matplotlib.get_backend()
    plot_pipeline(compute_metrics(build(), cfg, AS_OF), cfg, tmp_path / "a.png")
    assert matplotlib.get_backend() == backend
    # No pyplot figure was opened (pyplot may not even be imported).
    plt = sys.modules.get("matplotlib.pyplot")
    assert plt is None or plt.get_fignums() == []


def test_unknown_amounts_and_close_dates_are_said_on_the_plot(tmp_path, cfg):
    """A CRM that logs no amounts or close dates: before the export the coverage bars cannot
    count the open deals, and the panel says so instead of showing them as 0."""
    from dataclasses import replace

    from features.pipeline.plots import _unknown_note

    data = build()
    bare = replace(data, field_history=data.field_history.iloc[0:0])
    metrics = compute_metrics(bare, cfg, AS_OF)
    assert _unknown_note(metrics) == "not counted: 2 open deals with unknown close date"
    assert _unknown_note(compute_metrics(data, cfg, AS_OF)) == ""
    assert png_size(plot_pipeline(metrics, cfg, tmp_path / "bare.png")) == (1430, 1045)
