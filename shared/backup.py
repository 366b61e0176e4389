"""Back up and restore the embedded default: the SQLite database (a consistent copy made with
``VACUUM INTO`` while FIR may be running) plus the FIR_HOME artifact store (models, routers,
feature sets, images, uploads), in one ``.tar.gz``.

With PostgreSQL (the service) the database is backed up with ``pg_dump`` instead (README,
"Backups"); ``backup_home(..., include_db=False)`` still archives the artifact store.
"""

from __future__ import annotations

import shutil
import sqlite3
import tarfile
import tempfile
from pathlib import Path

from sqlalchemy.engine import make_url

from shared.config import Settings
from shared.errors import InvalidInput

DB_NAME = "fir.db"
# Not data: the broker's transient files, logs, the job bell and its sockets (run/), and the
# beat schedule are rebuilt on start.
SKIP_TOP = {"broker", "logs", "run", "celerybeat-schedule", "celerybeat-schedule.db", "prometheus"}


def _sqlite_path(settings: Settings) -> Path | None:
    url = make_url(settings.resolved_database_url())
    if url.get_backend_name() != "sqlite" or not url.database:
        return None
    return Path(url.database).expanduser().resolve()


def backup_home(settings: Settings, out: Path, include_db: bool = True) -> Path:
    """Write ``out`` (a .tar.gz): ``db/fir.db`` (SQLite only) and ``home/...``."""
    home = settings.resolved_home()
    db = _sqlite_path(settings)
    if include_db and db is None:
        raise InvalidInput("the database is not SQLite: back it up with pg_dump (see the README), "
                           "and this archive with --no-db")
    out = out.expanduser().resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        with tarfile.open(out.with_suffix(out.suffix + ".part"), "w:gz") as tar:
            if include_db and db is not None:
                copy = Path(tmp) / DB_NAME
                src = sqlite3.connect(str(db))
                try:
                    src.execute("VACUUM INTO ?", (str(copy),))  # a consistent snapshot, WAL included
                finally:
                    src.close()
                tar.add(copy, arcname=f"db/{DB_NAME}")
            skip = {out}
            if db is not None:
                skip |= {db, db.with_name(db.name + "-wal"), db.with_name(db.name + "-shm")}
            for path in sorted(home.iterdir()):
                if path.name in SKIP_TOP or path in skip or path.name.endswith(".part"):
                    continue
                tar.add(path, arcname=f"home/{path.name}",
                        filter=lambda info: None if Path(info.name).name.endswith((".part", "-wal", "-shm"))
                        else info)
        out.with_suffix(out.suffix + ".part").replace(out)
    return out


def restore_home(settings: Settings, archive: Path) -> None:
    """Put an archive from :func:`backup_home` back: the SQLite file is replaced and the
    artifact store's files are written over FIR_HOME. Stop FIR's processes first."""
    home = settings.resolved_home()
    home.mkdir(parents=True, exist_ok=True)
    db = _sqlite_path(settings)
    with tempfile.TemporaryDirectory(dir=home) as tmp, tarfile.open(archive, "r:gz") as tar:
        tar.extractall(tmp, filter="data")  # no absolute paths, no '..', no links out
        staged = Path(tmp)
        if (staged / "db" / DB_NAME).is_file():
            if db is None:
                raise InvalidInput("the archive holds a SQLite database but FIR_DATABASE_URL is not SQLite")
            from shared.db.session import dispose_engines

            dispose_engines()
            for leftover in (db.with_name(db.name + "-wal"), db.with_name(db.name + "-shm")):
                leftover.unlink(missing_ok=True)
            db.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(str(staged / "db" / DB_NAME), str(db.with_name(db.name + ".restore")))
            db.with_name(db.name + ".restore").replace(db)
        if (staged / "home").is_dir():
            for path in (staged / "home").iterdir():
                target = home / path.name
                if target.is_dir() and path.is_dir():
                    shutil.rmtree(target)
                elif target.exists():
                    target.unlink()
                shutil.move(str(path), str(target))
