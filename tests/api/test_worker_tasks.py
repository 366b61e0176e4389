"""The worker's tasks run in-process against the API's database: micro-batched queries,
redelivery, the nightly re-index and housekeeping."""

from __future__ import annotations

import io
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from PIL import Image
from sqlalchemy import select, update

from shared.db import services
from shared.db.models import Job, QueryResult
from shared.db.session import session_scope
from tests.api.conftest import ApiEnv


@pytest.fixture()
def tasks(api: ApiEnv, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    from worker import holder, tasks
    from worker.celery_app import app

    previous = app.conf.fir_settings
    app.conf.fir_settings = api.settings
    sent: list[tuple[str, list[int]]] = []
    task_ids: list[str | None] = []

    class _Result:
        id = "recorded"

    def send_task(name: str, args: list[int], queue: str, task_id: str | None = None) -> Any:
        sent.append((name, args))
        task_ids.append(task_id)
        return _Result()

    monkeypatch.setattr(app, "send_task", send_task)
    holder.reset_holder()
    tasks.sent = sent  # type: ignore[attr-defined]
    tasks.task_ids = task_ids  # type: ignore[attr-defined]
    yield tasks
    app.conf.fir_settings = previous
    holder.reset_holder()


def _submit(api: ApiEnv, colour: tuple[int, int, int], **extra: str) -> int:
    buf = io.BytesIO()
    Image.new("RGB", (64, 64), colour).save(buf, "JPEG")
    buf.seek(0)
    resp = api.client.post("/api/v1/queries", content_type="multipart/form-data",
                           data={"catalogue": "demo", "k": "4", **extra, "file": (buf, "q.jpg")})
    assert resp.status_code == 202, resp.get_json()
    return int(resp.get_json()["job_id"])


def test_waiting_queries_are_answered_together(api: ApiEnv, tasks: Any) -> None:
    ids = [_submit(api, (40 * i, 90, 200 - 40 * i)) for i in range(3)]
    out = tasks.run_query.run(ids[0])
    assert sorted(out["answered"]) == sorted(ids)  # one task, one embedding batch, three answers
    for job_id in ids:
        job = api.client.get(f"/api/v1/jobs/{job_id}").get_json()
        assert job["status"] == "succeeded" and len(job["results"]) == 4
        assert job["model_version"]["id"] == api.version_id
    # the other deliveries find their jobs finished and do nothing (safe to run twice)
    assert tasks.run_query.run(ids[1]) == {"skipped": ids[1]}


def test_the_claim_reads_the_model_and_index_state_the_answer_uses(api: ApiEnv, tasks: Any,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """The transaction that claims a query also reads the active model and the catalogue's
    index generation; the answer is built against that state without reading it again, and a
    generation bumped after the claim is picked up by the next query."""
    from worker import holder as holder_mod

    first = _submit(api, (30, 140, 220))
    claimed, states = tasks._claim_queries(first, None, False, 1)
    assert [j.id for j in claimed] == [first]
    with session_scope(api.settings) as session:
        active = services.get_active_model_version(session)
        assert active is not None
        expected = (active.id, services.get_index_generation(session, api.catalogue_id, active.id))
    assert states == {api.catalogue_id: expected}
    reads: list[int] = []
    real_state = holder_mod.ModelHolder.state

    def counted(self: Any, session: Any, catalogue_id: int) -> tuple[int, int]:
        reads.append(catalogue_id)
        return real_state(self, session, catalogue_id)

    monkeypatch.setattr(holder_mod.ModelHolder, "state", counted)
    tasks.answer_queries(claimed, states)
    assert reads == []  # answered under the state read with the claim
    with session_scope(api.settings) as session:
        assert services.get_job(session, first).status == "succeeded"
        services.bump_index_generation(session, api.catalogue_id, active.id)
    second = _submit(api, (220, 140, 30))
    tasks.run_query.run(second)
    assert reads == [api.catalogue_id]  # read once, in the claim
    cached = holder_mod.get_holder(api.settings)._catalogues[api.catalogue_id]
    assert cached.generation == expected[1] + 1  # the second answer used the bumped index


def test_bad_upload_vanished_fails_only_its_job(api: ApiEnv, tasks: Any) -> None:
    good, bad = _submit(api, (10, 10, 10)), _submit(api, (200, 0, 0))
    with session_scope(api.settings) as session:
        params = services.get_job(session, bad).params or {}
    import os

    os.remove(params["upload"])  # the stored query image is gone
    tasks.run_query.run(good)
    assert api.client.get(f"/api/v1/jobs/{good}").get_json()["status"] == "succeeded"
    job = api.client.get(f"/api/v1/jobs/{bad}").get_json()
    assert job["status"] == "failed" and job["error"]["code"] == "bad_image"


def test_cancelled_query_is_not_answered(api: ApiEnv, tasks: Any) -> None:
    job_id = _submit(api, (0, 200, 0))
    assert api.client.delete(f"/api/v1/jobs/{job_id}").status_code == 200
    assert tasks.run_query.run(job_id) == {"skipped": job_id}
    assert api.client.get(f"/api/v1/jobs/{job_id}").get_json()["status"] == "cancelled"


def test_index_task_records_progress_and_report(api: ApiEnv, tasks: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    warmed: list[bool] = []
    monkeypatch.setattr(tasks, "_warm_in_background", lambda: warmed.append(True))
    resp = api.client.post(f"/api/v1/catalogues/{api.catalogue_id}/reindex", json={})
    job_id = resp.get_json()["job_id"]
    tasks.run_index.run(job_id)
    job = api.client.get(f"/api/v1/jobs/{job_id}").get_json()
    assert job["status"] == "succeeded", job
    assert job["result"]["embedded"] == 0 and job["result"]["unchanged"] >= 72  # nothing changed on disk
    assert job["progress"]["done"] == job["progress"]["total"]
    assert warmed == [True]  # the process then loads the new index in the background


def test_nightly_reindex_is_idempotent_per_day(api: ApiEnv, tasks: Any) -> None:
    first = tasks.nightly_reindex.run()
    assert len(first) >= 1 and all(name == "fir.index" for name, _ in tasks.sent)
    assert tasks.nightly_reindex.run() == []  # the same day: no second job
    job = api.client.get(f"/api/v1/jobs/{first[0]}").get_json()
    assert job["type"] == "reindex" and job["status"] == "queued"
    with session_scope(api.settings) as session:  # the message went out under the job's task id
        assert services.get_job(session, first[0]).task_id == tasks.task_ids[0] is not None


def test_housekeeping_expires_results_and_fails_stuck_jobs(api: ApiEnv, tasks: Any) -> None:
    done = _submit(api, (5, 5, 5))
    tasks.run_query.run(done)
    stuck = _submit(api, (6, 6, 6))
    old = datetime.now(UTC) - timedelta(days=30)
    with session_scope(api.settings) as session:
        services.transition_job(session, stuck, "running")
        session.execute(update(Job).where(Job.id == stuck).values(started_at=old))
        session.execute(update(QueryResult).where(QueryResult.job_id == done).values(created_at=old))
    out = tasks.housekeeping.run()
    assert out["expired_results"] >= 1 and out["failed_stuck_jobs"] >= 1
    job = api.client.get(f"/api/v1/jobs/{stuck}").get_json()
    assert job["status"] == "failed" and job["error"]["code"] == "stuck"
    assert "results" not in api.client.get(f"/api/v1/jobs/{done}").get_json() or \
        api.client.get(f"/api/v1/jobs/{done}").get_json()["results"] is None


def test_batch_form_answers_every_file_in_one_job(api: ApiEnv, tasks: Any) -> None:
    files = []
    for i in range(3):
        buf = io.BytesIO()
        Image.new("RGB", (64, 64), (60 * i, 20, 90)).save(buf, "JPEG")
        buf.seek(0)
        files.append((buf, f"q{i}.jpg"))
    resp = api.client.post("/api/v1/queries", content_type="multipart/form-data",
                           data={"catalogue": "demo", "k": "3", "routing": "none", "file": files})
    assert resp.status_code == 202, resp.get_json()
    job_id = resp.get_json()["job_id"]
    tasks.run_query.run(job_id)
    job = api.client.get(f"/api/v1/jobs/{job_id}").get_json()
    assert job["status"] == "succeeded", job
    assert [b["index"] for b in job["batch"]] == [0, 1, 2]
    assert all(len(b["results"]) == 3 and b["results"][0]["key"] for b in job["batch"])
    assert job["model_version"]["id"] == api.version_id
    # each file's answer is the single-file answer for the same image
    files[1][0].seek(0)
    single = api.client.post("/api/v1/queries", content_type="multipart/form-data",
                             data={"catalogue": "demo", "k": "3", "routing": "none", "file": files[1]})
    single_id = single.get_json()["job_id"]
    tasks.run_query.run(single_id)
    one = api.client.get(f"/api/v1/jobs/{single_id}").get_json()
    assert [r["item_id"] for r in one["results"]] == [r["item_id"] for r in job["batch"][1]["results"]]
    too_many = [(io.BytesIO(b"x"), f"{i}.jpg") for i in range(65)]
    resp = api.client.post("/api/v1/queries", content_type="multipart/form-data",
                           data={"catalogue": "demo", "file": too_many})
    assert resp.status_code == 400 and "at most 64 files" in resp.get_json()["error"]["message"]


def _answer_next_query(api: ApiEnv, tasks: Any) -> Any:
    """A thread that runs the worker's task for the next query the API enqueues (as a worker
    would while the submit request is still waiting)."""
    import threading
    import time

    seen = len(api.sent.calls)

    def work() -> None:
        deadline = time.monotonic() + 20
        while len(api.sent.calls) == seen and time.monotonic() < deadline:
            time.sleep(0.01)
        if len(api.sent.calls) > seen:
            tasks.run_query.run(api.sent.calls[seen][1])

    thread = threading.Thread(target=work)
    thread.start()
    return thread


def test_submit_with_wait_answers_in_one_request(api: ApiEnv, tasks: Any) -> None:
    buf = io.BytesIO()
    Image.new("RGB", (64, 64), (200, 40, 90)).save(buf, "JPEG")
    buf.seek(0)
    thread = _answer_next_query(api, tasks)
    resp = api.client.post("/api/v1/queries", content_type="multipart/form-data",
                           data={"catalogue": "demo", "k": "4", "wait": "20", "file": (buf, "q.jpg")})
    thread.join(20)
    body = resp.get_json()
    assert resp.status_code == 200, body
    assert body["status"] == "succeeded" and body["job_id"] == body["id"] and len(body["results"]) == 4
    assert resp.headers["Location"].endswith(f"/api/v1/jobs/{body['id']}")
    # the same answer as polling the job
    assert api.client.get(f"/api/v1/jobs/{body['id']}").get_json()["results"] == body["results"]
    # by item id (JSON body) too
    item_id = body["results"][0]["item_id"]
    thread = _answer_next_query(api, tasks)
    resp = api.client.post("/api/v1/queries", json={"catalogue": "demo", "item_id": item_id, "k": 3, "wait": 20})
    thread.join(20)
    assert resp.status_code == 200 and resp.get_json()["results"][0]["item_id"] == item_id


def test_submit_with_wait_still_queued_answers_202(api: ApiEnv, tasks: Any) -> None:
    import time

    buf = io.BytesIO()
    Image.new("RGB", (64, 64), (10, 140, 90)).save(buf, "JPEG")
    buf.seek(0)
    t0 = time.monotonic()
    resp = api.client.post("/api/v1/queries", content_type="multipart/form-data",
                           data={"catalogue": "demo", "wait": "0.3", "file": (buf, "q.jpg")})
    assert time.monotonic() - t0 >= 0.3  # no worker ran it: the wait ran out
    assert resp.status_code == 202 and set(resp.get_json()) == {"job_id"}
    assert api.client.get(f"/api/v1/jobs/{resp.get_json()['job_id']}").get_json()["status"] == "queued"


def test_submit_with_a_bad_wait_is_refused_and_creates_nothing(api: ApiEnv, tasks: Any) -> None:
    before = len(api.sent.calls)
    for bad in ("-1", "61", "soon"):
        buf = io.BytesIO()
        Image.new("RGB", (64, 64), (1, 2, 3)).save(buf, "JPEG")
        buf.seek(0)
        resp = api.client.post("/api/v1/queries", content_type="multipart/form-data",
                               data={"catalogue": "demo", "wait": bad, "file": (buf, "q.jpg")})
        assert resp.status_code == 422 and "wait" in resp.get_data(as_text=True), bad
    assert len(api.sent.calls) == before


def _count_builds(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The catalogues the holder builds (loads) from now on, in order."""
    from worker import holder as holder_mod

    builds: list[int] = []
    real_build = holder_mod.ModelHolder._build

    def counted(self: Any, catalogue_id: int, *args: Any) -> Any:
        builds.append(catalogue_id)
        return real_build(self, catalogue_id, *args)

    monkeypatch.setattr(holder_mod.ModelHolder, "_build", counted)
    return builds


def test_a_query_worker_loads_the_indexed_catalogues_when_it_starts(api: ApiEnv, tasks: Any,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    from worker import holder as holder_mod
    from worker.celery_app import app

    builds = _count_builds(monkeypatch)
    assert tasks.warm_indexes() == [api.catalogue_id]
    assert builds == [api.catalogue_id]
    snap = holder_mod.get_holder(api.settings).snapshot(api.catalogue_id)
    assert list(snap.engine._indexes) == ["cosine"]  # the catalogue's default metric, built
    job = _submit(api, (200, 30, 30))
    tasks.run_query.run(job)
    assert builds == [api.catalogue_id]  # the query used the warmed index
    with session_scope(api.settings) as session:
        assert services.get_job(session, job).status == "succeeded"
    # only a worker that takes queries warms up (-Q names the queues it consumes)
    queues = app.amqp.queues
    monkeypatch.setattr(queues, "_consume_from", None)  # restored afterwards
    queues.select(["cpu"])
    assert not tasks._serves_queries()
    queues.select(["gpu", "cpu"])
    assert tasks._serves_queries()
    queues._consume_from = None  # no -Q: every queue
    assert tasks._serves_queries()


def test_the_warm_up_loads_the_recently_queried_catalogues_first_within_the_cap() -> None:
    from worker.holder import warm_order

    now = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)
    sizes = {1: 500, 2: 300, 3: 100, 4: 50, 5: 400}
    last = {2: now, 5: now - timedelta(days=3), 1: (now - timedelta(hours=1)).replace(tzinfo=None)}  # 1: naive UTC
    # no cap: everything, recently queried first (2, 1, 5), then the never queried, smallest first
    assert warm_order(sizes, last, 0) == ([2, 1, 5, 4, 3], [])
    # a cap of 900: 2 (300) and 1 (500) fit, 5 (400) does not, 4 (50) still does, then 3 (100) not
    assert warm_order(sizes, last, 900) == ([2, 1, 4], [5, 3])
    assert warm_order({}, last, 10) == ([], [])


def test_a_warm_up_cap_below_the_catalogue_leaves_it_for_its_first_query(api: ApiEnv, tasks: Any,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    from shared.db import stats
    from worker import holder as holder_mod

    with session_scope(api.settings) as session:
        size = {c.catalogue_id: c.indexed for c in stats.catalogue_sizes(session, api.version_id)}[api.catalogue_id]
    assert size > 1
    builds = _count_builds(monkeypatch)
    # (other tests may have indexed more catalogues in this session's database)
    capped = api.settings.model_copy(update={"worker_warm_max_items": size - 1})
    assert api.catalogue_id not in holder_mod.ModelHolder(capped).warm() and api.catalogue_id not in builds
    # the warm-up hands the sizes and the cap to warm_order, and loads what it chooses
    seen: dict[str, Any] = {}

    def choose(sizes: dict[int, int], last: Any, cap: int) -> tuple[list[int], list[int]]:
        seen.update(sizes=sizes, cap=cap)
        return [api.catalogue_id], [c for c in sizes if c != api.catalogue_id]

    monkeypatch.setattr(holder_mod, "warm_order", choose)
    builds.clear()
    assert holder_mod.ModelHolder(capped).warm() == [api.catalogue_id] and builds == [api.catalogue_id]
    assert seen["sizes"][api.catalogue_id] == size and seen["cap"] == size - 1


def test_last_queried_is_the_newest_query_job_per_catalogue(api: ApiEnv, tasks: Any) -> None:
    from shared.db import stats

    first = _submit(api, (10, 200, 10))  # (the session's database may hold older queries)
    second = _submit(api, (10, 10, 200))
    with session_scope(api.settings) as session:
        created = {j: services.get_job(session, j).created_at for j in (first, second)}
        assert stats.last_queried(session)[api.catalogue_id] == max(created.values())
        newest = session.scalars(select(Job.created_at).where(Job.type == "query")
                                 .order_by(Job.created_at.desc()).limit(1)).one()
        assert newest == created[second]  # nothing newer elsewhere: the max is this catalogue's


def test_a_query_waits_for_the_catalogue_being_loaded_instead_of_loading_it_again(
        api: ApiEnv, tasks: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    import threading
    import time

    from worker import holder as holder_mod

    builds: list[int] = []
    started = threading.Event()
    real_build = holder_mod.ModelHolder._build

    def slow(self: Any, catalogue_id: int, *args: Any) -> Any:
        builds.append(catalogue_id)
        started.set()
        time.sleep(0.5)  # a large catalogue
        return real_build(self, catalogue_id, *args)

    monkeypatch.setattr(holder_mod.ModelHolder, "_build", slow)
    holder = holder_mod.get_holder(api.settings)
    warming = threading.Thread(target=holder.warm)
    warming.start()
    assert started.wait(30)
    snap = holder.snapshot(api.catalogue_id)  # arrives during the warm-up's load
    warming.join(30)
    assert builds == [api.catalogue_id]
    assert holder.snapshot(api.catalogue_id) is snap


def test_warm_model_runs_one_forward(api: ApiEnv, tasks: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from shared.vision.embed import Embedder
    from worker import holder as holder_mod

    seen: list[int] = []
    real = Embedder.embed_images

    def counted(self: Embedder, images: Any, *args: Any, **kwargs: Any) -> Any:
        seen.append(len(images))
        return real(self, images, *args, **kwargs)

    monkeypatch.setattr(Embedder, "embed_images", counted)
    holder_mod.get_holder(api.settings).warm_model()
    assert seen == [1]


def test_an_index_asked_for_by_two_threads_is_built_once(api: ApiEnv, tasks: Any,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    import threading
    import time

    import shared.engine as engine_mod
    from worker import holder as holder_mod

    engine = holder_mod.get_holder(api.settings).snapshot(api.catalogue_id).engine
    engine._indexes.clear()
    built: list[str] = []
    real = engine_mod.ShardedIndex

    def slow(*args: Any, **kwargs: Any) -> Any:
        built.append(args[2])
        time.sleep(0.3)
        return real(*args, **kwargs)

    monkeypatch.setattr(engine_mod, "ShardedIndex", slow)
    got: list[Any] = []
    threads = [threading.Thread(target=lambda: got.append(engine.index("euclidean"))) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert built == ["euclidean"]
    assert len(got) == 3 and got[0] is got[1] is got[2]


def test_two_metrics_of_one_catalogue_build_side_by_side(api: ApiEnv, tasks: Any,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """A euclidean query does not wait behind the cosine index's build (minutes at a million
    items): each metric has its own build lock."""
    import threading

    import shared.engine as engine_mod
    from worker import holder as holder_mod

    engine = holder_mod.get_holder(api.settings).snapshot(api.catalogue_id).engine
    engine._indexes.clear()
    cosine_started, release = threading.Event(), threading.Event()
    real = engine_mod.ShardedIndex

    def held(*args: Any, **kwargs: Any) -> Any:
        if args[2] == "cosine":
            cosine_started.set()
            assert release.wait(30)
        return real(*args, **kwargs)

    monkeypatch.setattr(engine_mod, "ShardedIndex", held)
    slow = threading.Thread(target=engine.index, args=("cosine",))
    slow.start()
    try:
        assert cosine_started.wait(30)
        done = threading.Thread(target=engine.index, args=("euclidean",))
        done.start()
        done.join(30)
        assert not done.is_alive() and "euclidean" in engine._indexes  # built while cosine is held
        assert "cosine" not in engine._indexes
    finally:
        release.set()
        slow.join(30)
    assert set(engine._indexes) == {"cosine", "euclidean"}


def test_a_worker_process_starts_even_if_its_warm_up_forward_fails(api: ApiEnv, tasks: Any,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    from worker import holder as holder_mod

    def broken(self: Any) -> None:
        raise RuntimeError("CUDA error: out of memory")

    started: list[bool] = []
    monkeypatch.setattr(holder_mod.ModelHolder, "warm_model", broken)
    monkeypatch.setattr(tasks, "_warm_in_background", lambda: started.append(True))
    tasks._after_fork()  # logs the failure, does not raise
    assert started == [True]  # and the catalogues still load in the background
    monkeypatch.setattr(api.settings, "worker_warm_indexes", False)
    tasks._after_fork()
    assert started == [True]  # FIR_WORKER_WARM_INDEXES=0: no warm-up


def test_a_catalogue_being_loaded_does_not_hold_up_another(api: ApiEnv, tasks: Any,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    import threading

    from worker import holder as holder_mod

    started, release, first_done = threading.Event(), threading.Event(), threading.Event()
    other = api.catalogue_id + 1000
    seen: list[bool] = []
    real_build = holder_mod.ModelHolder._build

    def build(self: Any, catalogue_id: int, *args: Any) -> Any:
        if catalogue_id == other:
            seen.append(first_done.is_set())  # False: built while the large one still loads
            return "other"
        started.set()
        release.wait(10)  # a large catalogue, until the other one is done
        snap = real_build(self, catalogue_id, *args)
        first_done.set()
        return snap

    monkeypatch.setattr(holder_mod.ModelHolder, "_build", build)
    holder = holder_mod.get_holder(api.settings)
    loading = threading.Thread(target=holder.snapshot, args=(api.catalogue_id,))
    loading.start()
    assert started.wait(30)
    assert holder.snapshot(other) == "other"
    release.set()
    loading.join(30)
    assert seen == [False] and first_done.is_set()
