"""Switching the active model while queries run never mixes two models: each answer's
model_version is the one whose embedder made the query vector and whose vectors it searched
(its scores are exactly that version's cosines)."""

from __future__ import annotations

import io
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from sqlalchemy.exc import OperationalError

from shared.db import services
from shared.db.session import session_scope
from tests.api.conftest import ApiEnv


def _second_version(api: ApiEnv, tmp: Path) -> tuple[int, Any]:
    from shared.indexing import index_catalogue
    from shared.vision.embed import Embedder
    from shared.vision.modelfile import file_sha256, load_model, save_model
    from shared.vision.router import Router

    model = load_model(api.trained.model_path)
    gen = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for p in model.net.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * 0.05)
    path = tmp / "m2.pt"
    model_id = save_model(model.net, model.meta, path)
    embedder = Embedder(model.net, "resnet50", model.meta.image_size, device="cpu")
    # its own router: a router is bound to the model whose features it was trained on
    files = sorted(Path(api.trained.catalogue, "train").glob("*/*"))
    feats = embedder.embed_images([Image.open(f).convert("RGB") for f in files])
    router = Router.fit(feats, [f.parent.name for f in files], model_id, "resnet50",
                        grid=[{"svc__C": [1.0], "svc__kernel": ["rbf"], "svc__gamma": ["auto"]}], cv=2)
    router_path = tmp / "r2.joblib"
    router.save(router_path)
    with session_scope(api.settings) as session:
        mv = services.register_model_version(
            session, backbone="resnet50", weights_source="none", labels=model.meta.labels, model_id=model_id,
            checkpoint_path=str(path), checkpoint_sha256=file_sha256(path),
            router_path=str(router_path), router_sha256=file_sha256(router_path))
    index_catalogue(api.settings, api.catalogue_id, mv.id, embedder, router)
    return mv.id, embedder


def _activate(api: ApiEnv, version_id: int) -> None:
    with session_scope(api.settings) as session:
        services.activate_model_version(session, version_id)


def test_model_switch_mid_traffic_never_mixes_models(api: ApiEnv, tmp_path: Path) -> None:
    from shared.vision.embed import Embedder
    from shared.vision.modelfile import load_model
    from worker import holder, tasks
    from worker.celery_app import app

    v1 = api.version_id
    v2, embedder2 = _second_version(api, tmp_path)
    m1 = load_model(api.trained.model_path)
    embedders = {v1: Embedder(m1.net, "resnet50", m1.meta.image_size, device="cpu"), v2: embedder2}
    previous = app.conf.fir_settings
    app.conf.fir_settings = api.settings.model_copy(update={"query_batch_max": 2})
    holder.reset_holder()
    images: dict[int, Image.Image] = {}
    try:
        for n in range(10):
            img = Image.fromarray(np.random.default_rng(n).integers(0, 255, (48, 48, 3), dtype=np.uint8))
            buf = io.BytesIO()
            img.save(buf, "PNG")
            buf.seek(0)
            resp = api.client.post("/api/v1/queries", content_type="multipart/form-data",
                                   data={"catalogue": "demo", "k": "5", "routing": "none", "file": (buf, "q.png")})
            images[int(resp.get_json()["job_id"])] = img
        done = threading.Event()

        def flip() -> None:
            current = v1
            while not done.is_set():
                nxt = v2 if current == v1 else v1
                try:
                    _activate(api, nxt)
                    current = nxt
                except OperationalError:  # SQLite busy beside the worker's writes: try again
                    pass
                time.sleep(0.1)

        flipper = threading.Thread(target=flip)
        flipper.start()
        try:
            for job_id in images:
                tasks.run_query.run(job_id)
        finally:
            done.set()
            flipper.join()
        seen = set()
        for job_id, img in images.items():
            job = api.client.get(f"/api/v1/jobs/{job_id}").get_json()
            assert job["status"] == "succeeded", job
            version = job["model_version"]["id"]
            seen.add(version)
            with session_scope(api.settings) as session:
                ids, vectors, _ = services.load_vectors(session, api.catalogue_id, version)
            q = embedders[version].embed_images([img])[0]
            q = q / np.linalg.norm(q)
            vecs = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
            row = {int(i): n for n, i in enumerate(ids)}
            for hit in job["results"]:
                expected = float(vecs[row[hit["item_id"]]] @ q)
                assert abs(hit["score"] - expected) < 1e-3, (job_id, version, hit, expected)
        assert seen, "no answers"
        print(f"answers by model version: {sorted(seen)}")
    finally:
        app.conf.fir_settings = previous
        holder.reset_holder()
        _activate(api, v1)
