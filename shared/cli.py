"""The ``fir`` command line."""

from __future__ import annotations

import functools
import json
import logging
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar, cast

import click

from shared.config import Settings
from shared.errors import FirError

if TYPE_CHECKING:
    from shared.vision.router import Selection

F = TypeVar("F", bound=Callable[..., Any])


def _fail(message: str) -> None:
    click.echo(f"error: {message}", err=True)
    sys.exit(2)


def handle_errors(fn: F) -> F:
    """Domain errors become a one-line message and exit status 2, never a traceback."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except FirError as exc:
            _fail(exc.message)
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            sys.exit(130)

    return wrapper  # type: ignore[return-value]


def dataset_options(fn: F) -> F:
    options = [
        click.option("--dataset", "dataset", type=click.Path(path_type=Path), required=True,
                     help="A FashionIQ folder, a folder per category (optionally under "
                          "train/val/test), or a CSV manifest."),
        click.option("--format", "fmt", type=click.Choice(["auto", "fashioniq", "folder", "manifest"]),
                     default="auto", show_default=True),
        click.option("--path-column", default="path", show_default=True, help="Manifest: image path column."),
        click.option("--category-column", default="category", show_default=True,
                     help="Manifest: category column (empty = left out)."),
        click.option("--split-column", default="split", show_default=True, help="Manifest: split column."),
    ]
    for opt in reversed(options):
        fn = opt(fn)
    return fn


def _read(dataset: Path, fmt: str, path_column: str, category_column: str, split_column: str) -> Any:
    from shared.data.readers import read_dataset

    scan = read_dataset(dataset, fmt, path_column, category_column, split_column)  # type: ignore[arg-type]
    click.echo(scan.summary())
    return scan.require_samples()


class Ctx:
    def __init__(self, settings: Settings) -> None:
        from shared.store.artifacts import ArtifactStore

        self.settings = settings
        self.store = ArtifactStore(settings.resolved_home())


pass_ctx = click.make_pass_decorator(Ctx)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--home", type=click.Path(path_type=Path), default=None,
              help="FIR's folder (default: $FIR_HOME or ./fir-data).")
@click.option("-v", "--verbose", is_flag=True, help="Log more.")
@click.pass_context
def main(ctx: click.Context, home: Path | None, verbose: bool) -> None:
    """FIR: fashion image retrieval. Visual search and de-duplication for catalogues."""
    from shared.logging_setup import configure_logging

    settings = Settings() if home is None else Settings(home=home)
    # People at a terminal read text; the service's processes (`fir up`) log JSON lines.
    configure_logging("text", logging.INFO if verbose else logging.WARNING, process_name="fir")
    ctx.obj = Ctx(settings)


@main.command("train")
@dataset_options
@click.option("--backbone", default=None, help="resnet50 (default) or efficientnet_lite0.")
@click.option("--weights", default=None, help="imagenet, none, or a checkpoint path.")
@click.option("--epochs", type=int, default=10, show_default=True)
@click.option("--lr", type=float, default=1e-3, show_default=True)
@click.option("--body-lr", type=float, default=None, help="Learning rate of the body (default: --lr).")
@click.option("--batch-size", type=int, default=32, show_default=True)
@click.option("--image-size", type=int, default=None)
@click.option("--max-steps", type=int, default=None, help="At most this many batches per epoch.")
@click.option("--resume", type=click.Path(path_type=Path), default=None, help="A last.pt to resume from.")
@click.option("--precision", default="auto", show_default=True)
@pass_ctx
@handle_errors
def train_cmd(c: Ctx, dataset: Path, fmt: str, path_column: str, category_column: str, split_column: str,
              backbone: str | None, weights: str | None, epochs: int, lr: float, body_lr: float | None,
              batch_size: int, image_size: int | None, max_steps: int | None, resume: Path | None,
              precision: str) -> None:
    """Fine-tune the backbone as a classifier over the dataset's categories."""
    from shared.pipeline import train_model
    from shared.vision.training import TrainConfig

    s = c.settings
    scan = _read(dataset, fmt, path_column, category_column, split_column)
    cfg = TrainConfig(backbone=backbone or s.backbone, weights=weights or s.weights, epochs=epochs, lr=lr,
                      body_lr=body_lr, batch_size=batch_size, image_size=image_size or s.image_size,
                      seed=s.seed, workers=s.loader_workers, device=s.device, precision=precision,
                      max_steps_per_epoch=max_steps)
    result = train_model(scan, c.store, cfg, resume=resume)
    click.echo(f"weights used: {result.weights_source}")
    click.echo(f"categories: {', '.join(result.labels)}")
    click.echo(f"best: {json.dumps({k: round(v, 4) for k, v in result.best.items() if isinstance(v, float)})}")
    click.echo(f"model {result.model_id} saved to {result.best_path}")
    ensure_db(c)
    version_id = register_model(c, result.best_path)
    click.echo(f"registered as model version {version_id} (activate it with `fir models activate {version_id}`"
               " after `fir train-router`)")


@main.command("extract")
@dataset_options
@click.option("--model", type=click.Path(path_type=Path), default=None, help="Default: the current model.")
@click.option("--splits", default=None, help="Comma-separated splits to extract (default: all).")
@click.option("--out", type=click.Path(path_type=Path), default=None)
@pass_ctx
@handle_errors
def extract_cmd(c: Ctx, dataset: Path, fmt: str, path_column: str, category_column: str, split_column: str,
                model: Path | None, splits: str | None, out: Path | None) -> None:
    """Compute the pooled feature of every image in a dataset."""
    from shared.pipeline import extract, load_current_model

    scan = _read(dataset, fmt, path_column, category_column, split_column)
    samples = scan.split(*splits.split(",")) if splits else scan.samples
    loaded = load_current_model(c.store, model)
    s = c.settings
    outcome = extract(samples, loaded, c.store, batch_size=s.batch_size, workers=s.loader_workers,
                      device=s.device, precision=s.precision, out=out)
    if outcome.features.bad:
        click.echo(f"{len(outcome.features.bad)} images could not be decoded (left out):")
        for key, reason in list(outcome.features.bad.items())[:10]:
            click.echo(f"  {key}: {reason}")
    click.echo(f"{len(outcome.features)} vectors of {outcome.features.vectors.shape[1]} dimensions "
               f"(model {loaded.model_id}, {outcome.ms_per_image:.1f} ms/image) saved to {outcome.path}")


@main.command("train-router")
@click.option("--features", type=click.Path(path_type=Path), default=None, help="Default: the current features.")
@click.option("--cv", type=int, default=3, show_default=True, help="Cross-validation folds of the grid search.")
@click.option("--select", type=click.Choice(["best", "simplest"]), default="best", show_default=True,
              help="best: the highest cross-validated accuracy. simplest: a linear kernel when it scores "
                   "within one standard error of the best (a much faster router with many training images).")
@click.option("--pca-dim", type=click.IntRange(min=1), default=None,
              help="Project the standardised features on this many principal components before the SVC "
                   "(a smaller, faster router; its cross-validated accuracy is reported).")
@click.option("--out", type=click.Path(path_type=Path), default=None)
@pass_ctx
@handle_errors
def train_router_cmd(c: Ctx, features: Path | None, cv: int, select: str, pca_dim: int | None,
                     out: Path | None) -> None:
    """Train the SVM router (grid search over C, kernel, gamma) on a feature set."""
    from shared.pipeline import train_router
    from shared.vision.features import FeatureSet

    feats = FeatureSet.load(c.store.require("features", features, "run `fir extract` first"))
    router, path = train_router(feats, c.store, cv=cv, seed=c.settings.seed,
                                select=cast("Selection", select), pca_dim=pca_dim)
    cv_text = f", cross-validated accuracy {router.cv_accuracy:.3f}" if router.cv_accuracy is not None else ""
    click.echo(f"router over {', '.join(router.labels)}: {router.params}{cv_text}")
    click.echo(f"saved to {path} (model {router.model_id})")
    ensure_db(c)
    from shared.db import services
    from shared.vision.modelfile import file_sha256

    with db_session(c) as session:
        try:
            mv = services.get_model_version_by_model_id(session, router.model_id)
        except FirError:
            mv = None
        if mv is not None:
            services.set_model_router(session, mv.id, str(path.resolve()), file_sha256(path))
            click.echo(f"attached to model version {mv.id}")


@main.command("query")
@click.argument("image", type=click.Path(path_type=Path))
@click.option("-k", "k", type=int, default=None, help="How many results (default 10).")
@click.option("--metric", type=click.Choice(["cosine", "euclidean"]), default=None)
@click.option("--routing", type=click.Choice(["label", "svm", "svm-fallback", "none"]), default=None)
@click.option("--category", default=None, help="The query's category (routing 'label').")
@click.option("--threshold", type=float, default=None, help="svm-fallback: below this, search two categories.")
@click.option("--model", type=click.Path(path_type=Path), default=None)
@click.option("--features", type=click.Path(path_type=Path), default=None)
@click.option("--router", type=click.Path(path_type=Path), default=None)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@pass_ctx
@handle_errors
def query_cmd(c: Ctx, image: Path, k: int | None, metric: str | None, routing: str | None,
              category: str | None, threshold: float | None, model: Path | None, features: Path | None,
              router: Path | None, as_json: bool) -> None:
    """Find the catalogue images most similar to IMAGE."""
    from shared.engine import RetrievalEngine
    from shared.imaging import validate_image
    from shared.search.ann import IndexOptions
    from shared.vision.embed import pick_device

    s = c.settings
    routing = routing or ("label" if category else s.routing)
    validate_image(image, max_pixels=s.max_image_pixels)  # a bad file fails before the model loads
    model_path = c.store.require("model", model, "train one with `fir train`")
    features_path = c.store.require("features", features, "run `fir extract` first")
    router_path: Path | None = None
    if routing in ("svm", "svm-fallback"):
        router_path = c.store.require("router", router, "run `fir train-router` first")
    engine = RetrievalEngine.from_files(model_path, features_path, router_path, s.device, s.precision,
                                        IndexOptions.from_settings(s, pick_device(s.device)),
                                        max_pixels=s.max_image_pixels)
    # decoded as `fir extract` decodes the catalogue (and the worker a query): a catalogue photo
    # finds its own vector
    answer = engine.query_paths([image], k=k or s.top_k, metric=metric or s.metric, routing=routing,
                                 categories=[category] if category else None,
                                 threshold=threshold if threshold is not None else s.fallback_threshold)[0]
    if as_json:
        click.echo(json.dumps({
            "model_id": answer.model_id, "route": answer.route, "probabilities": answer.probabilities,
            "timings_ms": answer.timings_ms,
            "results": [m.__dict__ for m in answer.matches],
        }, indent=2))
        return
    probs = ", ".join(f"{lab} {p:.2f}" for lab, p in sorted(answer.probabilities.items(), key=lambda x: -x[1]))
    click.echo(f"model {answer.model_id}; searched: {', '.join(answer.route) if answer.route else 'whole catalogue'}"
               + (f" (router: {probs})" if probs else ""))
    for m in answer.matches:
        click.echo(f"{m.rank:4d}  {m.score:8.4f}  {m.category:10s} {m.key}")


@main.command("evaluate")
@dataset_options
@click.option("--gallery-splits", default="train,val", show_default=True)
@click.option("--query-split", default="test", show_default=True)
@click.option("--k", "ks", default="100,1000,10000", show_default=True, help="Comma-separated cut-offs.")
@click.option("--metric", type=click.Choice(["cosine", "euclidean"]), default=None)
@click.option("--routing", "modes", default="label,svm,svm-fallback,none", show_default=True)
@click.option("--model", type=click.Path(path_type=Path), default=None)
@click.option("--features", type=click.Path(path_type=Path), default=None,
              help="Gallery features (default: the current ones if they hold the gallery splits; else extracted).")
@click.option("--router", type=click.Path(path_type=Path), default=None)
@click.option("--out", type=click.Path(path_type=Path), default=None)
@pass_ctx
@handle_errors
def evaluate_cmd(c: Ctx, dataset: Path, fmt: str, path_column: str, category_column: str, split_column: str,
                 gallery_splits: str, query_split: str, ks: str, metric: str | None, modes: str,
                 model: Path | None, features: Path | None, router: Path | None, out: Path | None) -> None:
    """The study's evaluation: mAP, precision, router accuracy and query time per routing mode."""
    scan = _read(dataset, fmt, path_column, category_column, split_column)
    paths = run_evaluation(c, scan, gallery_splits.split(","), query_split, [int(x) for x in ks.split(",")],
                           metric or c.settings.metric, modes.split(","), model, features, router, out)
    click.echo(paths["markdown"].read_text())
    click.echo(f"report: {paths['markdown']}\n        {paths['json']}\n        {paths['grid']}")


def run_evaluation(c: Ctx, scan: Any, gallery_splits: list[str], query_split: str, ks: list[int], metric: str,
                   modes: list[str], model: Path | None, features: Path | None, router: Path | None,
                   out: Path | None) -> dict[str, Path]:
    from shared.errors import EmptyDataset
    from shared.evaluation.evaluate import evaluate_retrieval
    from shared.evaluation.report import write_report
    from shared.pipeline import extract, load_current_model
    from shared.vision.features import FeatureSet
    from shared.vision.router import Router

    s = c.settings
    loaded = load_current_model(c.store, model)
    gallery_samples = scan.split(*gallery_splits)
    query_samples = scan.split(query_split)
    if not query_samples:
        raise EmptyDataset(f"no query images in split {query_split!r} of {scan.source}")
    gallery: FeatureSet | None = None
    feats_path = features or (Path(c.store.current()["features"]) if "features" in c.store.current() else None)
    if feats_path is not None and feats_path.is_file():
        candidate = FeatureSet.load(feats_path)
        if candidate.model_id == loaded.model_id:
            candidate = candidate.by_split(*gallery_splits)
            if len(candidate) >= len(gallery_samples) * 0.9 and len(candidate) > 0:
                gallery = candidate
        elif features is not None:
            candidate.check_model(loaded.model_id)
    if gallery is None:
        gallery = extract(gallery_samples, loaded, c.store, name="gallery", batch_size=s.batch_size,
                          workers=s.loader_workers, device=s.device, precision=s.precision).features
    queries = extract(query_samples, loaded, c.store, name="queries", batch_size=s.batch_size,
                      workers=s.loader_workers, device=s.device, precision=s.precision, make_current=False)
    rtr: Router | None = None
    router_path = router or (Path(c.store.current()["router"]) if "router" in c.store.current() else None)
    if router_path is not None and router_path.is_file():
        rtr = Router.load(router_path)
        if rtr.model_id != loaded.model_id:
            if router is not None:
                rtr.check_model(loaded.model_id)
            rtr = None
    if rtr is None and any(m.startswith("svm") for m in modes):
        from shared.pipeline import train_router

        rtr, _ = train_router(gallery, c.store, seed=s.seed)
    report = evaluate_retrieval(gallery, queries.features, rtr, modes=tuple(modes), ks=tuple(ks), metric=metric,
                                threshold=s.fallback_threshold,
                                extraction_ms=single_image_ms(loaded, query_samples, s), progress=True)
    report.meta["weights_source"] = loaded.meta.weights_source
    report.meta["model_metrics"] = {k: v for k, v in loaded.meta.metrics.items() if k != "history"}
    written = write_report(report, out or c.store.new_report_dir())
    return {"markdown": written["markdown"], "json": written["json"], "grid": written["grid"]}


def single_image_ms(model: Any, samples: list[Any], s: Settings, n: int = 8) -> float:
    """Warm, one-image-at-a-time feature extraction (decode included), in ms per image."""
    from shared.imaging import load_image
    from shared.pipeline import embedder_for

    embedder = embedder_for(model, s.device, s.precision)
    paths = [x.path for x in samples[: n + 1]]
    embedder.embed_images([load_image(paths[0])])  # warm-up
    t0 = time.perf_counter()
    for p in paths[1:] or paths:
        embedder.embed_images([load_image(p)])
    return (time.perf_counter() - t0) * 1000 / len(paths[1:] or paths)


@main.command("demo")
@click.option("--catalogue", type=click.Path(path_type=Path), default=None,
              help="A folder per category (optionally under train/val/test). Default: a generated one.")
@click.option("--epochs", type=int, default=3, show_default=True)
@click.option("--image-size", type=int, default=96, show_default=True)
@click.option("--weights", default="none", show_default=True,
              help="none (offline), imagenet (downloads), or a checkpoint path.")
@click.option("--backbone", default=None)
@click.option("--max-steps", type=int, default=None)
@pass_ctx
@handle_errors
def demo_cmd(c: Ctx, catalogue: Path | None, epochs: int, image_size: int, weights: str,
             backbone: str | None, max_steps: int | None) -> None:
    """Run the whole pipeline (train, extract, router, evaluate) on a small catalogue."""
    from shared.data.readers import read_folder
    from shared.data.synthetic import generate_catalogue
    from shared.pipeline import extract, train_model, train_router
    from shared.vision.training import TrainConfig

    s = c.settings
    t0 = time.perf_counter()
    if catalogue is None:
        catalogue = c.store.root / "demo-catalogue"
        if not (catalogue / "train").is_dir():
            click.echo(f"generating a demo catalogue in {catalogue}")
            generate_catalogue(catalogue, size=max(96, image_size))
    scan = read_folder(catalogue)
    click.echo(scan.summary())
    scan.require_samples()
    if not scan.split("test"):
        # A catalogue without split folders: hold out every 5th image of each category as queries.
        from dataclasses import replace

        ordered = sorted(scan.samples, key=lambda x: (str(x.category), x.key))
        scan.samples = [replace(x, split="test" if i % 5 == 4 else (x.split or "train"))
                        for i, x in enumerate(ordered)]
    cfg = TrainConfig(backbone=backbone or s.backbone, weights=weights, epochs=epochs, image_size=image_size,
                      batch_size=16, seed=s.seed, workers=s.loader_workers, device=s.device,
                      max_steps_per_epoch=max_steps)
    click.echo(f"1/4 training {cfg.backbone} ({epochs} epochs at {image_size}px)")
    result = train_model(scan, c.store, cfg)
    click.echo(f"    weights used: {result.weights_source}; model {result.model_id}")
    from shared.vision.modelfile import load_model

    loaded = load_model(result.best_path)
    gallery_samples = [x for x in scan.samples if x.split in ("train", "val", None)]
    click.echo(f"2/4 extracting features of {len(gallery_samples)} catalogue images")
    gallery = extract(gallery_samples, loaded, c.store, batch_size=s.batch_size, workers=s.loader_workers,
                      device=s.device, precision=s.precision).features
    click.echo("3/4 training the SVM router")
    router, _ = train_router(gallery, c.store, seed=s.seed)
    click.echo(f"    {router.params}")
    click.echo("4/4 evaluating")
    ks = [10, 100, 1000]
    paths = run_evaluation(c, scan, ["train", "val"], "test", ks, s.metric,
                           ["label", "svm", "svm-fallback", "none"], result.best_path, None, None, None)
    click.echo(paths["markdown"].read_text())
    click.echo(f"done in {time.perf_counter() - t0:.0f} s")
    click.echo(f"report: {paths['markdown']}")
    click.echo(f"        {paths['json']}")
    click.echo(f"        {paths['grid']}")
    click.echo(f"try:    fir --home {c.store.root} query {scan.split('test')[0].path}")





# -- the database and the service -----------------------------------------------------------
def db_session(c: Ctx) -> Any:
    from shared.db.session import session_scope

    return session_scope(c.settings)


def register_model(c: Ctx, model_path: Path, router_path: Path | None = None) -> int:
    """Record a model file (and its router) as a model version in the database."""
    from shared.db import services
    from shared.vision.modelfile import file_sha256, read_meta

    meta, _ = read_meta(model_path)
    sha = file_sha256(model_path)
    with db_session(c) as session:
        mv = services.register_model_version(
            session, backbone=meta.backbone, weights_source=meta.weights_source, labels=meta.labels,
            model_id=sha[:16], checkpoint_path=str(model_path.resolve()), checkpoint_sha256=sha,
            training_config=meta.config, metrics={k: v for k, v in meta.metrics.items() if k != "history"},
            embedding_dim=None)
        if router_path is not None:
            services.set_model_router(session, mv.id, str(router_path.resolve()), file_sha256(router_path))
        return mv.id


def ensure_db(c: Ctx) -> None:
    from shared.db.migrate import upgrade

    upgrade(c.settings.resolved_database_url())


@main.group("db")
def db_group() -> None:
    """The database: create or migrate it."""


@db_group.command("upgrade")
@click.option("--revision", default="head", show_default=True)
@pass_ctx
@handle_errors
def db_upgrade(c: Ctx, revision: str) -> None:
    """Create or migrate the database to the latest schema."""
    from shared.db.migrate import current, upgrade

    url = c.settings.resolved_database_url()
    upgrade(url, revision)
    click.echo(f"database at revision {current(url)} ({_safe_url(url)})")


def _safe_url(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


@main.group("keys")
def keys_group() -> None:
    """API keys: scoped to a catalogue (read, write, admin) or global (admin)."""


@keys_group.command("create")
@click.option("--catalogue", default=None, help="Catalogue id or name (omit for a global admin key).")
@click.option("--scope", type=click.Choice(["read", "write", "admin"]), required=True)
@click.option("--name", default="", help="A note saying whose key this is.")
@pass_ctx
@handle_errors
def keys_create(c: Ctx, catalogue: str | None, scope: str, name: str) -> None:
    """Create a key and print its token once (only its sha256 is stored)."""
    from shared.db import apikeys

    ensure_db(c)
    with db_session(c) as session:
        catalogue_id = None
        if catalogue is not None:
            from shared.db import services

            found = (services.get_catalogue(session, int(catalogue)) if catalogue.isdigit()
                     else services.get_catalogue_by_name(session, catalogue))
            catalogue_id = int(found.id)
        key_id, token = apikeys.create_key(session, scope, catalogue_id, name)
    where = f"catalogue {catalogue_id}" if catalogue_id is not None else "every catalogue"
    click.echo(f"key {key_id}: {scope} on {where}. The token is shown only now; keep it safe:", err=True)
    click.echo(token)


@keys_group.command("list")
@pass_ctx
@handle_errors
def keys_list(c: Ctx) -> None:
    """The keys (id, prefix, scope, catalogue, revoked); never the tokens."""
    from shared.db import apikeys

    with db_session(c) as session:
        for k in apikeys.list_keys(session):
            click.echo(f"{k.id}\t{k.prefix}...\t{k.scope}\t{k.catalogue_id if k.catalogue_id else 'global'}\t"
                       f"{'revoked' if k.revoked_at else 'active'}\t{k.name}")


@keys_group.command("revoke")
@click.argument("key_id", type=int)
@pass_ctx
@handle_errors
def keys_revoke(c: Ctx, key_id: int) -> None:
    """Revoke a key: it is refused from the next request on."""
    from shared.db import apikeys

    with db_session(c) as session:
        apikeys.revoke(session, key_id)
    click.echo(f"key {key_id} revoked")


@main.command("backup")
@click.argument("out", type=click.Path(path_type=Path))
@click.option("--no-db", is_flag=True, help="Only the artifact store (PostgreSQL: use pg_dump for the database).")
@pass_ctx
@handle_errors
def backup_cmd(c: Ctx, out: Path, no_db: bool) -> None:
    """Back up the SQLite database (VACUUM INTO, safe while FIR runs) and FIR_HOME into OUT (.tar.gz)."""
    from shared.backup import backup_home

    click.echo(f"backup written to {backup_home(c.settings, out, include_db=not no_db)}")


@main.command("restore")
@click.argument("archive", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--yes", is_flag=True, help="Do not ask; FIR's processes must be stopped.")
@pass_ctx
@handle_errors
def restore_cmd(c: Ctx, archive: Path, yes: bool) -> None:
    """Restore a `fir backup` archive over FIR_HOME (stop `fir up` first)."""
    from shared.backup import restore_home

    if not yes:
        click.confirm(f"replace the database and files under {c.settings.resolved_home()}?", abort=True)
    restore_home(c.settings, archive)
    click.echo(f"restored {archive} into {c.settings.resolved_home()}")


@main.group("models")
def models_group() -> None:
    """Model versions: list, register, activate, roll back."""


@models_group.command("list")
@pass_ctx
@handle_errors
def models_list(c: Ctx) -> None:
    from shared.db import services

    ensure_db(c)
    with db_session(c) as session:
        versions = services.list_model_versions(session)
    if not versions:
        click.echo("no model versions; `fir train` then `fir models activate`")
    for v in versions:
        acc = (v.metrics or {}).get("val_accuracy")
        click.echo(f"{v.id:4d}  {v.state:8s} {v.model_id}  {v.backbone:18s} router: {'yes' if v.router_path else 'no '}"
                   f"  val accuracy: {acc if acc is not None else '-'}  weights: {v.weights_source}")


@models_group.command("activate")
@click.argument("model", required=False)
@pass_ctx
@handle_errors
def models_activate(c: Ctx, model: str | None) -> None:
    """Make MODEL (a version id, a model id, or by default the current model) the active one.
    Workers follow the switch without a restart."""
    from shared.db import services

    ensure_db(c)
    if model is None:
        path = c.store.require("model", None, "train one with `fir train`")
        router = c.store.current().get("router")
        from shared.vision.router import Router

        router_path = Path(router) if router and Path(router).is_file() else None
        version_id = register_model(c, path, router_path)
        if router_path is not None:
            from shared.vision.modelfile import file_sha256

            Router.load(router_path, expect_model_id=file_sha256(path)[:16])
    else:
        with db_session(c) as session:
            version_id = (int(model) if model.isdigit() and len(model) < 8
                          else services.get_model_version_by_model_id(session, model).id)
    with db_session(c) as session:
        mv = services.activate_model_version(session, version_id)
    click.echo(f"active model version {mv.id} ({mv.model_id}, {mv.backbone})")


@models_group.command("rollback")
@pass_ctx
@handle_errors
def models_rollback(c: Ctx) -> None:
    """Re-activate the previously active model version."""
    from shared.db import services

    with db_session(c) as session:
        mv = services.rollback_model_version(session)
    click.echo(f"active model version {mv.id} ({mv.model_id})")


@main.command("index")
@click.argument("catalogue_dir", type=click.Path(path_type=Path))
@click.option("--name", default=None, help="Catalogue name (default: the folder's name).")
@click.option("--full", is_flag=True, help="Re-embed everything, not only new and changed images.")
@pass_ctx
@handle_errors
def index_cmd(c: Ctx, catalogue_dir: Path, name: str | None, full: bool) -> None:
    """Index a catalogue folder (or CSV manifest) incrementally with the active model."""
    from shared.db import services
    from shared.errors import NotFound
    from shared.indexing import index_catalogue
    from shared.vision.embed import Embedder
    from shared.vision.modelfile import load_model
    from shared.vision.router import Router

    if not catalogue_dir.exists():
        raise NotFound(f"catalogue {catalogue_dir} does not exist")
    ensure_db(c)
    s = c.settings
    kind = "manifest" if catalogue_dir.is_file() else "folder"
    with db_session(c) as session:
        active = services.get_active_model_version(session)
        if active is None:
            raise NotFound("no active model version: `fir train`, `fir train-router`, then `fir models activate`")
        cat, _ = services.get_or_create_catalogue(
            session, name or catalogue_dir.resolve().name, source_kind=kind,
            source_path=str(catalogue_dir.resolve()),
            root=str(catalogue_dir.resolve() if kind == "folder" else catalogue_dir.resolve().parent))
    model = load_model(Path(str(active.checkpoint_path)))
    router = Router.load(Path(active.router_path), expect_model_id=model.model_id) if active.router_path else None
    embedder = Embedder(model.net, model.meta.backbone, model.meta.image_size, device=s.device,
                        precision=s.precision, max_pixels=s.max_image_pixels, jpeg_decode=s.jpeg_decode)
    report = index_catalogue(s, cat.id, active.id, embedder, router, full=full, show_bar=True)
    click.echo(f"catalogue {cat.name} (id {cat.id}), model version {active.id}: {report.summary()}")
    for key, reason in list(report.bad_reasons.items())[:10]:
        click.echo(f"  bad: {key}: {reason}")


@main.group("vectors")
def vectors_group() -> None:
    """Export or import a catalogue's vectors as a portable file (.npz)."""


@vectors_group.command("export")
@click.argument("catalogue")
@click.option("--out", type=click.Path(path_type=Path), required=True)
@click.option("--model-version", type=int, default=None, help="Default: the active one.")
@pass_ctx
@handle_errors
def vectors_export(c: Ctx, catalogue: str, out: Path, model_version: int | None) -> None:
    """Write CATALOGUE's vectors (by name) with item keys, categories and the model id."""
    from shared.db import services
    from shared.errors import NotFound
    from shared.vision.features import FeatureSet

    ensure_db(c)
    with db_session(c) as session:
        cat = services.get_catalogue_by_name(session, catalogue)
        mv = (services.get_model_version(session, model_version) if model_version is not None
              else services.get_active_model_version(session))
        if mv is None:
            raise NotFound("no active model version; name one with --model-version")
        ids, vectors, categories = services.load_vectors(session, cat.id, mv.id)
        infos = services.get_items(session, ids.tolist())
    feats = FeatureSet(vectors=vectors, keys=[infos[int(i)].external_key for i in ids], categories=list(categories),
                       splits=[""] * len(ids), paths=[infos[int(i)].location or "" for i in ids],
                       model_id=str(mv.model_id), backbone=mv.backbone)
    feats.save(out)
    click.echo(f"{len(feats)} vectors of catalogue {cat.name} (model {mv.model_id}) written to {out}")


@vectors_group.command("import")
@click.argument("catalogue")
@click.argument("file", type=click.Path(path_type=Path))
@pass_ctx
@handle_errors
def vectors_import(c: Ctx, catalogue: str, file: Path) -> None:
    """Load vectors from FILE into CATALOGUE, matching items by key; the file's model must be
    registered (`fir models list`). Workers pick them up (the index generation is bumped)."""
    from shared.db import listing, services
    from shared.vision.features import FeatureSet

    feats = FeatureSet.load(file)
    ensure_db(c)
    with db_session(c) as session:
        cat = services.get_catalogue_by_name(session, catalogue)
        mv = services.get_model_version_by_model_id(session, feats.model_id)
        by_key = {i.external_key: i.id for i in listing.list_items(session, cat.id, limit=10_000_000)}
        rows = [n for n, key in enumerate(feats.keys) if key in by_key]
        services.write_embeddings(session, mv.id, [by_key[feats.keys[n]] for n in rows], feats.vectors[rows])
        generation = services.bump_index_generation(session, cat.id, mv.id)
    click.echo(f"{len(rows)} of {len(feats)} vectors imported into {cat.name} for model version {mv.id} "
               f"({len(feats) - len(rows)} keys not in the catalogue); index generation {generation}")


@main.command("status")
@click.option("--json", "as_json", is_flag=True, help="Print JSON (for scripts).")
@pass_ctx
@handle_errors
def status_cmd(c: Ctx, as_json: bool) -> None:
    """Catalogues, queued and running jobs, live workers."""
    from datetime import datetime

    from shared.db import heartbeat, listing, services, stats
    from shared.db.models import utcnow

    ensure_db(c)
    now = utcnow()
    with db_session(c) as session:
        active = services.get_active_model_version(session)
        sizes = stats.catalogue_sizes(session, active.id if active else None)
        by_category = {size.catalogue_id: listing.count_by_category(session, size.catalogue_id) for size in sizes}
        depth = stats.queue_depth(session)
        jobs = {status: services.list_jobs(session, status=status, limit=20) for status in ("queued", "running")}
        totals = {status: sum(n for (_, st), n in stats.job_counts(session).items() if st == status)
                  for status in ("queued", "running")}
        workers = heartbeat.recent(session, max_age_s=max(30.0, 3 * c.settings.worker_heartbeat_s))
    if as_json:
        click.echo(json.dumps({
            "active_model": ({"id": active.id, "model_id": active.model_id, "backbone": active.backbone}
                             if active else None),
            "catalogues": [{"id": z.catalogue_id, "name": z.name, "items": z.items_by_status, "indexed": z.indexed,
                            "by_category": by_category[z.catalogue_id]} for z in sizes],
            "queue_depth": depth, "jobs": {st: [{"id": j.id, "type": j.type, "catalogue_id": j.catalogue_id,
                                                "done": j.progress_done, "total": j.progress_total}
                                               for j in js] for st, js in jobs.items()},
            "workers": workers,
        }, indent=2, default=str))
        return

    def ago(when: Any) -> str:
        seconds = max(0.0, (now - when).total_seconds()) if when is not None else 0.0
        return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.0f} min"

    click.echo(f"active model: {f'version {active.id} ({active.model_id}, {active.backbone})' if active else 'none'}")
    click.echo(f"catalogues: {len(sizes)}")
    for z in sizes:
        st = z.items_by_status
        cats = ", ".join(f"{k} {v}" for k, v in sorted(by_category[z.catalogue_id].items()))
        click.echo(f"  {z.catalogue_id:4d} {z.name}: {st.get('active', 0)} active, {st.get('removed', 0)} removed, "
                   f"{st.get('bad', 0)} bad; {z.indexed} indexed" + (f"; {cats}" if cats else ""))
    for status in ("queued", "running"):
        shown = jobs[status]
        line = f"{status} jobs: {totals[status]}"
        if status == "queued" and depth:
            line += " (" + ", ".join(f"{t} {n}" for t, n in sorted(depth.items())) + ")"
        click.echo(line)
        for j in shown:
            pct = f" ({100 * j.progress_done / j.progress_total:.0f}%)" if j.progress_total else ""
            since = j.started_at if status == "running" else j.created_at
            click.echo(f"  #{j.id} {j.type}" + (f" catalogue {j.catalogue_id}" if j.catalogue_id else "")
                       + f"  {j.progress_done}/{j.progress_total if j.progress_total is not None else '?'}{pct}"
                       + f"  {'running' if status == 'running' else 'waiting'} for {ago(since)}")
        if totals[status] > len(shown):
            click.echo(f"  ... and {totals[status] - len(shown)} more")
    click.echo(f"live workers: {len(workers)}")
    for w in workers:
        seen = datetime.fromisoformat(w["last_seen"])
        click.echo(f"  {w['name']} (queues {w['queues'] or '?'}) on {w['host']} pid {w['pid']}, seen {ago(seen)} ago")


@main.command("up")
@click.option("--catalogue", type=click.Path(path_type=Path), default=None,
              help="A catalogue folder to serve (default: a generated demo catalogue).")
@click.option("--host", default=None)
@click.option("--port", type=int, default=None)
@click.option("--weights", default="none", show_default=True,
              help="For the first model, when none is active: none, imagenet or a checkpoint.")
@click.option("--epochs", type=int, default=2, show_default=True, help="For the first model.")
@pass_ctx
@handle_errors
def up_cmd(c: Ctx, catalogue: Path | None, host: str | None, port: int | None, weights: str, epochs: int) -> None:
    """Set up and start FIR on this machine: database, a model, an indexed catalogue, then the
    worker, beat and the API as processes. Ctrl-C stops them all."""
    from shared.db import services
    from shared.service import Supervisor

    s = c.settings
    if host:
        s.api_host = host
    if port:
        s.api_port = port
    ensure_db(c)
    click.echo(f"database: {_safe_url(s.resolved_database_url())}")
    with db_session(c) as session:
        active = services.get_active_model_version(session)
    if catalogue is None:
        from shared.data.synthetic import generate_catalogue

        catalogue = c.store.root / "demo-catalogue"
        if not (catalogue / "train").is_dir():
            click.echo(f"generating a demo catalogue in {catalogue}")
            generate_catalogue(catalogue, size=96)
    if active is None:
        click.echo("no active model: training a first one (small, quick; `fir train` makes better ones)")
        ctx = click.get_current_context()
        ctx.invoke(train_cmd, dataset=catalogue, fmt="auto", path_column="path", category_column="category",
                   split_column="split", backbone=None, weights=weights, epochs=epochs, lr=1e-3, body_lr=None,
                   batch_size=16, image_size=96, max_steps=None, resume=None, precision="auto")
        ctx.invoke(extract_cmd, dataset=catalogue, fmt="auto", path_column="path", category_column="category",
                   split_column="split", model=None, splits=None, out=None)
        ctx.invoke(train_router_cmd, features=None, cv=3, out=None)
        ctx.invoke(models_activate, model=None)
    ctx = click.get_current_context()
    ctx.invoke(index_cmd, catalogue_dir=catalogue, name=None, full=False)
    # Ctrl-C and SIGTERM stop every process, also where SIGINT was inherited as ignored (a
    # shell's background job) or SIGTERM comes from a process manager.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    sup = Supervisor(s, log_dir=c.store.root / "logs")
    sup.start()
    url = f"http://{s.api_host}:{s.api_port}"
    if s.keys_required():
        click.echo("API keys are required (create one with `fir keys create --catalogue NAME --scope read`)")
    else:
        click.echo(f"API keys are NOT required: FIR_REQUIRE_KEYS={s.require_keys}, bound to {s.api_host}"
                   + ("" if s.api_host in ("127.0.0.1", "localhost", "::1") else " (anyone who reaches it can use FIR)"))
    click.echo(f"FIR is starting at {url}  (API docs: {url}/api/v1/docs; logs in {c.store.root / 'logs'})")
    click.echo("Ctrl-C stops every process.")
    try:
        while all(sup.alive().values()):
            time.sleep(1.0)
        dead = [n for n, ok in sup.alive().items() if not ok]
        click.echo(f"process stopped unexpectedly: {', '.join(dead)} (see its log)", err=True)
        sup.stop()
        sys.exit(1)
    except KeyboardInterrupt:
        click.echo("stopping...")
        sup.stop()
        click.echo("stopped")


# -- de-duplication ---------------------------------------------------------------------------
class _DedupGroup(click.Group):
    """``fir dedup CATALOGUE`` runs a dedup; ``fir dedup calibrate|export|decide ...`` are the
    other commands (a catalogue named like one of them: ``fir dedup run NAME``)."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and args[0] not in ("-h", "--help"):
            args = ["run", *args]
        return super().parse_args(ctx, args)


@main.group("dedup", cls=_DedupGroup)
def dedup_group() -> None:
    """Find the same product twice in a catalogue: `fir dedup CATALOGUE`, then review, export,
    decide; `fir dedup calibrate` measures precision and recall and suggests thresholds."""


def _catalogue_id(session: Any, ref: str) -> int:
    from shared.db import services
    from shared.errors import NotFound

    if ref.isdigit():
        try:
            return int(services.get_catalogue(session, int(ref)).id)
        except NotFound:
            pass
    return int(services.get_catalogue_by_name(session, ref).id)


@dedup_group.command("run")
@click.argument("catalogue")
@click.option("--category", default=None, help="Only this category (default: every category).")
@click.option("--threshold", type=float, default=None,
              help="Cosine similarity from which two items are near-duplicates (default 0.9, or the "
                   "file's default with --thresholds).")
@click.option("--thresholds", "thresholds_file", type=click.Path(path_type=Path, dir_okay=False), default=None,
              help="thresholds.json from `fir dedup calibrate`: a threshold per category.")
@click.option("--only-new", is_flag=True, help="Only items new or changed since the previous run, against the rest.")
@click.option("--since", default=None, help="With --only-new: new since this ISO time instead.")
@click.option("--use-phash", is_flag=True, help="Near pairs must also be close by perceptual hash.")
@click.option("--phash-max-distance", type=int, default=16, show_default=True)
@click.option("--keep", "keep_rule", type=click.Choice(["oldest", "largest", "most_complete"]),
              default="oldest", show_default=True, help="Which item of a group to suggest keeping.")
@click.option("--show", type=int, default=10, show_default=True, help="Print this many groups.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@pass_ctx
@handle_errors
def dedup_run_cmd(c: Ctx, catalogue: str, category: str | None, threshold: float | None,
                  thresholds_file: Path | None, only_new: bool, since: str | None, use_phash: bool,
                  phash_max_distance: int, keep_rule: str, show: int, as_json: bool) -> None:
    """Find exact and near-duplicate groups in CATALOGUE (an id or a name), in this process,
    with the active model's vectors; the run is stored for review."""
    from tqdm import tqdm

    from shared.db import dedup as store
    from shared.db import services
    from shared.dedup.calibrate import load_thresholds
    from shared.dedup.run import DedupRequest, run_dedup

    ensure_db(c)
    per_category: dict[str, float] = {}
    if thresholds_file is not None:
        default, per_category = load_thresholds(thresholds_file)
        threshold = threshold if threshold is not None else default
    request = DedupRequest(category=category, only_new=only_new, since=since, threshold=threshold,
                           thresholds=per_category, use_phash=use_phash,
                           phash_max_distance=phash_max_distance, keep_rule=keep_rule)
    with db_session(c) as session:
        catalogue_id = _catalogue_id(session, catalogue)
    bar = tqdm(total=0, desc="dedup", unit="item", leave=False, disable=as_json)

    def progress(done: int, total: int) -> bool:
        bar.total = total
        bar.n = done
        bar.refresh()
        return True

    try:
        report = run_dedup(c.settings, catalogue_id, request, progress=progress)
    finally:
        bar.close()
    if as_json:
        click.echo(json.dumps(report.as_dict(), indent=2, default=str))
        return
    click.echo(report.summary())
    with db_session(c) as session:
        groups = store.page_dedup_groups(session, report.run_id, limit=max(show, 0))
        items = services.get_items(session, [m.item_id for g in groups for m in g.members])
    for g in groups:
        tag = " new" if g.new_since_previous else ""
        click.echo(f"group {g.id} {g.kind} {g.category or '-'} size {g.size}{tag}; keep item {g.representative_item_id}")
        for m in g.members:
            evidence = ("same bytes" if m.hash_equal else
                        f"cos {m.cosine:.3f}" if m.cosine is not None else "cos -")
            if m.phash_distance is not None:
                evidence += f", phash {m.phash_distance}"
            mark = "*" if m.item_id == g.representative_item_id else " "
            click.echo(f"  {mark} {m.item_id:7d}  {evidence:28s} {items[m.item_id].external_key}")
    if report.groups > len(groups):
        click.echo(f"... `fir dedup export {report.run_id}` for all {report.groups}")


@dedup_group.command("export")
@click.argument("run_id", type=int)
@click.option("--format", "fmt", type=click.Choice(["csv", "json"]), default="csv", show_default=True)
@click.option("--out", type=click.Path(path_type=Path, dir_okay=False), default=None, help="Default: stdout.")
@click.option("--include-dismissed", is_flag=True, help="Also groups dismissed (not a duplicate) before the run.")
@pass_ctx
@handle_errors
def dedup_export_cmd(c: Ctx, run_id: int, fmt: str, out: Path | None, include_dismissed: bool) -> None:
    """Write a stored run's groups (one CSV row per member, or JSON)."""
    from shared.dedup.export import export_csv, export_json

    ensure_db(c)
    with db_session(c) as session:
        text = (export_csv if fmt == "csv" else export_json)(session, run_id, include_dismissed=include_dismissed)
    if out is None:
        click.echo(text, nl=False)
    else:
        out.write_text(text)
        click.echo(f"run {run_id} written to {out}")


@dedup_group.command("decide")
@click.argument("group_id", type=int)
@click.argument("decision", type=click.Choice(["confirmed", "not_duplicate", "keep_item"]))
@click.option("--keep", "kept_item_id", type=int, default=None, help="keep_item: the member to keep.")
@click.option("--by", "decided_by", default=None, help="Who decides (default: your login).")
@click.option("--note", default=None)
@pass_ctx
@handle_errors
def dedup_decide_cmd(c: Ctx, group_id: int, decision: str, kept_item_id: int | None, decided_by: str | None,
                     note: str | None) -> None:
    """Record a reviewer's decision on a group; it follows the group into later runs."""
    import getpass

    from shared.db import dedup as store

    ensure_db(c)
    with db_session(c) as session:
        d = store.decide_dedup_group(session, group_id, decision, decided_by=decided_by or getpass.getuser(),
                                     kept_item_id=kept_item_id, note=note)
    click.echo(f"group {group_id}: {d.decision}" + (f" (keep item {d.kept_item_id})" if d.kept_item_id else ""))


def _calibration_model(c: Ctx, model: str | None, image_size: int | None) -> tuple[Any, str, int, str]:
    """(network, backbone, image size, description) for ``fir dedup calibrate --model``."""
    from shared.vision.backbone import backbone_names, build_network
    from shared.vision.modelfile import load_model

    if model is None or model == "active":
        from shared.db import services

        ensure_db(c)
        with db_session(c) as session:
            active = services.get_active_model_version(session)
        if active is not None and active.checkpoint_path:
            model = active.checkpoint_path
        elif model == "active":
            from shared.errors import NotFound

            raise NotFound("no active model version; use --model efficientnet_lite0 or a model file")
        else:
            model = "efficientnet_lite0"
    if model in backbone_names():
        net, used = build_network(model, "imagenet", 1)
        return net, model, image_size or 224, f"{model} ({used})"
    loaded = load_model(Path(model))
    return loaded.net, loaded.meta.backbone, image_size or loaded.meta.image_size, f"model {loaded.model_id} ({model})"


@dedup_group.command("calibrate")
@dataset_options
@click.option("--model", default=None,
              help="'active' (the active model version: the default when there is one), a backbone name "
                   "with ImageNet weights (efficientnet_lite0), or a FIR model file.")
@click.option("--per-category", type=int, default=30, show_default=True,
              help="Photos per category to copy with every transform (the positives).")
@click.option("--distractors", type=int, default=60, show_default=True,
              help="Other photos per category (more hard negatives).")
@click.option("--transforms", default="jpeg,resize,crop,flip,colour,pad", show_default=True)
@click.option("--target-precision", type=float, default=0.98, show_default=True)
@click.option("--image-size", type=int, default=None)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--out", type=click.Path(path_type=Path, file_okay=False), default=None,
              help="Default: <home>/dedup-calibration.")
@pass_ctx
@handle_errors
def dedup_calibrate_cmd(c: Ctx, dataset: Path, fmt: str, path_column: str, category_column: str,
                        split_column: str, model: str | None, per_category: int, distractors: int,
                        transforms: str, target_precision: float, image_size: int | None, seed: int,
                        out: Path | None) -> None:
    """Measure near-duplicate precision and recall on labelled pairs made from the dataset's own
    photos (transformed copies vs other products of the same category) and suggest a cosine
    threshold per category: writes thresholds.json (for `fir dedup --thresholds`), a
    precision-recall curve PNG and the scored pairs (CSV)."""
    import csv as csv_module
    import random

    import numpy as np
    import torch

    from shared.dedup.calibrate import (
        calibrate,
        draw_pr_curves,
        precision_recall_at,
        thresholds_json,
    )
    from shared.dedup.detect import DEFAULT_THRESHOLD
    from shared.dedup.study import (
        Photo,
        build_study,
        embedder_callable,
        labelled_pairs,
        pair_scores,
    )
    from shared.dedup.transforms import check_kinds

    kinds = check_kinds([k.strip() for k in transforms.split(",") if k.strip()])
    scan = _read(dataset, fmt, path_column, category_column, split_column)
    by_cat: dict[str, list[Any]] = {}
    for sample in scan.samples:
        by_cat.setdefault(str(sample.category), []).append(sample)
    rng = random.Random(seed)
    sources: list[Photo] = []
    others: list[Photo] = []
    for cat in sorted(by_cat):
        picked = rng.sample(by_cat[cat], min(len(by_cat[cat]), per_category + distractors))
        photos = [Photo(s.key, s.path, cat) for s in picked]
        sources.extend(photos[:per_category])
        others.extend(photos[per_category:])
    torch.set_num_threads(max(1, min(4, torch.get_num_threads())))
    net, backbone, size, described = _calibration_model(c, model, image_size)
    click.echo(f"features: {described}, {size} px; {len(sources)} photos x {len(kinds)} transforms, "
               f"{len(others)} other photos")
    embed = embedder_callable(net, backbone, size, device=c.settings.device)
    t0 = time.perf_counter()
    study = build_study(sources, others, embed, transforms=kinds, seed=seed)
    pairs = labelled_pairs(study, seed=seed)
    scores = pair_scores(study.vectors, pairs)
    labels = np.asarray([p.duplicate for p in pairs])
    choices, curves = calibrate(scores, labels, [p.category for p in pairs],
                                target_precision=target_precision, fallback=DEFAULT_THRESHOLD)
    out = out or c.store.root / "dedup-calibration"
    out.mkdir(parents=True, exist_ok=True)
    png = draw_pr_curves(curves, out / "pr_curve.png", chosen=choices, title=f"near-duplicates: {described}")
    (out / "thresholds.json").write_text(json.dumps(
        thresholds_json(choices, model=described, image_size=size, target_precision=target_precision,
                        dataset=str(dataset), transforms=kinds, per_category=per_category), indent=2))
    with open(out / "pairs.csv", "w", newline="") as fh:
        writer = csv_module.writer(fh)
        writer.writerow(["a", "b", "duplicate", "kind", "category", "cosine"])
        for p, s in zip(pairs, scores.tolist(), strict=True):
            writer.writerow([study.keys[p.a], study.keys[p.b], int(p.duplicate), p.kind, p.category, f"{s:.6f}"])
    click.echo(f"{len(pairs)} labelled pairs in {time.perf_counter() - t0:.0f} s")
    click.echo(f"{'category':14s} {'threshold':>9s} {'precision':>9s} {'recall':>7s} {'pos':>5s} {'neg':>5s}")
    for cat, ch in choices.items():
        click.echo(f"{'all' if cat == '*' else cat:14s} {ch.threshold:9.3f} {ch.precision:9.3f} {ch.recall:7.3f} "
                   f"{ch.positives:5d} {ch.negatives:5d}")
    click.echo(f"recall per transform at the default threshold {DEFAULT_THRESHOLD}:")
    kinds_arr = np.asarray([p.kind for p in pairs])
    for kind in kinds:
        mask = kinds_arr == kind
        _, recall, _, _ = precision_recall_at(scores[mask], labels[mask], DEFAULT_THRESHOLD)
        click.echo(f"  {kind:8s} {recall:.3f}")
    click.echo(f"thresholds: {out / 'thresholds.json'}\nPR curve:   {png}\npairs:      {out / 'pairs.csv'}")


if __name__ == "__main__":
    main()
