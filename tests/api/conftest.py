"""An API over a migrated SQLite database, with the shared trained model active and the
generated catalogue indexed; jobs are recorded instead of sent to a broker."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest

from shared.config import Settings


@dataclass
class Sent:
    calls: list[tuple[str, int]] = field(default_factory=list)

    def __call__(self, task: str, job_id: int, task_id: str | None = None) -> str:
        self.calls.append((task, job_id))
        return task_id or f"task-{len(self.calls)}"


@dataclass
class ApiEnv:
    client: Any
    settings: Settings
    sent: Sent
    catalogue_id: int
    version_id: int
    trained: Any


@pytest.fixture(scope="session")
def indexed_home(tmp_path_factory: pytest.TempPathFactory, trained: Any) -> tuple[Settings, int, int]:
    from shared.db import services
    from shared.db.migrate import upgrade
    from shared.db.session import session_scope
    from shared.indexing import index_catalogue
    from shared.vision.embed import Embedder
    from shared.vision.modelfile import file_sha256, load_model
    from shared.vision.router import Router

    home = tmp_path_factory.mktemp("api-home")
    settings = Settings(home=home, broker_url="filesystem://", loader_workers=0)
    upgrade(settings.resolved_database_url())
    model = load_model(trained.model_path)
    sha = file_sha256(trained.model_path)
    with session_scope(settings) as session:
        mv = services.register_model_version(
            session, backbone="resnet50", weights_source="none", labels=model.meta.labels,
            model_id=sha[:16], checkpoint_path=str(trained.model_path), checkpoint_sha256=sha,
            router_path=str(trained.router_path), router_sha256=file_sha256(trained.router_path))
        services.activate_model_version(session, mv.id)
        cat = services.create_catalogue(session, "demo", source_kind="folder",
                                        source_path=str(trained.catalogue), root=str(trained.catalogue))
    embedder = Embedder(model.net, "resnet50", model.meta.image_size, device="cpu")
    router = Router.load(trained.router_path)
    index_catalogue(settings, cat.id, mv.id, embedder, router)
    return settings, cat.id, mv.id


@pytest.fixture()
def api(indexed_home: tuple[Settings, int, int], trained: Any) -> ApiEnv:
    from api import create_app

    settings, catalogue_id, version_id = indexed_home
    sent = Sent()
    app = create_app(settings, enqueue=sent)
    app.config["TESTING"] = True
    return ApiEnv(app.test_client(), settings, sent, catalogue_id, version_id, trained)
