"""One typed Settings object, read from ``FIR_*`` environment variables.

Both factories (``api.create_app`` and ``worker.celery_app.make_celery``) and the ``fir``
command line take a :class:`Settings`; nothing else reads the environment.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

REPO_ROOT = Path(__file__).resolve().parent.parent

LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})

Precision = Literal["auto", "fp32", "bf16", "fp16"]


class Settings(BaseSettings):
    """FIR's configuration. Every field can be set as ``FIR_<FIELD NAME>``."""

    model_config = SettingsConfigDict(env_prefix="FIR_", extra="ignore")

    # Where FIR keeps its files (models, routers, feature sets, the SQLite database, images).
    home: Path = Field(default=Path("fir-data"))
    # Real photos used by the tests and benchmarks that need them (the kit's data folder).
    shared_data: Path = Field(default=REPO_ROOT.parent / "shared" / "data")

    database_url: str | None = None  # default: a SQLite file under ``home``
    broker_url: str | None = None  # default: kombu's filesystem transport under ``home``

    # Model
    backbone: str = "resnet50"
    # ``imagenet`` (torchvision's downloader, cached), ``none`` (random init) or a checkpoint path
    weights: str = "imagenet"
    image_size: int = 224
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    precision: Precision = "auto"
    batch_size: int = 16
    loader_workers: int = 1
    # Bulk embedding (indexing) on the CPU in fp32 through torch.compile: 1.15x (ResNet50) to
    # 1.22x (Lite0) the eager speed with the same features, after 11-25 s of compiling per
    # process (bench/RESULTS.md, section 3). ``auto``: when a job has at least
    # ``compile_min_images`` images to embed (about where the compile time pays back);
    # ``on``: always; ``off``: never. Queries always run eager (no compile wait, any batch size).
    compile: Literal["auto", "on", "off"] = "auto"
    compile_min_images: int = 4000
    # Where JPEGs are decoded for indexing and queries: ``cpu`` (Pillow, in the loader processes)
    # or ``device`` (the model's GPU, nvJPEG: 1.6-3.4x the loading throughput on an H200, features
    # at cosine >= 0.9975 of Pillow's; bench/RESULTS.md, section 2c). Set it alike on every worker
    # that embeds for a catalogue. On a CPU ``device`` runs torchvision's decoder (for tests).
    jpeg_decode: Literal["cpu", "device"] = "cpu"

    # Imaging limits
    max_image_pixels: int = 40_000_000
    max_upload_bytes: int = 20 * 1024 * 1024

    # Search and routing
    metric: Literal["cosine", "euclidean"] = "cosine"
    top_k: int = 10
    routing: Literal["label", "svm", "svm-fallback", "none"] = "svm-fallback"
    fallback_threshold: float = 0.6

    seed: int = 0

    # Service
    api_host: str = "127.0.0.1"
    api_port: int = 8000
    # GET /api/v1/jobs/<id>?wait=S holds the request until the job finishes, at most this long
    # (gunicorn runs threaded workers, api/gunicorn_conf.py, so a waiting client holds a thread)
    api_max_wait_s: float = 20.0
    # API keys: auto = required unless the API is bound to 127.0.0.1 / localhost / ::1
    require_keys: Literal["auto", "true", "false"] = "auto"
    nightly_reindex_at: str = "02:00"  # UTC, HH:MM
    housekeeping_every_s: float = 3600.0
    result_ttl_days: float = 7.0
    task_soft_time_limit: int = 3300
    task_hard_time_limit: int = 3600
    # Redis broker: an unacknowledged task (its worker died) is redelivered after this many
    # seconds; default: the hard time limit + 60 s (never while a live worker still runs it).
    broker_visibility_timeout: int | None = None
    query_batch_max: int = 16  # queries waiting together are embedded together
    worker_heartbeat_s: float = 10.0
    # A query worker process runs one forward when it starts and loads every indexed catalogue
    # (vectors, index, graphs) in the background, so the first queries do not wait for them.
    worker_warm_indexes: bool = True
    # At most this many indexed items (all warmed catalogues together) per worker process; the
    # most recently queried catalogues come first, the others load on their first query.
    # 0: no cap. Memory per process is about the items' vectors plus their graphs.
    worker_warm_max_items: int = Field(default=0, ge=0)

    # Search index (shared/search): HNSW graphs (faiss, the ``ann`` extra) for large shards.
    # ``auto``: a graph for each category shard of at least ``search_ann_threshold`` vectors,
    # exact scans below; ``exact``: never; ``hnsw``: every shard. See bench/RESULTS.md.
    search_ann: Literal["auto", "exact", "hnsw"] = "auto"
    search_ann_threshold: int = 20_000
    search_hnsw_m: int = 32
    search_ef_construction: int = 80
    # the graphs of shards over 250,000 vectors are built denser (shared.search.ann.LARGE_SHARD)
    search_large_hnsw_m: int = 48
    search_large_ef_construction: int = 100
    search_ef_search: int = 128
    search_ann_storage: Literal["fp32", "fp16"] = "fp32"  # fp16: half the memory, 20-25 % faster, same recall
    # PCA compaction of the graphs: built over vectors projected to this many dimensions, the
    # ``search_rerank`` best candidates re-scored with the full vectors; 0 turns it off.
    # ``auto``: 256 dimensions, kept for a shard only where the PCA graph finds at least
    # ``search_pca_min_recall`` of the exact top-10 of 200 of the shard's vectors held out of it;
    # the other shards get plain graphs. A PCA graph searches with twice ``search_ef_search``.
    search_pca_dim: int | Literal["auto"] = 0
    search_pca_min_recall: float = Field(default=0.99, gt=0.0, le=1.0)
    search_rerank: int = 64
    # Where the worker keeps the index: ``auto`` = on the model's GPU when it has one (exact
    # top-k there, in ``search_ann_storage`` precision; graphs are not built), else host memory;
    # ``host``; ``cuda`` / ``cuda:N``.
    search_device: str = Field(default="auto", pattern=r"^(auto|host|cuda(:[0-9]+)?)$")

    # Observability (operators): logs, metrics
    log_format: Literal["json", "text"] = "json"  # service processes; `fir` at a terminal logs text
    log_level: str = "INFO"
    # The worker's own Prometheus endpoint (its main process serves every pool process's
    # metrics, prometheus_client's multiprocess mode); 0 turns it off.
    worker_metrics_port: int = 0
    worker_metrics_host: str = "127.0.0.1"

    def resolved_home(self) -> Path:
        return self.home.expanduser().resolve()

    def keys_required(self) -> bool:
        """Whether the API demands a key (``require_keys``; auto: unless bound to loopback)."""
        if self.require_keys != "auto":
            return self.require_keys == "true"
        return self.api_host.strip("[]") not in LOOPBACK_HOSTS

    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{self.resolved_home() / 'fir.db'}"


def get_settings(**overrides: object) -> Settings:
    """Settings from the environment, with explicit overrides applied on top."""
    return Settings(**overrides)  # type: ignore[arg-type]
