"""Database glue: engines with SQLite made safe for several processes, and Alembic run from code.

Why the SQLite recipe: pysqlite neither runs DDL inside transactions nor takes the write lock up
front. We turn its own transaction handling off (``isolation_level = None``) and emit ``BEGIN``
ourselves (SQLAlchemy's documented recipe), so a failed migration rolls back completely (no
``_alembic_tmp_*`` table left behind) and write transactions start with ``BEGIN IMMEDIATE``: a
second writer waits on the busy timeout at the start of its transaction instead of failing with
"database is locked" when it tries to upgrade a read lock in the middle of one. WAL lets readers
go on while one process writes.

The migrations live in the repository's ``migrations/`` folder; an installed wheel carries them as
``tracker/_migrations`` (see pyproject.toml).
"""

from __future__ import annotations

import errno
import functools
import math
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

from tracker import fsutil
from tracker.errors import StoreError

if TYPE_CHECKING:
    from alembic.config import Config
    from sqlalchemy.engine import Connection, Engine

BUSY_TIMEOUT_MS = 30_000
WRITE = "tracker_write"  # execution option: this transaction writes -> BEGIN IMMEDIATE on SQLite
VERSION_TABLE = "alembic_version"
MIGRATION_LOCK_KEY = 0x7072_6F6D_7074  # "prompt": the PostgreSQL advisory lock taken around migrations


@functools.cache
def newest_revision() -> str:
    """The newest revision in migrations/versions, from the file names (a revision id is its file's name,
    ``NNNN_slug``), so that opening an up-to-date store needs no Alembic import (~0.5 s) and a new migration
    needs no edit here; tests/test_migrations.py keeps it equal to Alembic's head."""
    names = sorted(p.stem for p in (migrations_dir() / "versions").glob("[0-9][0-9][0-9][0-9]_*.py"))
    if not names:
        raise StoreError(f"no migrations in {migrations_dir() / 'versions'}: the installation is incomplete")
    return names[-1]


def migrations_dir() -> Path:
    """The Alembic script folder: ``migrations/`` in a checkout, ``tracker/_migrations`` in a wheel."""
    from tracker.resources import data_dir

    return data_dir("migrations", "env.py", StoreError)


def sqlite_path(url: str) -> Path | None:
    """The database file of a SQLite URL (None for other databases and in-memory ones)."""
    from sqlalchemy.engine import make_url
    return _sqlite_file(make_url(url))


def _sqlite_file(url) -> Path | None:
    db = url.database
    if url.get_backend_name() != "sqlite" or not db or db == ":memory:" or db.startswith("file:"):
        return None
    return Path(db).expanduser()


def normalized_url(url: str) -> str:
    """``url`` as every command, process and library opens it: a SQLite file's ``~`` expanded
    (``sqlite:///~/x.db``), so that no one opens a file named ``~`` in the current folder instead. Other URLs,
    and ones that do not parse (``make_engine`` says what is wrong), are returned as they are."""
    if "~" not in url or not url.startswith("sqlite"):
        return url  # nothing to expand (and no SQLAlchemy import on the CLI's fast paths)
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError
    try:
        parsed = make_url(url)
    except ArgumentError:
        return url
    path = _sqlite_file(parsed)
    if path is None or str(path) == parsed.database:
        return url
    return parsed.set(database=str(path)).render_as_string(hide_password=False)


def default_home(sqlite_file: Path | None) -> Path | None:
    """The workspace of a store opened without one: a SQLite file's folder (``HOME/tracker.db``); None else."""
    return sqlite_file.resolve().parent if sqlite_file is not None else None


def make_engine(url: str, busy_timeout_ms: int = BUSY_TIMEOUT_MS) -> "Engine":
    """An engine for ``url``. SQLite: folder created, WAL, busy timeout, real transactions."""
    from sqlalchemy import create_engine, event
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise StoreError(f"{url!r} is not a database URL; give a SQLAlchemy URL such as sqlite:///path/tracker.db") from None
    json_args = {"json_serializer": json_dumps, "json_deserializer": json_loads}
    if parsed.get_backend_name() != "sqlite":
        try:
            return create_engine(parsed, pool_pre_ping=True, **json_args)
        except Exception as e:  # a missing driver (psycopg, pymysql ...)
            hint = ("; install the PostgreSQL extra: pip install 'prompt-tracker[postgres]'"
                    if parsed.get_backend_name() == "postgresql" and isinstance(e, ImportError) else "")
            raise StoreError(f"cannot use database {parsed.render_as_string(hide_password=True)}: {e}{hint}") from None
    path = _sqlite_file(parsed)
    if path is not None:
        parsed = parsed.set(database=str(path))  # "~" expanded, as normalized_url does
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise StoreError(f"cannot create the folder for the run store {path}: {e}") from None
    engine = create_engine(parsed, connect_args={"timeout": busy_timeout_ms / 1000}, **json_args)

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection, connection_record):
        dbapi_connection.isolation_level = None  # we emit BEGIN ourselves (below)
        cur = dbapi_connection.cursor()
        try:
            cur.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
            if path is not None:
                _wal(cur, busy_timeout_ms / 1000)
        finally:
            cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn):
        conn.exec_driver_sql("BEGIN IMMEDIATE" if conn.get_execution_options().get(WRITE) else "BEGIN")

    return engine


# Non-finite floats in JSON columns (a scheduler config's ``lambda_min_clipped: -inf``): Python's json writes
# ``-Infinity``, which is not JSON; SQLite's TEXT takes it, PostgreSQL's json type refuses it. Both stores get them
# as a one-key object instead, and read them back as the same floats. (``-Infinity`` written by older SQLite stores
# still reads back: json.loads accepts it.) A stored dict that happens to be exactly ``{FLOAT_KEY: ...}`` is escaped
# under ``ESCAPE_KEY`` so that it too comes back as it went in.
FLOAT_KEY = "$tracker.float"
ESCAPE_KEY = "$tracker.dict"
_NON_FINITE = {"inf": math.inf, "-inf": -math.inf, "nan": math.nan}


def _encode(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return {FLOAT_KEY: "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")}
    if isinstance(value, dict):
        out = {k: _encode(v) for k, v in value.items()}
        return {ESCAPE_KEY: out} if len(out) == 1 and next(iter(out)) in (FLOAT_KEY, ESCAPE_KEY) else out
    if isinstance(value, (list, tuple)):
        return [_encode(v) for v in value]
    return value


def _decode(value: Any) -> Any:
    if isinstance(value, dict):
        if len(value) == 1:
            if FLOAT_KEY in value and value[FLOAT_KEY] in _NON_FINITE:
                return _NON_FINITE[value[FLOAT_KEY]]
            if ESCAPE_KEY in value and isinstance(value[ESCAPE_KEY], dict):
                return {k: _decode(v) for k, v in value[ESCAPE_KEY].items()}
        return {k: _decode(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_decode(v) for v in value]
    return value


def json_dumps(value: Any) -> str:
    """The JSON columns' serializer: strict JSON on every database (no ``Infinity``/``NaN`` tokens)."""
    import json

    return json.dumps(_encode(value), allow_nan=False)


def json_loads(text: "str | bytes") -> Any:
    """The JSON columns' deserializer: ``json_dumps`` undone."""
    import json

    return _decode(json.loads(text))


def _wal(cur, timeout_s: float) -> None:
    """Put a SQLite file in WAL mode (it stays so: a later connection finds it set). SQLite answers the switch with
    "database is locked" at once, without waiting on the busy timeout, while another process opening a new store
    switches it too (two sweeps started together): retried until the busy timeout."""
    import sqlite3
    import time

    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if cur.execute("PRAGMA journal_mode").fetchone()[0].lower() != "wal":
                cur.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as e:
            if "locked" not in str(e) or time.monotonic() > deadline:
                raise
            time.sleep(0.02)


@contextmanager
def write(engine: "Engine") -> Iterator["Connection"]:
    """A write transaction (``BEGIN IMMEDIATE`` on SQLite), committed on success."""
    with engine.execution_options(**{WRITE: True}).begin() as conn:
        yield conn


def display_url(engine_or_url) -> str:
    from sqlalchemy.engine import make_url
    url = engine_or_url.url if hasattr(engine_or_url, "url") else make_url(engine_or_url)
    return url.render_as_string(hide_password=True)


# ---------------------------------------------------------------------------------------------
# Alembic


def alembic_config(url: str, script_location: Path | None = None) -> "Config":
    from alembic.config import Config
    cfg = Config()
    cfg.set_main_option("script_location", str(script_location or migrations_dir()))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    cfg.set_main_option("file_template", "%%(rev)s")  # versions/<revision id>.py
    return cfg


def _script(cfg: "Config"):
    from alembic.script import ScriptDirectory
    return ScriptDirectory.from_config(cfg)


def head(script_location: Path | None = None) -> str:
    """The newest revision this code knows."""
    return _script(alembic_config("sqlite://", script_location)).get_current_head()


def current(url_or_engine) -> str | None:
    """The database's revision (None for an empty database)."""
    engine = make_engine(url_or_engine) if isinstance(url_or_engine, str) else url_or_engine
    try:
        return _current(engine)
    finally:
        if isinstance(url_or_engine, str):
            engine.dispose()


def _current(engine: "Engine") -> str | None:
    from sqlalchemy import inspect, text
    from sqlalchemy.exc import DBAPIError
    try:
        with engine.connect() as conn:
            if not inspect(conn).has_table(VERSION_TABLE):
                return None
            rows = conn.execute(text(f"SELECT version_num FROM {VERSION_TABLE}")).scalars().all()
    except DBAPIError as e:
        raise StoreError(f"cannot read the run store {display_url(engine)}: {reason(e)}") from None
    if len(rows) > 1:
        raise StoreError(f"the run store {display_url(engine)} has several schema heads ({', '.join(rows)}); "
                         "it was not made by prompt-tracker")
    return rows[0] if rows else None


# SQLite's terse reasons for a store its file system fails under, and what to do (tracker.fsutil's advice where
# the reason is an errno's)
_SQLITE_ADVICE = {
    "disk I/O error": "the disk holding it may be full or failing, or a file size limit (ulimit -f) was reached: "
                      "free space or raise the limit, then run the same command again (finished work is kept)",
    "database or disk is full": fsutil.advice(errno.ENOSPC),
    "attempt to write a readonly database": "it is read-only: use a writable workspace (--home, --db) or fix its "
                                            "permissions",
    "unable to open database file": "check that its folder exists and is writable (SQLite writes its -wal and -shm "
                                    "files beside it, even to read)",
}


def reason(e: Exception) -> str:
    """The database's own first line, with what to do where SQLite's reason is only a symptom."""
    orig = getattr(e, "orig", None)
    text = str(orig if orig is not None else e).strip().splitlines()[0]
    advice = _SQLITE_ADVICE.get(text)
    return f"{text}; {advice}" if advice else text


def check_known(engine: "Engine | str", revision: str | None, script_location: Path | None = None) -> None:
    """Refuse a database whose revision this code does not know (made by a newer prompt-tracker)."""
    if revision is None:
        return
    from alembic.util import CommandError
    script = _script(alembic_config(display_url(engine), script_location))
    try:
        script.get_revision(revision)
    except CommandError:
        raise StoreError(
            f"the run store {display_url(engine)} is at schema revision {revision!r}, which this prompt-tracker "
            f"does not know (newest known: {script.get_current_head()}); it was written by a newer "
            "prompt-tracker or another program: upgrade prompt-tracker or use another --db") from None


def upgrade(url_or_engine, revision: str = "head", script_location: Path | None = None,
            home: Path | None = None) -> tuple[str | None, str | None]:
    """Migrate the database to ``revision`` in one transaction. Returns (before, after). ``home``: the workspace
    folder (0008 records image paths under it relative to it; default: a SQLite file's folder)."""
    return _migrate("upgrade", url_or_engine, revision, script_location, home)


def downgrade(url_or_engine, revision: str, script_location: Path | None = None,
              home: Path | None = None) -> tuple[str | None, str | None]:
    """Migrate down to ``revision`` ("base" drops everything). For tests and rescue."""
    return _migrate("downgrade", url_or_engine, revision, script_location, home)


def stamp(url_or_engine, revision: str, script_location: Path | None = None) -> None:
    """Write ``revision`` into the version table without running migrations (tests)."""
    from alembic import command
    engine = make_engine(url_or_engine) if isinstance(url_or_engine, str) else url_or_engine
    try:
        with write(engine) as conn:
            cfg = alembic_config(display_url(engine), script_location)
            cfg.attributes["connection"] = conn
            command.stamp(cfg, revision, purge=True)
    finally:
        if isinstance(url_or_engine, str):
            engine.dispose()


def _migrate(direction: str, url_or_engine, revision: str, script_location: Path | None, home: Path | None = None):
    from alembic import command
    from sqlalchemy.exc import DBAPIError
    engine = make_engine(url_or_engine) if isinstance(url_or_engine, str) else url_or_engine
    try:
        before = _current(engine)
        check_known(engine, before, script_location)
        cfg = alembic_config(display_url(engine), script_location)
        try:
            # One transaction for the whole migration: the version check inside it sees what an
            # earlier process committed, and a failure leaves the database as it was.
            with write(engine) as conn:
                _serialize_migrations(conn)
                cfg.attributes["connection"] = conn
                cfg.attributes["tracker_home"] = home or default_home(_sqlite_file(engine.url))
                getattr(command, direction)(cfg, revision)
        except DBAPIError as e:
            raise StoreError(f"cannot migrate the run store {display_url(engine)} to {revision}: {reason(e)}") from e
        return before, _current(engine)
    finally:
        if isinstance(url_or_engine, str):
            engine.dispose()


def _serialize_migrations(conn: "Connection") -> None:
    """One migration at a time per database. SQLite: the write transaction's ``BEGIN IMMEDIATE`` already is.
    PostgreSQL: an advisory lock held until the transaction ends, so processes opening one new store at once
    (workers on several machines) wait for the first to migrate it, then find it at head, instead of failing
    on two concurrent ``CREATE TABLE``s."""
    if conn.dialect.name == "postgresql":
        from sqlalchemy import text
        conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK_KEY})


def utcnow() -> "datetime":
    """Now, as the store keeps times: naive UTC."""
    return datetime.now(timezone.utc).replace(tzinfo=None)


def naive(t: "datetime | None") -> "datetime | None":
    """An aware time as the store keeps it (naive UTC)."""
    return t.astimezone(timezone.utc).replace(tzinfo=None) if t is not None and t.tzinfo is not None else t


def retry_on_conflict(method):
    """Run a write again when a concurrent writer inserted the same row first (a unique key race between
    two workers on PostgreSQL, whose transactions run side by side): the retry sees the committed row."""
    import sqlalchemy as sa

    @functools.wraps(method)
    def wrapper(*args, **kwargs):
        for attempt in range(3):
            try:
                return method(*args, **kwargs)
            except sa.exc.IntegrityError:
                if attempt == 2:
                    raise
    return wrapper


def file_identity(path: "Path | None") -> "tuple[Path, tuple[int, int]] | None":
    """A file's resolved path and (device, inode), to tell whether it is still the same file; None if absent."""
    import os

    if path is None:
        return None
    try:
        st = os.stat(path)
    except OSError:
        return None
    return path.resolve(), (st.st_dev, st.st_ino)


def escape_like(text: str) -> str:
    """``text`` as a literal inside a SQL LIKE pattern (escape character ``\\``)."""
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
