"""The observation log under faults: what a flipped byte costs, and how soon observe heals after a
full disk frees space.

    .venv/bin/python bench/bench_log_faults.py [--records 10000] [--trials 20] [--quick]

Flipped byte: N records in one segment, one byte flipped at a random place, the log reopened:
records kept (N - 1 expected, N when the byte was a newline) and whether any LSN is reused.
Full disk (needs root, for a real tmpfs): fill the disk, a 1,000-row append is refused, delete
the filler, then time until an append succeeds again without reopening the log. Prints one JSON
document; medians and p99 over the trials (this machine is shared: trust medians).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np

from veloxserve.errors import StoreUnavailable
from veloxserve.storage.observation_log import ObservationLog


def flipped_bytes(records: int, trials: int, rng: np.random.Generator) -> dict:
    kept, reused = [], 0
    for _ in range(trials):
        with tempfile.TemporaryDirectory() as scratch:
            with ObservationLog(Path(scratch), fsync=False) as log:
                log.append_and_wait([(f"user-{n}", f"item-{n}", n / 7, "v1") for n in range(records)])
            segment = next(Path(scratch).glob("segment-*.log"))
            data = bytearray(segment.read_bytes())
            data[int(rng.integers(len(data)))] ^= 1 << int(rng.integers(8))
            segment.write_bytes(bytes(data))
            with ObservationLog(Path(scratch), fsync=False) as log:
                kept.append(sum(1 for _ in log.replay()))
                reused += log.append_and_wait([("after", "i", 0.0, "v1")]) <= records
    return {
        "records": records,
        "trials": trials,
        "kept_min": int(min(kept)),
        "kept_median": float(np.median(kept)),
        "lsn_reused": reused,
    }


def full_disk(trials: int) -> dict:
    if os.geteuid() != 0:
        return {"skipped": "mounting a tmpfs needs root"}
    mount = Path(tempfile.mkdtemp())
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(mount)]).returncode != 0:
        return {"skipped": "mount -t tmpfs failed"}
    heal, refused = [], 0
    try:
        for trial in range(trials):
            log = ObservationLog(mount / f"log{trial}")
            log.append_and_wait([("u", "i", 1.0, "v1")] * 10)
            with open(mount / "filler", "wb", buffering=0) as fh:
                try:
                    while True:
                        fh.write(b"\0" * 4096)
                except OSError:
                    pass
            try:
                log.append_and_wait([("u", "i", 2.0, "v1")] * 1000, 10)
            except StoreUnavailable:
                refused += 1
            (mount / "filler").unlink()
            started = time.perf_counter()
            while True:
                try:
                    log.append_and_wait([("u", "i", 3.0, "v1")], 10)
                    break
                except StoreUnavailable:
                    time.sleep(0.005)
            heal.append(time.perf_counter() - started)
            log.close()
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)
    return {
        "trials": trials,
        "refused": refused,
        "heal_seconds_median": round(float(np.median(heal)), 3),
        "heal_seconds_p99": round(float(np.percentile(heal, 99)), 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=10_000)
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--quick", action="store_true", help="the smallest setting (a smoke run)")
    args = parser.parse_args()
    records, trials = (200, 3) if args.quick else (args.records, args.trials)
    rng = np.random.default_rng(0)
    print(json.dumps({"flipped_byte": flipped_bytes(records, trials, rng), "full_disk": full_disk(trials)}, indent=2))


if __name__ == "__main__":
    main()
