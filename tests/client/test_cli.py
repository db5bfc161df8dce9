"""The client commands' output for people: aligned tables."""

from __future__ import annotations

from veloxserve.client.cli import table, versions_table
from veloxserve.client.results import Versions


def test_a_table_aligns_its_columns_and_shows_none_as_a_dash() -> None:
    text = table([("v1", None, 3), ("v10", "ready", 12345)], ("VERSION", "STATUS", "ROWS"))
    assert text.splitlines() == ["VERSION  STATUS  ROWS", "v1       -       3", "v10      ready   12345"]


def test_the_versions_table_marks_the_active_version() -> None:
    listing = Versions.from_json(
        {
            "active_version": "v2",
            "versions": [
                {
                    "version": "v1",
                    "status": "retired",
                    "created_at": "2026-01-02T03:04:05.6+00:00",
                    "heldout_rmse": 0.91234,
                    "rows_trained": 100,
                    "source": "r.csv",
                },
                {"version": "v2", "status": "active", "parent": "v1", "reason": "drift"},
            ],
        }
    )
    header, v1, v2 = versions_table(listing).splitlines()
    assert header.split() == ["VERSION", "STATUS", "CREATED", "PARENT", "REASON", "HELDOUT_RMSE", "ROWS"]
    assert v1.split() == ["v1", "retired", "2026-01-02", "03:04:05", "-", "file", "0.9123", "100"]
    assert v2.split() == ["*", "v2", "active", "-", "v1", "drift", "-", "-"]
