"""Embeddings (item x model version -> vector bytes) and index generations.

Vectors are stored as raw little-endian float32 or float16 bytes with their dimension and
dtype. :func:`load_vectors` reads a whole catalogue x model version with one query over the
DBAPI cursor (binary transfer on PostgreSQL) and builds the matrix with one ``frombuffer`` per
chunk of rows, never a Python object per float.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from itertools import islice
from typing import Any

import numpy as np
import numpy.typing as npt
from sqlalchemy import Engine, and_, exists, func, select
from sqlalchemy.orm import Session, aliased

from shared.db._common import check_choice, chunks, table_of, upsert_insert
from shared.db.models import (
    EMBEDDING_DTYPES,
    Embedding,
    IndexGeneration,
    Item,
    ModelVersion,
    utcnow,
)
from shared.errors import InvalidInput, ModelMismatch

EMBEDDINGS = table_of(Embedding)
GENERATIONS = table_of(IndexGeneration)

# Rows per bulk INSERT statement (about 4 MB of float32 x 2048 vectors each).
WRITE_CHUNK = 500
# Rows per fetchmany() when loading.
FETCH_CHUNK = 8192
# PostgreSQL loads: connections streaming at once, and the size from which that pays.
PARALLEL_LOADS = 2
PARALLEL_MIN_ROWS = 20_000

FloatArray = npt.NDArray[np.float32]
IdArray = npt.NDArray[np.int64]


def _as_ids(item_ids: Sequence[int] | npt.NDArray[Any]) -> list[int]:
    return [int(i) for i in np.asarray(item_ids, dtype=np.int64).reshape(-1)]


def write_embeddings(
    session: Session,
    model_version_id: int,
    item_ids: Sequence[int] | npt.NDArray[Any],
    vectors: npt.NDArray[Any],
    *,
    dtype: str = "float32",
    chunk_size: int = WRITE_CHUNK,
) -> int:
    """Insert or replace the vectors of ``item_ids`` for one model version; returns the count.

    ``vectors`` is ``(n, d)``; it is stored as ``dtype`` (``float32`` or ``float16``) bytes.
    Non-finite values are refused (a NaN vector would poison every search).
    """
    check_choice("dtype", dtype, EMBEDDING_DTYPES)
    ids = _as_ids(item_ids)
    matrix = np.asarray(vectors)
    if matrix.ndim != 2 or matrix.shape[0] != len(ids):
        raise InvalidInput(
            f"vectors must be (n, d) with n = {len(ids)} item ids, got shape {matrix.shape}"
        )
    if len(ids) != len(set(ids)):
        raise InvalidInput("an item id appears twice among the vectors")
    if not ids:
        return 0
    dim = int(matrix.shape[1])
    if dim < 1:
        raise InvalidInput("vectors need at least one dimension")
    stored = np.ascontiguousarray(matrix, dtype=np.dtype(dtype).newbyteorder("<"))
    if not np.isfinite(stored).all():
        raise InvalidInput("vectors contain NaN or infinite values")
    session.flush()
    connection = session.connection()
    dialect = connection.dialect
    created_type = EMBEDDINGS.c.created_at.type
    to_db = created_type.bind_processor(dialect)
    created = to_db(utcnow()) if to_db is not None else utcnow()
    # The DBAPI's executemany directly: no SQLAlchemy parameter processing per row (bulk
    # writes are 2-3x faster), and on PostgreSQL the vector goes as a binary parameter.
    mark, vec_mark = ("%s", "%b") if dialect.name == "postgresql" else ("?", "?")
    if dialect.name not in ("postgresql", "sqlite"):
        raise NotImplementedError(f"write_embeddings does not support {dialect.name}")
    sql = (
        "INSERT INTO embeddings (model_version_id, item_id, dim, dtype, vector, created_at) "
        f"VALUES ({mark}, {mark}, {mark}, {mark}, {vec_mark}, {mark}) "
        "ON CONFLICT (model_version_id, item_id) DO UPDATE SET dim = excluded.dim, "
        "dtype = excluded.dtype, vector = excluded.vector, created_at = excluded.created_at"
    )
    cursor: Any = connection.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
    try:
        for start in range(0, len(ids), chunk_size):
            block = stored[start : start + chunk_size]
            cursor.executemany(
                sql,
                [
                    (model_version_id, item_id, dim, dtype, block[j].tobytes(), created)
                    for j, item_id in enumerate(ids[start : start + chunk_size])
                ],
            )
    finally:
        cursor.close()
    return len(ids)


_LOAD_COLUMNS = {
    "count": "count(*)",
    "meta": "e.item_id, e.dim, e.dtype",
    "rows": "e.item_id, e.dim, e.dtype, COALESCE(i.given_category, i.predicted_category, ''), "
    "e.vector",
    "part": "e.item_id, COALESCE(i.given_category, i.predicted_category, ''), e.vector",
}


def _load_sql(dialect: str, statuses: Sequence[str], columns: str) -> tuple[str, dict[str, Any]]:
    """A load query as driver SQL (pyformat or named placeholders) and its status params.

    Written out: these are the hot queries, and they run on the DBAPI cursor directly so that
    PostgreSQL can send the bytea values in binary (not hex text twice their size) and no
    SQLAlchemy row object is built per vector. ``part`` selects an item id range ``lo..hi``.
    """
    mark = {"postgresql": "%({})s", "sqlite": ":{}"}[dialect]
    status_marks = ", ".join(mark.format(f"s{i}") for i in range(len(statuses)))
    sql = (
        f"SELECT {_LOAD_COLUMNS[columns]} "
        "FROM embeddings e JOIN items i ON i.id = e.item_id "
        f"WHERE e.model_version_id = {mark.format('mv')} "
        f"AND i.catalogue_id = {mark.format('cat')} "
        f"AND i.status IN ({status_marks})"
    )
    if columns == "part":
        sql += f" AND e.item_id >= {mark.format('lo')} AND e.item_id <= {mark.format('hi')}"
    if columns != "count":
        sql += " ORDER BY e.item_id"
    params: dict[str, Any] = {f"s{i}": s for i, s in enumerate(statuses)}
    return sql, params


def load_vectors(
    session: Session,
    catalogue_id: int,
    model_version_id: int,
    *,
    statuses: Sequence[str] = ("active",),
    parallel: int | None = None,
) -> tuple[IdArray, FloatArray, list[str]]:
    """A catalogue's vectors for one model version, ordered by item id.

    Returns ``(item_ids int64[n], vectors float32[n, d], categories)`` where a category is the
    item's given category, else its predicted one, else ``""``. Only items whose status is in
    ``statuses`` are loaded. Mixed dimensions or dtypes raise :class:`ModelMismatch`.

    One query streams every row into a preallocated matrix. On PostgreSQL, when the session's
    (READ COMMITTED) transaction has written nothing yet, ``parallel`` connections (default
    2) stream disjoint item id ranges of one exported snapshot at once (consistent, and about
    1.5x faster: the server's de-TOASTing is the bottleneck); ``parallel=1`` turns that off.
    """
    if not statuses:
        raise InvalidInput("statuses must name at least one item status")
    session.flush()
    connection = session.connection()
    dialect = connection.dialect.name
    params: dict[str, Any] = {"mv": model_version_id, "cat": catalogue_id}
    workers = PARALLEL_LOADS if parallel is None else max(1, int(parallel))
    if dialect == "postgresql" and workers > 1:
        # Other connections see neither this transaction's writes nor its snapshot: go
        # parallel only for a READ COMMITTED transaction that has written nothing.
        fresh = connection.exec_driver_sql(
            "SELECT txid_current_if_assigned() IS NULL"
            " AND current_setting('transaction_isolation') = 'read committed'"
        ).scalar()
        if fresh:
            return _load_postgres_parallel(
                connection.engine, statuses, params, workers, model_version_id
            )
    sql, status_params = _load_sql(dialect, statuses, "rows")
    count_sql, _ = _load_sql(dialect, statuses, "count")
    params.update(status_params)
    dbapi_conn: Any = connection.connection.dbapi_connection
    sink = _VectorSink(model_version_id)
    if dialect == "postgresql":
        cursor = dbapi_conn.cursor(binary=True)
        try:
            expected = int(cursor.execute(count_sql, params).fetchone()[0])
            for rows in _stream(cursor, sql, params):
                sink.add(rows, expected)
        finally:
            cursor.close()
        return sink.result()
    cursor = dbapi_conn.cursor()
    try:
        # One read transaction (one snapshot): the count matches the rows that follow.
        cursor.execute(count_sql, params)
        expected = int(cursor.fetchone()[0])
        cursor.execute(sql, params)
        while rows := cursor.fetchmany(FETCH_CHUNK):
            sink.add(rows, expected)
    finally:
        cursor.close()
    return sink.result()


def _stream(cursor: Any, sql: str, params: dict[str, Any]) -> Iterator[list[Any]]:
    """A psycopg query's rows in lists of FETCH_CHUNK, streamed (libpq never holds them all)."""
    try:
        stream = cursor.stream(sql, params, size=FETCH_CHUNK)
    except Exception:  # libpq < 17 has no chunked rows mode: row by row
        stream = cursor.stream(sql, params)
    try:
        while rows := list(islice(stream, FETCH_CHUNK)):
            yield rows
    finally:
        stream.close()


def _check_kinds(kinds: set[tuple[int, str]], model_version_id: int) -> tuple[int, str]:
    if len(kinds) != 1:
        raise ModelMismatch(
            f"model version {model_version_id} has vectors of several shapes: {sorted(kinds)}"
        )
    dim, dtype = next(iter(kinds))
    check_choice("stored dtype", dtype, EMBEDDING_DTYPES)
    return int(dim), str(dtype)


def _copy_rows(buffer: memoryview, offset: int, blobs: Sequence[bytes], row_bytes: int) -> int:
    """Copy each vector's bytes into ``buffer`` from ``offset``; returns the offset after."""
    for blob in blobs:
        if len(blob) != row_bytes:
            raise ModelMismatch("a stored vector's length disagrees with its dimension")
        buffer[offset : offset + row_bytes] = blob
        offset += row_bytes
    return offset


def _empty_matrix(rows: int, dim: int, dtype: str) -> npt.NDArray[Any]:
    """A writable little-endian ``(rows, dim)`` matrix for vectors about to be copied in.

    Backed by a ``bytearray``: fresh pages without numpy's huge-page advice, whose first
    touch costs more (kernel compaction) than the copy itself on some hosts.
    """
    kind = np.dtype(dtype).newbyteorder("<")
    return np.frombuffer(bytearray(rows * dim * kind.itemsize), dtype=kind).reshape(rows, dim)


def _as_float32(store: npt.NDArray[Any]) -> FloatArray:
    vectors = store.astype(np.float32, copy=False)
    if not vectors.dtype.isnative:
        vectors = vectors.astype(np.float32)
    return vectors


def _load_postgres_parallel(
    engine: Engine,
    statuses: Sequence[str],
    params: dict[str, Any],
    workers: int,
    model_version_id: int,
) -> tuple[IdArray, FloatArray, list[str]]:
    meta_sql, status_params = _load_sql("postgresql", statuses, "meta")
    part_sql, _ = _load_sql("postgresql", statuses, "part")
    params = {**params, **status_params}
    with ExitStack() as stack:
        first = stack.enter_context(engine.connect()).execution_options(
            isolation_level="REPEATABLE READ"
        )
        snapshot = first.exec_driver_sql("SELECT pg_export_snapshot()").scalar_one()
        raw: Any = first.connection.dbapi_connection
        with raw.cursor(binary=True) as cursor:
            meta = cursor.execute(meta_sql, params).fetchall()
        if not meta:
            return np.empty(0, dtype=np.int64), np.empty((0, 0), dtype=np.float32), []
        item_ids, dims, dtypes = zip(*meta, strict=True)
        del meta
        dim, dtype = _check_kinds(set(zip(dims, dtypes, strict=True)), model_version_id)
        ids = np.fromiter(item_ids, dtype=np.int64, count=len(item_ids))
        n = len(ids)
        store = _empty_matrix(n, dim, dtype)
        row_bytes = dim * store.itemsize
        parts = workers if n >= PARALLEL_MIN_ROWS else 1
        bounds = [n * p // parts for p in range(parts + 1)]
        connections = [first]
        for _ in range(parts - 1):
            helper = stack.enter_context(engine.connect()).execution_options(
                isolation_level="REPEATABLE READ"
            )
            helper.exec_driver_sql(f"SET TRANSACTION SNAPSHOT '{snapshot}'")
            connections.append(helper)

        def load_part(p: int) -> list[str]:
            lo, hi = bounds[p], bounds[p + 1]
            categories: list[str] = []
            if lo == hi:
                return categories
            buffer = store.data.cast("B")
            offset, position = lo * row_bytes, lo
            dbapi: Any = connections[p].connection.dbapi_connection
            with dbapi.cursor(binary=True) as cursor:
                part_params = {**params, "lo": int(ids[lo]), "hi": int(ids[hi - 1])}
                for rows in _stream(cursor, part_sql, part_params):
                    got, cats, blobs = zip(*rows, strict=True)
                    if not np.array_equal(ids[position : position + len(got)], got):
                        raise ModelMismatch("the vectors changed while they were loaded")
                    offset = _copy_rows(buffer, offset, blobs, row_bytes)
                    position += len(got)
                    categories.extend(cats)
            if position != hi:
                raise ModelMismatch("the vectors changed while they were loaded")
            buffer.release()
            return categories

        with ThreadPoolExecutor(max_workers=parts) as pool:
            pieces = list(pool.map(load_part, range(parts)))
    categories = [c for piece in pieces for c in piece]
    return ids, _as_float32(store), categories


class _VectorSink:
    """Copies fetched rows' vector bytes straight into one preallocated matrix."""

    def __init__(self, model_version_id: int) -> None:
        self.model_version_id = model_version_id
        self.kind: tuple[int, str] | None = None
        self.store: npt.NDArray[Any] = np.empty((0, 0), dtype=np.float32)
        self.ids: IdArray = np.empty(0, dtype=np.int64)
        self.categories: list[str] = []
        self.count = 0

    def _allocate(self, capacity: int) -> None:
        assert self.kind is not None
        dim, dtype = self.kind
        store = _empty_matrix(capacity, dim, dtype)
        ids = np.empty(capacity, dtype=np.int64)
        if self.count:
            store[: self.count] = self.store[: self.count]
            ids[: self.count] = self.ids[: self.count]
        self.store, self.ids = store, ids

    def add(self, rows: Sequence[Any], expected: int) -> None:
        item_ids, dims, dtypes, cats, blobs = zip(*rows, strict=True)
        kinds = set(zip(dims, dtypes, strict=True))
        if self.kind is not None:
            kinds.add(self.kind)
        kind = _check_kinds(kinds, self.model_version_id)
        if self.kind is None:
            self.kind = kind
            self._allocate(max(expected, len(rows)))
        start, stop = self.count, self.count + len(rows)
        if stop > len(self.ids):
            self._allocate(max(stop, 2 * len(self.ids)))
        row_bytes = self.store.shape[1] * self.store.itemsize
        buffer = self.store.data.cast("B")
        _copy_rows(buffer, start * row_bytes, blobs, row_bytes)
        buffer.release()
        self.ids[start:stop] = item_ids
        self.categories.extend(cats)
        self.count = stop

    def result(self) -> tuple[IdArray, FloatArray, list[str]]:
        if self.kind is None:
            return np.empty(0, dtype=np.int64), np.empty((0, 0), dtype=np.float32), []
        n = self.count
        store, ids = self.store[:n], self.ids[:n]
        if n < len(self.ids):
            store, ids = store.copy(), ids.copy()
        return ids, _as_float32(store), self.categories


def items_missing_embeddings(
    session: Session,
    catalogue_id: int,
    model_version_id: int,
    *,
    statuses: Sequence[str] = ("active",),
) -> list[int]:
    """Ids of the catalogue's items (with these statuses) that have no vector for the version."""
    has = exists().where(
        EMBEDDINGS.c.item_id == Item.id, EMBEDDINGS.c.model_version_id == model_version_id
    )
    return list(
        session.scalars(
            select(Item.id)
            .where(Item.catalogue_id == catalogue_id, Item.status.in_(statuses), ~has)
            .order_by(Item.id)
        )
    )


def copy_embeddings_by_sha256(session: Session, catalogue_id: int, model_version_id: int) -> int:
    """Give active items without a vector the vector of an item with the same content hash.

    Byte-identical images (a renamed file, one photo under two SKUs) are never embedded twice.
    Returns how many vectors were copied.
    """
    src_item = aliased(Item)
    src_emb = EMBEDDINGS.alias("src_emb")
    source_id = (
        select(func.min(src_item.id))
        .join(
            src_emb,
            and_(
                src_emb.c.item_id == src_item.id,
                src_emb.c.model_version_id == model_version_id,
            ),
        )
        .where(
            src_item.catalogue_id == catalogue_id,
            src_item.sha256 == Item.sha256,
            src_item.id != Item.id,
        )
        .scalar_subquery()
    )
    missing = session.execute(
        select(Item.id, source_id.label("source_id")).where(
            Item.catalogue_id == catalogue_id,
            Item.status == "active",
            Item.sha256.is_not(None),
            ~exists().where(
                EMBEDDINGS.c.item_id == Item.id,
                EMBEDDINGS.c.model_version_id == model_version_id,
            ),
        )
    ).all()
    pairs = [(int(r.id), int(r.source_id)) for r in missing if r.source_id is not None]
    copied = 0
    for chunk in chunks(pairs):
        sources = {s for _, s in chunk}
        vectors = {
            r.item_id: r
            for r in session.execute(
                select(
                    EMBEDDINGS.c.item_id, EMBEDDINGS.c.dim, EMBEDDINGS.c.dtype, EMBEDDINGS.c.vector
                ).where(
                    EMBEDDINGS.c.model_version_id == model_version_id,
                    EMBEDDINGS.c.item_id.in_(sources),
                )
            )
        }
        now = utcnow()
        rows = [
            {
                "model_version_id": model_version_id,
                "item_id": target,
                "dim": vectors[source].dim,
                "dtype": vectors[source].dtype,
                "vector": vectors[source].vector,
                "created_at": now,
            }
            for target, source in chunk
        ]
        session.execute(EMBEDDINGS.insert(), rows)
        copied += len(rows)
    return copied


def count_embeddings(session: Session, catalogue_id: int, model_version_id: int) -> int:
    """How many of the catalogue's active items have a vector for the version."""
    return int(
        session.scalar(
            select(func.count())
            .select_from(EMBEDDINGS)
            .join(Item, Item.id == EMBEDDINGS.c.item_id)
            .where(
                EMBEDDINGS.c.model_version_id == model_version_id,
                Item.catalogue_id == catalogue_id,
                Item.status == "active",
            )
        )
        or 0
    )


# ---------------------------------------------------------------------------------------------
# Index generations


def bump_index_generation(session: Session, catalogue_id: int, model_version_id: int) -> int:
    """Increment the catalogue x model version's index generation; returns the new value.

    Atomic (one upsert statement): concurrent bumps each get their own number.
    """
    stmt = upsert_insert(session, GENERATIONS).values(
        catalogue_id=catalogue_id,
        model_version_id=model_version_id,
        generation=1,
        updated_at=utcnow(),
    )
    stmt = stmt.on_conflict_do_update(
        index_elements=[GENERATIONS.c.catalogue_id, GENERATIONS.c.model_version_id],
        set_={
            "generation": GENERATIONS.c.generation + 1,
            "updated_at": stmt.excluded.updated_at,
        },
    ).returning(GENERATIONS.c.generation)
    return int(session.execute(stmt).scalar_one())


def get_index_generation(session: Session, catalogue_id: int, model_version_id: int) -> int:
    """The current index generation (0 when never bumped)."""
    value = session.scalar(
        select(GENERATIONS.c.generation).where(
            GENERATIONS.c.catalogue_id == catalogue_id,
            GENERATIONS.c.model_version_id == model_version_id,
        )
    )
    return int(value or 0)


def active_index_state(session: Session, catalogue_id: int) -> tuple[int, int] | None:
    """(the active model version's id, the catalogue's index generation under it: 0 when never
    bumped) in one statement; None when no model version is active. What a query worker checks
    its loaded model and index against, on every query."""
    versions = table_of(ModelVersion)
    row = session.execute(
        select(versions.c.id, GENERATIONS.c.generation)
        .outerjoin(GENERATIONS, and_(GENERATIONS.c.model_version_id == versions.c.id,
                                     GENERATIONS.c.catalogue_id == catalogue_id))
        .where(versions.c.state == "active")
    ).first()
    return None if row is None else (int(row[0]), int(row[1] or 0))


def list_index_generations(session: Session) -> dict[tuple[int, int], int]:
    """Every ``(catalogue_id, model_version_id) -> generation`` (one cheap query to poll)."""
    return {
        (int(c), int(m)): int(g)
        for c, m, g in session.execute(
            select(
                GENERATIONS.c.catalogue_id,
                GENERATIONS.c.model_version_id,
                GENERATIONS.c.generation,
            )
        )
    }
