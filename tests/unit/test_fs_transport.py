"""The embedded broker's message files appear whole: a consumer never reads a half-written one."""

from __future__ import annotations

from pathlib import Path

import pytest
from kombu import Connection

from worker import factory  # noqa: F401  (points the filesystem:// alias at FIR's transport)
from worker.fs_transport import Transport


@pytest.fixture(scope="module")
def _control_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("kombu")


@pytest.fixture(autouse=True)
def _in_tmp(_control_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # kombu keeps exchange files in ./control and caches declared exchanges per process, so the
    # tests share one control folder (as one FIR process does), away from the repository
    monkeypatch.chdir(_control_home)


def _connection(folder: Path) -> Connection:
    options = {"data_folder_in": str(folder), "data_folder_out": str(folder),
               "processed_folder": str(folder / "processed"), "store_processed": False}
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
