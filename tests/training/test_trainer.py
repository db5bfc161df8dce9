"""Retraining reads every server instance's log, merged, and records how far it read each."""

from __future__ import annotations

from pathlib import Path

from veloxserve.config import HomeLayout
from veloxserve.storage.observation_log import ObservationLog
from veloxserve.training.trainer import training_data


def test_training_data_merges_the_main_log_and_instance_logs(tmp_path: Path) -> None:
    layout = HomeLayout(tmp_path)
    with ObservationLog(layout.log_dir("m")) as main, ObservationLog(layout.instance_log_dir("m", "b")) as b:
        main.append_and_wait([("u1", "i1", 1.0, "v1")])
        b.append_and_wait([("u2", "i2", 2.0, "v1"), ("u3", "i3", 3.0, "v1")])
        main.append_and_wait([("u4", "i4", 4.0, "v1")])  # after the snapshot below: not trained on
    data, window = training_data(layout, "m", upto_lsn=1)
    assert data.users.tolist() == ["u1", "u2", "u3"] and data.scores.tolist() == [1.0, 2.0, 3.0]
    assert window["log_rows"] == 3 and window["log_positions"] == {"b": 2}
