"""pid_alive tells a running process from one that has exited."""

from __future__ import annotations

import os
import subprocess
import sys

from shared.procs import pid_alive


def test_pid_alive() -> None:
    assert pid_alive(os.getpid())
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()  # exited and reaped: the id is free
    assert not pid_alive(proc.pid)
