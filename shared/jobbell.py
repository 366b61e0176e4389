"""Doorbells between FIR processes: "a job finished", "a message was put".

A bell is a file (say ``$FIR_HOME/run/jobs-finished.bell``) and a folder beside it
(``jobs-finished.bell.d/``). :func:`ring` appends one byte to the file and sends one datagram
to every Unix socket in the folder. A process that waits for rings binds one socket there
(:class:`Listener`) and blocks on it: it takes no CPU until a ring comes, which matters on a
small machine where a waiting thread that woke every millisecond would take time from the
model's forward. Where a socket cannot be bound (no Unix sockets, a path over the length
limit), waiters fall back to watching the file (:func:`wait_for_ring`: a ``stat`` every
millisecond; rings are appends, so two rings within one clock tick still change it).

Ringing never raises: a ring that is lost costs a waiter latency (its slower fallback poll of
the real state), never correctness. Every FIR process shares FIR home (query uploads travel
through it), so the API hears the workers on one machine and across containers sharing the
volume.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import socket
import threading
import time
import uuid
from pathlib import Path

log = logging.getLogger(__name__)

BELL = Path("run") / "jobs-finished.bell"
MAX_BYTES = 1 << 20  # the file is truncated past this size: a size change is all a watcher needs

Stamp = tuple[int, int, int]

_sender: tuple[int, socket.socket] | None = None  # (pid, socket): one per process
_sender_lock = threading.Lock()


def bell_path(home: Path) -> Path:
    return home / BELL


def listeners_folder(path: Path) -> Path:
    return path.with_name(path.name + ".d")


def ring(path: Path) -> None:
    """Append one byte to the bell file (creating it and its folder if needed) and wake every
    listener. Never raises."""
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
        log.debug("bell %s: %s", path, exc)
    _wake_listeners(listeners_folder(path))


def _sending_socket() -> socket.socket:
    global _sender
    with _sender_lock:
        if _sender is None or _sender[0] != os.getpid():  # not one inherited across a fork
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            sock.setblocking(False)
            _sender = (os.getpid(), sock)
        return _sender[1]


def _wake_listeners(folder: Path) -> None:
    try:
        entries = [e.path for e in os.scandir(folder) if e.name.endswith(".sock")]
    except OSError:
        return  # nobody listens
    if not entries or not hasattr(socket, "AF_UNIX"):
        return
    sock = _sending_socket()
    for target in entries:
        try:
            sock.sendto(b".", target)
        except (ConnectionRefusedError, FileNotFoundError):
            # no process behind it any more (it died without closing): remove the stale name
            with contextlib.suppress(OSError):
                os.unlink(target)
        except OSError:
            pass  # a full buffer (the listener has rings pending already) or a path too long


def stamp(path: Path) -> Stamp:
    """What a change of the file is measured against: (inode, size, mtime); zeros without one."""
    try:
        st = os.stat(path)
    except OSError:
        return (0, 0, 0)
    return (st.st_ino, st.st_size, st.st_mtime_ns)


def wait_for_ring(path: Path, since: Stamp, until: float, interval_s: float = 0.001) -> bool:
    """The fallback: sleep until the bell file differs from ``since`` (True) or
    ``time.monotonic()`` reaches ``until`` (False)."""
    while True:
        if stamp(path) != since:
            return True
        left = until - time.monotonic()
        if left <= 0:
            return False
        time.sleep(min(interval_s, left))


class Listener:
    """A Unix datagram socket in the bell's listeners folder; :meth:`wait` blocks until a ring."""

    def __init__(self, sock: socket.socket, name: str) -> None:
        self._sock = sock
        self.name = name

    @classmethod
    def open(cls, path: Path) -> Listener | None:
        """A listener for the bell at ``path``, or None where one cannot be bound."""
        if not hasattr(socket, "AF_UNIX"):
            return None
        folder = listeners_folder(path)
        name = str(folder / f"{os.getpid()}-{uuid.uuid4().hex[:8]}.sock")
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        try:
            folder.mkdir(parents=True, exist_ok=True)
            sock.bind(name)
        except OSError as exc:  # e.g. a path over the 107-byte limit, a read-only folder
            sock.close()
            log.info("bell %s: no listener (%s); waiters watch the file instead", path, exc)
            return None
        sock.setblocking(False)
        return cls(sock, name)

    def wait(self, timeout: float) -> bool:
        """Block until a ring (True; every ring pending is consumed) or ``timeout`` s (False)."""
        readable, _, _ = select.select([self._sock], [], [], max(timeout, 0.0))
        if not readable:
            return False
        try:
            while self._sock.recv(64):
                pass
        except (BlockingIOError, InterruptedError):
            pass
        return True

    def close(self) -> None:
        self._sock.close()
        with contextlib.suppress(OSError):
            os.unlink(self.name)


TRUSTED_AFTER = 3  # jobs in a row whose waiters heard them finish by the bell


class Hub:
    """One process's waits on a bell: a daemon thread blocks on a :class:`Listener` and
    counts rings; any number of threads wait for the count to move. Without a listener the
    waits watch the file.

    The hub also keeps score of how its waiters learned that their jobs had finished
    (:meth:`heard`): by a ring, or only by reading the job's state when no ring came (the
    worker's ring was lost, or the worker rings a bell this process does not hear, e.g. on
    another machine). After :data:`TRUSTED_AFTER` rung finishes in a row it is
    :attr:`trusted`, and waiters may read the state less often; one finish that came without a
    ring takes the trust back."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._cond = threading.Condition()
        self._rings = 0
        self._rung_in_a_row = 0
        self._listener = Listener.open(path)
        if self._listener is not None:
            threading.Thread(target=self._run, name="fir-bell", daemon=True).start()

    @property
    def listening(self) -> bool:
        return self._listener is not None

    def _run(self) -> None:
        listener = self._listener
        assert listener is not None
        while True:
            if listener.wait(1.0):
                with self._cond:
                    self._rings += 1
                    self._cond.notify_all()

    def heard(self, rung: bool) -> None:
        """A waiter found its job finished after a ring (``rung``) or without one."""
        with self._cond:
            self._rung_in_a_row = self._rung_in_a_row + 1 if rung else 0

    @property
    def trusted(self) -> bool:
        """Whether the last :data:`TRUSTED_AFTER` finishes found by waiters came with a ring."""
        return self._rung_in_a_row >= TRUSTED_AFTER

    def token(self) -> object:
        """Take before reading the state a ring would change; pass to :meth:`wait`."""
        return self._rings if self._listener is not None else stamp(self.path)

    def wait(self, token: object, until: float) -> bool:
        """Until a ring since ``token`` (True) or ``time.monotonic()`` reaches ``until``."""
        if self._listener is None:
            assert isinstance(token, tuple)
            return wait_for_ring(self.path, token, until)
        with self._cond:
            return self._cond.wait_for(lambda: self._rings != token, timeout=max(until - time.monotonic(), 0.0))


_hubs: dict[tuple[int, Path], Hub] = {}
_hubs_lock = threading.Lock()


def hub(path: Path) -> Hub:
    """This process's hub for the bell at ``path`` (created on first use, again after a fork)."""
    key = (os.getpid(), path)
    with _hubs_lock:
        found = _hubs.get(key)
        if found is None:
            found = _hubs[key] = Hub(path)
        return found
