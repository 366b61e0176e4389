"""The embedded broker: message files appear whole (a consumer never reads a half-written
one), and a put wakes a waiting consumer through the broker bell."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
from kombu import Connection

from shared import jobbell
from worker import factory  # noqa: F401  (points the filesystem:// alias at FIR's transport)
from worker.fs_transport import BELL, Transport


@pytest.fixture(scope="module")
def _control_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("kombu")


@pytest.fixture(autouse=True)
def _in_tmp(_control_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # kombu keeps exchange files in ./control and caches declared exchanges per process, so the
    # tests share one control folder (as one FIR process does), away from the repository
    monkeypatch.chdir(_control_home)


def _connection(folder: Path, **extra: float) -> Connection:
    options = {"data_folder_in": str(folder), "data_folder_out": str(folder),
               "processed_folder": str(folder / "processed"), "store_processed": False, **extra}
    (folder / "processed").mkdir(parents=True, exist_ok=True)
    return Connection("filesystem://", transport_options=options)


def test_filesystem_alias_is_the_atomic_transport(tmp_path: Path) -> None:
    with _connection(tmp_path) as conn:
        assert isinstance(conn.transport, Transport)


def test_messages_round_trip_and_no_partial_file_is_left(tmp_path: Path) -> None:
    with _connection(tmp_path) as conn:
        queue = conn.SimpleQueue("gpu")
        for i in range(5):
            queue.put({"n": i})
        assert not list(tmp_path.glob("*.part"))
        assert len(list(tmp_path.glob("*.gpu.msg"))) == 5
        got = []
        for _ in range(5):
            message = queue.get(timeout=2)
            got.append(message.payload["n"])
            message.ack()
        assert sorted(got) == list(range(5))  # same-millisecond files come in any order (as in kombu)
        queue.close()


def test_a_file_being_written_is_skipped(tmp_path: Path) -> None:
    """kombu's own transport created the message under its final name before writing it, so a
    consumer could read it empty and the worker died (JSONDecodeError)."""
    with _connection(tmp_path) as conn:
        queue = conn.SimpleQueue("gpu")
        # what a producer mid-write looks like now: an empty file under the partial name
        (tmp_path / "1_abc.gpu.msg.part").write_bytes(b"")
        with pytest.raises(queue.Empty):
            queue.get(timeout=0.3)
        assert (tmp_path / "1_abc.gpu.msg.part").exists()
        queue.put({"n": 1})
        message = queue.get(timeout=2)
        assert message.payload == {"n": 1}
        message.ack()
        queue.close()


def test_the_message_name_appears_only_with_the_whole_payload(tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """At the moment a message gets its consumable name, its file already holds the payload
    (kombu's own _put fails this: it creates the final name empty, then writes)."""
    import json
    import os

    import worker.fs_transport as fst

    seen: list[tuple[bool, bytes]] = []
    real_replace = os.replace

    def spy(src: str, dst: str) -> None:
        seen.append((Path(dst).exists(), Path(src).read_bytes()))
        real_replace(src, dst)

    monkeypatch.setattr(fst.os, "replace", spy)
    with _connection(tmp_path) as conn:
        queue = conn.SimpleQueue("gpu")
        queue.put({"n": 7})
        assert len(seen) == 1
        final_existed, content = seen[0]
        assert not final_existed
        assert json.loads(content)["properties"]["delivery_info"]["routing_key"] == "gpu"  # the whole envelope
        message = queue.get(timeout=2)
        assert message.payload == {"n": 7}
        message.ack()
        queue.close()


def _put_later(folder: Path, payload: dict[str, int], delay: float, *, ring: bool = True) -> threading.Thread:
    """Another producer (its own connection) puts a message after ``delay`` seconds; with
    ``ring=False`` it is kombu's own transport, which knows nothing of the bell."""
    from kombu.transport import filesystem as kombu_fs

    def put() -> None:
        time.sleep(delay)
        options = {"data_folder_in": str(folder), "data_folder_out": str(folder)}
        conn = (Connection("filesystem://", transport_options=options) if ring
                else Connection(transport=kombu_fs.Transport, transport_options=options))
        with conn:
            conn.SimpleQueue("gpu").put(payload)

    thread = threading.Thread(target=put)
    thread.start()
    return thread


@pytest.mark.parametrize("with_socket", [True, False])
def test_a_waiting_consumer_is_woken_by_the_bell(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                 with_socket: bool) -> None:
    """With a 5 s polling interval, a put still reaches a waiting consumer at once: the put
    rings the bell the consumer sleeps on (its socket; without one, it watches the file)."""
    if not with_socket:
        monkeypatch.setattr(jobbell.Listener, "open", classmethod(lambda cls, path: None))
    with _connection(tmp_path, polling_interval=5.0) as conn:
        queue = conn.SimpleQueue("gpu")
        before = jobbell.stamp(tmp_path / BELL)
        thread = _put_later(tmp_path, {"n": 3}, delay=0.3)
        t0 = time.monotonic()
        message = queue.get(timeout=20)
        took = time.monotonic() - t0
        thread.join(5)
        assert message.payload == {"n": 3}
        message.ack()
        assert jobbell.stamp(tmp_path / BELL) != before
        assert took < 3  # not the 5 s polling interval
        queue.close()


def test_a_message_that_rings_nothing_is_still_found(tmp_path: Path) -> None:
    """A producer that does not ring (kombu's own transport): the next look, one polling
    interval later at most, finds its message."""
    with _connection(tmp_path, polling_interval=0.2) as conn:
        queue = conn.SimpleQueue("gpu")
        thread = _put_later(tmp_path, {"n": 4}, delay=0.3, ring=False)
        message = queue.get(timeout=20)
        thread.join(5)
        assert message.payload == {"n": 4}
        message.ack()
        assert not (tmp_path / BELL).exists()  # nobody rang
        queue.close()
