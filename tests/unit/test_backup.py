"""`fir backup` / `fir restore`: back up, change and delete data, restore, the data is back."""

from __future__ import annotations

from pathlib import Path

from click.testing import CliRunner
from sqlalchemy import text

from shared.config import Settings


def test_backup_then_restore_brings_data_back(tmp_path: Path) -> None:
    from shared.cli import main
    from shared.db import services
    from shared.db.migrate import upgrade
    from shared.db.session import dispose_engines, session_scope

    home = tmp_path / "home"
    settings = Settings(home=home)
    upgrade(settings.resolved_database_url())
    with session_scope(settings) as session:
        services.create_catalogue(session, "kept", source_kind="folder", source_path="")
    (home / "models").mkdir(parents=True)
    (home / "models" / "model.pt").write_bytes(b"weights-v1")
    (home / "broker").mkdir()
    (home / "broker" / "junk").write_text("transient")

    from shared import jobbell

    bell = jobbell.bell_path(home)
    listener = jobbell.Listener.open(bell)  # a running API's socket beside the job bell
    jobbell.ring(bell)

    runner = CliRunner()
    archive = tmp_path / "backups" / "fir.tar.gz"
    result = runner.invoke(main, ["--home", str(home), "backup", str(archive)])
    if listener is not None:
        listener.close()
    assert result.exit_code == 0, result.output
    assert archive.is_file()
    import tarfile

    with tarfile.open(archive) as tar:
        names = tar.getnames()
    assert "home/models/model.pt" in names
    assert not [n for n in names if n.startswith(("home/run", "home/broker"))]  # transient state

    # damage: a catalogue deleted, another added, a model file changed and one removed
    with session_scope(settings) as session:
        services.create_catalogue(session, "added-after", source_kind="folder", source_path="")
        session.execute(text("DELETE FROM catalogues WHERE name = 'kept'"))
    (home / "models" / "model.pt").write_bytes(b"corrupted")
    (home / "models" / "extra.pt").write_bytes(b"x")
    dispose_engines()

    result = runner.invoke(main, ["--home", str(home), "restore", "--yes", str(archive)])
    assert result.exit_code == 0, result.output
    with session_scope(settings) as session:
        names = {c.name for c in services.list_catalogues(session)}
    assert names == {"kept"}
    assert (home / "models" / "model.pt").read_bytes() == b"weights-v1"
    assert not (home / "models" / "extra.pt").exists()
    dispose_engines()


def test_backup_refuses_a_postgres_database_without_no_db(tmp_path: Path) -> None:
    import pytest

    from shared.backup import backup_home
    from shared.errors import InvalidInput

    settings = Settings(home=tmp_path, database_url="postgresql+psycopg://postgres@127.0.0.1:5432/none")
    with pytest.raises(InvalidInput):
        backup_home(settings, tmp_path / "b.tar.gz")
    out = backup_home(settings, tmp_path / "files.tar.gz", include_db=False)
    assert out.is_file()
