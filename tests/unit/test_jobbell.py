"""The finished-job doorbell (shared/jobbell.py)."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from shared import jobbell


def test_every_ring_changes_the_stamp_even_within_one_clock_tick(tmp_path: Path) -> None:
    bell = jobbell.bell_path(tmp_path)
    stamps = [jobbell.stamp(bell)]
    assert stamps[0] == (0, 0, 0)  # no bell yet
    for _ in range(5):  # far faster than the file system's timestamp granularity
        jobbell.ring(bell)  # creates run/ on the first ring
        stamps.append(jobbell.stamp(bell))
    assert len(set(stamps)) == 6


def test_the_bell_is_rotated_and_still_changes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(jobbell, "MAX_BYTES", 3)
    bell = jobbell.bell_path(tmp_path)
    seen = []
    for _ in range(8):
        jobbell.ring(bell)
        seen.append(jobbell.stamp(bell))
    assert bell.stat().st_size <= 4
    assert all(a != b for a, b in zip(seen, seen[1:], strict=False))


def test_wait_for_ring_wakes_on_a_ring_and_times_out_without_one(tmp_path: Path) -> None:
    bell = jobbell.bell_path(tmp_path)
    since = jobbell.stamp(bell)
    t0 = time.monotonic()
    assert not jobbell.wait_for_ring(bell, since, time.monotonic() + 0.05)
    assert time.monotonic() - t0 >= 0.05
    timer = threading.Timer(0.05, jobbell.ring, args=(bell,))
    timer.start()
    t0 = time.monotonic()
    assert jobbell.wait_for_ring(bell, since, time.monotonic() + 10)
    assert time.monotonic() - t0 < 5
    timer.join()


def test_a_bell_that_cannot_ring_does_not_raise(tmp_path: Path) -> None:
    blocker = tmp_path / "run"
    blocker.write_text("a file where the folder should be")
    jobbell.ring(jobbell.bell_path(tmp_path))  # logged, not raised
    assert jobbell.stamp(jobbell.bell_path(tmp_path)) == (0, 0, 0)
