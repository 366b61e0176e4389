"""kombu's filesystem transport, with message files that appear whole.

kombu's own ``_put`` creates the message file under its final name and then writes it; a
consumer polling the same folder can move and read it in between, get an empty payload, and
the worker stops with ``Unrecoverable error: JSONDecodeError``. Here the payload is written to
a ``.part`` name that consumers skip, then renamed into place (atomic within one folder).
``worker.factory`` points kombu's ``filesystem://`` alias at this transport.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from time import monotonic
from typing import Any

from kombu.exceptions import ChannelError
from kombu.transport import filesystem
from kombu.utils.encoding import str_to_bytes
from kombu.utils.json import dumps

PARTIAL_SUFFIX = ".part"


class Channel(filesystem.Channel):
    def _put(self, queue: Any, payload: Any, **kwargs: Any) -> None:  # type: ignore[override]  # kombu names it payload here, message in its base
        name = f"{int(round(monotonic() * 1000))}_{uuid.uuid4()}.{queue}.msg"
        final = os.path.join(self.data_folder_out, name)
        partial = final + PARTIAL_SUFFIX  # "<...>.<queue>.msg.part": not a message name
        try:
            with open(partial, "wb") as fh:
                fh.write(str_to_bytes(dumps(payload)))
            os.replace(partial, final)
        except OSError as exc:
            with contextlib.suppress(OSError):
                os.remove(partial)
            raise ChannelError(f"Cannot add file {final!r} to directory") from exc


class Transport(filesystem.Transport):
    Channel = Channel
