"""kombu's filesystem transport, with message files that appear whole.

kombu's own ``_put`` creates the message file under its final name and then writes it; a
consumer polling the same folder can move and read it in between, get an empty payload, and
the worker stops with ``Unrecoverable error: JSONDecodeError``. Here the payload is written to
a ``.part`` name that consumers skip, then renamed into place (atomic within one folder).
``worker.factory`` points kombu's ``filesystem://`` alias at this transport.

It also keeps a doorbell (:mod:`shared.jobbell`) in the queue folder: every message put rings
it. An idle consumer sleeps on its bell socket and looks at the queues when it rings, or every
``polling_interval`` in any case; kombu's own loop would have to list and sort the folder every
millisecond or two to answer as fast. Where no socket can be bound, the consumer stats the
bell file every ``BELL_CHECK_S`` instead.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from pathlib import Path
from time import monotonic
from typing import Any

from kombu.exceptions import ChannelError
from kombu.transport import filesystem
from kombu.transport.virtual import Empty
from kombu.utils.encoding import str_to_bytes
from kombu.utils.json import dumps

from shared import jobbell

PARTIAL_SUFFIX = ".part"
BELL = "broker.bell"  # in the queue folder; not a message name ("<...>.<queue>.msg")
# Without a bell socket, an idle worker stats the bell file this often: 2.4 % of one core idle
# with polling_interval 50 ms (kombu's own loop at 5 ms: 2.7 %; a 1 ms check: 4-5 %).
BELL_CHECK_S = 0.002


class Channel(filesystem.Channel):
    def _put(self, queue: Any, payload: Any, **kwargs: Any) -> None:  # type: ignore[override]  # kombu names it payload here, message in its base
        name = f"{int(round(monotonic() * 1000))}_{uuid.uuid4()}.{queue}.msg"
        final = os.path.join(self.data_folder_out, name)
        partial = final + PARTIAL_SUFFIX  # "<...>.<queue>.msg.part": not a message name
        try:
            with open(partial, "wb") as fh:
                fh.write(str_to_bytes(dumps(payload)))
            os.replace(partial, final)
            jobbell.ring(Path(self.data_folder_out) / BELL)
        except OSError as exc:
            with contextlib.suppress(OSError):
                os.remove(partial)
            raise ChannelError(f"Cannot add file {final!r} to directory") from exc


class Transport(filesystem.Transport):
    Channel = Channel

    _listener: tuple[int, jobbell.Listener | None] | None = None  # (pid, listener)

    def _bell_listener(self, bell: Path) -> jobbell.Listener | None:
        if self._listener is None or self._listener[0] != os.getpid():
            self._listener = (os.getpid(), jobbell.Listener.open(bell))
        return self._listener[1]

    def drain_events(self, connection: Any, timeout: float | None = None, **_: Any) -> None:
        """kombu's loop (look at the queues; when all are empty, wait ``polling_interval``),
        except that the wait ends as soon as the bell rings: a message is picked up within a
        millisecond of being put, while an idle worker sleeps on its bell socket and looks at
        the folder only every ``polling_interval``."""
        start = monotonic()
        client: Any = self.client
        cycle: Any = self.cycle
        bell = Path(client.transport_options.get("data_folder_in") or ".") / BELL
        listener = self._bell_listener(bell)
        interval = self.polling_interval or 0.0
        while True:
            before = jobbell.stamp(bell) if listener is None else None  # read before the look
            try:
                cycle.get(self._deliver, timeout=timeout)
                return
            except Empty:
                now = monotonic()
                if timeout is not None and now - start >= timeout:
                    raise TimeoutError() from None
                until = now + interval if timeout is None else min(now + interval, start + timeout)
                if listener is not None:  # rings since the look are buffered in its socket
                    listener.wait(until - now)
                else:
                    jobbell.wait_for_ring(bell, before or (0, 0, 0), until, interval_s=BELL_CHECK_S)

    def close_connection(self, connection: Any) -> None:
        if self._listener is not None and self._listener[0] == os.getpid() and self._listener[1] is not None:
            self._listener[1].close()
            self._listener = None
        super().close_connection(connection)
