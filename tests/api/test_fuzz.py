"""Schemathesis `--checks all` against a live server: the schema and the server agree.

`veloxserve serve` runs on a free port over a home holding a model trained by `veloxserve train`
with content features (so `text` queries are servable), with an admin token. Schemathesis reads
the server's own /openapi.json and sends generated requests, valid and invalid, in every phase
(examples, coverage, fuzzing, stateful): no answer may be a 5xx, a valid request may not be
refused, an invalid one may not be accepted, and every answer must be what the schema documents.
The seed is fixed and the example count bounded, so the run is reproducible and takes about a
minute on two cores.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.helpers import ServerProcess, admin_headers

SCHEMATHESIS = Path(sys.executable).with_name("schemathesis")
EXAMPLES_PER_OPERATION = 20
SEED = int(os.environ.get("FUZZ_SEED", "20261202"))  # FUZZ_SEED=<n> explores further


def _train_songs(home: Path, tmp: Path) -> None:
    """A small real model: ALS over ratings plus content features from each song's text."""
    rng = np.random.default_rng(0)
    words = ["paralo", "rapado", "furifu", "lumo", "vessa", "kiran", "dobu", "tesh"]
    ratings = ["user,item,score"]
    for user in range(40):
        for item in rng.choice(60, size=12, replace=False):
            ratings.append(f"{user},{100 + item},{rng.integers(1, 6)}")
    (tmp / "ratings.csv").write_text("\n".join(ratings) + "\n")
    songs = ["item,genre,text"] + [
        f"{100 + i},{'rock' if i % 2 else 'jazz'},{' '.join(rng.choice(words, 4))}" for i in range(60)
    ]
    (tmp / "songs.csv").write_text("\n".join(songs) + "\n")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "veloxserve.cli",
            "train",
            "--home",
            str(home),
            "--ratings",
            str(tmp / "ratings.csv"),
            "--items",
            str(tmp / "songs.csv"),
            "--model",
            "songs",
            "--rank",
            "4",
        ],
        check=True,
        capture_output=True,
        timeout=300,
    )


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("fuzz")
    home = tmp / "home"
    _train_songs(home, tmp)
    token = admin_headers(home)["authorization"]
    server = ServerProcess(home)
    try:
        server.wait_ready()
        yield server, token
    finally:
        server.stop()


def test_schemathesis_checks_all_find_no_mismatch_and_no_5xx(live, tmp_path: Path) -> None:
    server, token = live
    # The real model. A deadline too short to serve is refused with 503 by design (admission control,
    # documented with Retry-After): not a server error to find; every other 5xx is.
    (tmp_path / "schemathesis.toml").write_text(
        '[parameters]\n"path.name" = "songs"\n\n'
        '[checks.not_a_server_error]\nexpected-statuses = ["2xx", "3xx", "4xx", "503"]\n'
    )
    run = subprocess.run(
        [
            str(SCHEMATHESIS),
            "run",
            f"{server.url}/openapi.json",
            "--checks",
            "all",
            "-H",
            f"Authorization: {token}",
            "--max-examples",
            str(EXAMPLES_PER_OPERATION),
            "--seed",
            str(SEED),
            "--workers",
            "1",
            "--request-timeout",
            "30",
            "--no-color",
        ],
        capture_output=True,
        text=True,
        timeout=900,
        cwd=tmp_path,
    )
    assert run.returncode == 0, run.stdout[-20000:] + run.stderr[-2000:]
