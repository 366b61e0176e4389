"""The finished-job doorbell: a file under FIR home that grows by one byte whenever a job
reaches a terminal status (after the commit).

A long poll (``GET /api/v1/jobs/<id>?wait=S``) stats the file every millisecond, which costs
microseconds, and reads the job's status from the database only when the file has changed,
instead of querying the database every few milliseconds. Rings are appends, not timestamps,
so two rings within one clock tick still change the file and none is missed; the waiters keep
a slow database poll as well, for a process that rings nowhere they can see.

Every FIR process shares FIR home (query uploads travel through it), so the API sees the
workers' rings on one machine and across containers sharing the volume.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

log = logging.getLogger(__name__)

BELL = Path("run") / "jobs-finished.bell"
MAX_BYTES = 1 << 20  # rotated (truncated) past this size: a size change is all a waiter needs

Stamp = tuple[int, int, int]


def bell_path(home: Path) -> Path:
    return home / BELL


def ring(path: Path) -> None:
    """Append one byte (creating the file and its folder if needed). Never raises: a bell
    that cannot ring costs the waiters latency (their database poll), not correctness."""
    try:
        try:
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        except FileNotFoundError:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, b".")
            if os.fstat(fd).st_size > MAX_BYTES:
                os.ftruncate(fd, 0)
        finally:
            os.close(fd)
    except OSError as exc:
        log.debug("job bell %s: %s", path, exc)


def stamp(path: Path) -> Stamp:
    """What a change is measured against: (inode, size, mtime); zeros while there is no bell."""
    try:
        st = os.stat(path)
    except OSError:
        return (0, 0, 0)
    return (st.st_ino, st.st_size, st.st_mtime_ns)


def wait_for_ring(path: Path, since: Stamp, until: float, interval_s: float = 0.001) -> bool:
    """Sleep until the bell differs from ``since`` (True) or ``time.monotonic()`` reaches
    ``until`` (False)."""
    while True:
        if stamp(path) != since:
            return True
        left = until - time.monotonic()
        if left <= 0:
            return False
        time.sleep(min(interval_s, left))
