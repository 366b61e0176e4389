"""Small helpers shared by the service modules (not part of the public API)."""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from typing import Any, TypeVar, cast

from sqlalchemy import FromClause, Table
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from shared.errors import InvalidInput

T = TypeVar("T")

# Rows per statement for bulk writes and ids per IN (...) list (SQLite's limit is 32766
# variables per statement; PostgreSQL's 65535).
CHUNK = 1000


def chunks(seq: Sequence[T], size: int = CHUNK) -> Iterator[Sequence[T]]:
    for start in range(0, len(seq), size):
        yield seq[start : start + size]


def table_of(model: type[Any]) -> Table:
    """The Core table behind a mapped class (typed)."""
    return cast(Table, model.__table__)


def dialect_name(session: Session) -> str:
    return session.get_bind().dialect.name


def upsert_insert(session: Session, table: FromClause | type[Any]) -> Any:
    """The dialect's INSERT construct (with ``on_conflict_do_*``) for a table or mapped class."""
    name = dialect_name(session)
    target = cast(Table, table)
    if name == "postgresql":
        return postgresql.insert(target)
    if name == "sqlite":
        return sqlite.insert(target)
    raise NotImplementedError(f"upserts are not implemented for {name}")


def check_choice(what: str, value: str, choices: Sequence[str]) -> str:
    if value not in choices:
        raise InvalidInput(f"{what} must be one of {', '.join(choices)}, not {value!r}")
    return value


def json_normal(value: Any) -> Any:
    """``value`` as it comes back from a JSON column (tuples become lists, keys strings)."""
    return json.loads(json.dumps(value, sort_keys=True))
