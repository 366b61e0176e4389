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


def test_a_listener_sleeps_until_a_ring(tmp_path: Path) -> None:
    bell = jobbell.bell_path(tmp_path)
    listener = jobbell.Listener.open(bell)
    assert listener is not None
    try:
        assert not listener.wait(0.05)  # nothing rang
        for _ in range(3):
            jobbell.ring(bell)
        assert listener.wait(0)  # rings are buffered until read ...
        assert not listener.wait(0.05)  # ... and all of them are consumed by one wait
        timer = threading.Timer(0.1, jobbell.ring, args=(bell,))
        timer.start()
        t0 = time.monotonic()
        assert listener.wait(10)
        assert time.monotonic() - t0 < 5
        timer.join()
    finally:
        listener.close()
    assert not list(jobbell.listeners_folder(bell).glob("*.sock"))  # closing removes its name


def test_a_dead_listener_is_removed_by_the_next_ring(tmp_path: Path) -> None:
    bell = jobbell.bell_path(tmp_path)
    listener = jobbell.Listener.open(bell)
    assert listener is not None
    listener._sock.close()  # its process died: the name stays, nobody reads it
    assert Path(listener.name).exists()
    jobbell.ring(bell)
    assert not Path(listener.name).exists()


def test_no_listener_where_no_socket_can_be_bound(tmp_path: Path) -> None:
    deep = tmp_path / ("x" * 120)  # over the Unix socket path limit (107 bytes on Linux)
    assert jobbell.Listener.open(jobbell.bell_path(deep)) is None


@pytest.mark.parametrize("with_socket", [True, False])
def test_a_hub_wakes_every_waiting_thread(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, with_socket: bool) -> None:
    """Threads of one process share one listener; without a socket they watch the file."""
    if not with_socket:
        monkeypatch.setattr(jobbell.Listener, "open", classmethod(lambda cls, path: None))
    bell = jobbell.bell_path(tmp_path)
    hub = jobbell.Hub(bell)
    assert hub.listening is with_socket
    token = hub.token()
    assert not hub.wait(token, time.monotonic() + 0.05)
    woken: list[float] = []

    def waiter() -> None:
        if hub.wait(token, time.monotonic() + 10):
            woken.append(time.monotonic())

    threads = [threading.Thread(target=waiter) for _ in range(4)]
    for t in threads:
        t.start()
    time.sleep(0.1)
    rang = time.monotonic()
    jobbell.ring(bell)
    for t in threads:
        t.join(10)
    assert len(woken) == 4 and max(woken) - rang < 5


def test_a_hub_is_trusted_after_rung_finishes_in_a_row_and_not_after_a_miss(tmp_path: Path) -> None:
    hub = jobbell.Hub(tmp_path / "run" / "jobs-finished.bell")
    assert not hub.trusted
    for _ in range(jobbell.TRUSTED_AFTER - 1):
        hub.heard(True)
    assert not hub.trusted
    hub.heard(True)
    assert hub.trusted
    hub.heard(False)  # a job found finished without its ring: trust is taken back at once
    assert not hub.trusted
    for _ in range(jobbell.TRUSTED_AFTER):
        hub.heard(True)
    assert hub.trusted
