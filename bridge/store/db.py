"""Engine, sessions and migrations for the bridge's own store.

SQLite (the default, a file in the instance folder) runs in WAL mode and opens every transaction
with `BEGIN IMMEDIATE`: one writer at a time, across processes, which is what makes the per-order
amount check safe there. PostgreSQL (`postgresql+psycopg://...`, for several instances) uses a
row lock per order instead (`lock_order`).
"""

from __future__ import annotations

import fcntl
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any, cast

import psycopg
from alembic import command
from alembic.config import Config as AlembicConfig
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from flask import Flask, current_app
from sqlalchemy import Engine, Table, bindparam, create_engine, event, make_url, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.exc import DisconnectionError
from sqlalchemy.orm import Session, sessionmaker

from bridge.store.driver import DriverTransaction, Transaction
from bridge.store.models import OrderLock

MIGRATIONS_DIR = Path(__file__).parent / "migrations"
SQLITE_BUSY_TIMEOUT_MS = 30_000
# Execution option of the store's read-only sessions (`Store.read_session`).
READ_ONLY = "bridge_read_only"
_HOLDS_WRITE_LOCK = "bridge_holds_write_lock"
# A PostgreSQL connection idle for longer is checked before use (`_ping_when_idle`).
PING_AFTER_IDLE_SECONDS = 10.0
# SQLite's WAL is checkpointed by the store, at this pace, outside the write lock
# (`_Checkpointer`). SQLite's automatic checkpoint, which runs inside a committing writer,
# stays as a backstop (in pages) far above what the paced checkpoints let the WAL reach.
SQLITE_CHECKPOINT_INTERVAL_SECONDS = 0.5
SQLITE_AUTOCHECKPOINT_PAGES = 10_000

log = logging.getLogger(__name__)


class StoreNotMigrated(Exception):
    """The store's schema is behind the code; run `refund-bridge db upgrade`."""


def default_database_url(instance_path: str) -> str:
    os.makedirs(instance_path, exist_ok=True)
    return f"sqlite:///{os.path.join(instance_path, 'refund-bridge.sqlite3')}"


def instance_path() -> str:
    """The Flask instance folder of the `bridge` package (where the SQLite file lives)."""
    return Flask("bridge", instance_relative_config=True).instance_path


def database_url(configured: str | None) -> str:
    """The store of a process outside Flask's app (the worker, the commands):
    BRIDGE_DATABASE_URL when set, else the SQLite file in the instance folder."""
    return configured or default_database_url(instance_path())


def make_engine(
    url: str,
    *,
    write_lock: _WriteLock | None = None,
    checkpointer: _Checkpointer | None = None,
    **kwargs: Any,
) -> Engine:
    if url.startswith("sqlite"):
        engine = create_engine(
            url,
            connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000, "check_same_thread": False},
            **kwargs,
        )
        database = engine.url.database
        _configure_sqlite(
            engine,
            write_lock or _sqlite_write_lock(database),
            checkpointer or _sqlite_checkpointer(database),
        )
        return engine
    kwargs.setdefault("pool_size", 5)
    kwargs.setdefault("max_overflow", 10)
    engine = create_engine(url, **kwargs)
    _ping_when_idle(engine)
    return engine


def _ping_when_idle(engine: Engine) -> None:
    """Check a pooled connection before use only when it sat idle for PING_AFTER_IDLE_SECONDS:
    SQLAlchemy's `pool_pre_ping` costs a round trip on every checkout, i.e. on every request
    (docs/performance.md). A connection that dies while in use (the server restarted) fails
    that transaction, and SQLAlchemy then discards every older connection of the pool."""

    @event.listens_for(engine, "checkin")
    def _on_checkin(_dbapi_connection: Any, record: Any) -> None:
        record.info["idle_since"] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def _on_checkout(dbapi_connection: Any, record: Any, _proxy: Any) -> None:
        idle_since = record.info.get("idle_since")
        if idle_since is None or time.monotonic() - idle_since < PING_AFTER_IDLE_SECONDS:
            return
        try:
            cursor = dbapi_connection.cursor()
            cursor.execute("SELECT 1")
            cursor.close()
        except Exception as exc:
            # The pool throws this connection away and checks out another.
            raise DisconnectionError(str(exc)) from exc


def _sqlite_settings(dbapi_connection: Any) -> None:
    # Let the caller, not the driver, open transactions (the driver's would be deferred).
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
    cursor.execute(f"PRAGMA wal_autocheckpoint={SQLITE_AUTOCHECKPOINT_PAGES}")
    cursor.close()


def _on_disk(database: str | None) -> bool:
    return bool(database) and database != ":memory:" and not str(database).startswith("file:")


def _sqlite_write_lock(database: str | None) -> _WriteLock:
    """The write lock of an SQLite database (see `_WriteLock`), its file next to the database."""
    return _WriteLock(f"{database}.write.lock" if _on_disk(database) else None)


def _sqlite_checkpointer(database: str | None) -> _Checkpointer:
    return _Checkpointer(database if _on_disk(database) else None)


def _configure_sqlite(engine: Engine, write_lock: _WriteLock, checkpointer: _Checkpointer) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        _sqlite_settings(dbapi_connection)

    # One writer at a time, queued on locks that wake the next writer at once (`_WriteLock`),
    # instead of on SQLite's busy handler, which sleeps 1 to 100 ms between tries (the tail of
    # every answer under load: docs/performance.md). Held from BEGIN IMMEDIATE until the
    # connection goes back to the pool, i.e. after its COMMIT or ROLLBACK.

    def release(info: dict[str, Any]) -> bool:
        if info.pop(_HOLDS_WRITE_LOCK, False):
            write_lock.release()
            return True
        return False

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Any) -> None:
        if connection.get_execution_options().get(READ_ONLY):
            # Reads take no lock in WAL mode: a deferred transaction, a consistent snapshot.
            connection.exec_driver_sql("BEGIN")
            return
        info = connection.info
        if not info.get(_HOLDS_WRITE_LOCK) and write_lock.acquire(SQLITE_BUSY_TIMEOUT_MS / 1000):
            info[_HOLDS_WRITE_LOCK] = True
        try:
            connection.exec_driver_sql("BEGIN IMMEDIATE")
        except BaseException:
            release(info)
            raise

    @event.listens_for(engine, "checkin")
    def _on_checkin(_dbapi_connection: Any, record: Any) -> None:
        if release(record.info):
            checkpointer.after_write()

    @event.listens_for(engine, "invalidate")
    def _on_invalidate(_dbapi_connection: Any, record: Any, _exception: Any) -> None:
        release(record.info)


class _WriteLock:
    """The SQLite store's write lock: a thread lock between the threads of a process, then an
    exclusive `flock` between processes (the kernel wakes the next process at once, and frees
    it when its holder dies, even by SIGKILL). Without a lock file (an in-memory database) only
    the thread lock. A holder only ever waits for SQLite (bounded by its busy timeout), never
    for another lock."""

    def __init__(self, path: str | None) -> None:
        self._threads = threading.Lock()
        self._path = path
        self._fd: int | None = None
        self._pid = 0

    def _file(self) -> int | None:
        if self._path is None:
            return None
        if self._fd is None or self._pid != os.getpid():
            # Opened anew in each process: a descriptor inherited over fork would share its
            # lock with the parent.
            self._fd = os.open(self._path, os.O_RDWR | os.O_CREAT, 0o600)
            self._pid = os.getpid()
        return self._fd

    def acquire(self, timeout: float) -> bool:
        if not self._threads.acquire(timeout=timeout):
            return False  # SQLite's own locking decides (its busy timeout)
        try:
            fd = self._file()
            if fd is not None:
                fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError:
            pass  # no lock file (read-only folder): SQLite's own locking decides
        return True

    def release(self) -> None:
        if self._fd is not None and self._pid == os.getpid():
            with suppress(OSError):
                fcntl.flock(self._fd, fcntl.LOCK_UN)
        self._threads.release()


class _Checkpointer:
    """Paced WAL checkpoints of an SQLite database, each run by a thread that just wrote, after
    its write lock is released. A checkpoint copies the WAL into the database and waits for the
    disk; SQLite's automatic one does that inside a COMMIT, holding every writer up meanwhile
    (docs/performance.md). PASSIVE: it neither waits for nor blocks readers and writers. One
    at a time per process, on a connection of its own, opened anew in each process."""

    def __init__(self, path: str | None) -> None:
        self._path = path
        self._interval = SQLITE_CHECKPOINT_INTERVAL_SECONDS
        self._lock = threading.Lock()
        self._due = 0.0
        self._connection: sqlite3.Connection | None = None
        self._pid = 0

    def after_write(self) -> None:
        """Checkpoint when one is due, unless another thread is at it."""
        if self._path is None or time.monotonic() < self._due:
            return
        if not self._lock.acquire(blocking=False):
            return
        try:
            self._due = time.monotonic() + self._interval
            self._open().execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
        except sqlite3.Error as exc:
            # The automatic checkpoint (SQLITE_AUTOCHECKPOINT_PAGES) still bounds the WAL.
            log.warning("the store's WAL checkpoint failed: %s", exc)
        finally:
            self._lock.release()

    def _open(self) -> sqlite3.Connection:
        if self._connection is None or self._pid != os.getpid():
            connection = sqlite3.connect(self._path or "", check_same_thread=False)
            _sqlite_settings(connection)
            self._connection, self._pid = connection, os.getpid()
        return self._connection

    def close(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None and self._pid == os.getpid():
            connection.close()


def lock_order(session: Transaction, order_id: str) -> None:
    """Serialise refund requests on one order until the session's transaction ends.

    Holds across processes and instances: a row lock on PostgreSQL; on SQLite the transaction
    begun here holds the database's single write lock (BEGIN IMMEDIATE), which serialises
    every writer already: no statement is needed (a refund request's CPU:
    docs/performance.md).
    """
    if session.get_bind().dialect.name == "postgresql":
        values = {"order_id": order_id}
        session.execute(_ORDER_LOCK_PG, values)
        session.execute(_ORDER_LOCK_PG_FOR_UPDATE, values)
        return
    if isinstance(session, Session) and session.connection().get_execution_options().get(READ_ONLY):
        raise RuntimeError("lock_order needs a writing session (Store.session)")


# Built once (a refund request's CPU: docs/performance.md).
_ORDER_LOCKS = cast(Table, OrderLock.__table__)
_ORDER_LOCK_PG = pg_insert(_ORDER_LOCKS).on_conflict_do_nothing()
_ORDER_LOCK_PG_FOR_UPDATE = (
    select(_ORDER_LOCKS.c.order_id)
    .where(_ORDER_LOCKS.c.order_id == bindparam("order_id"))
    .with_for_update()
)


def alembic_config(url: str) -> AlembicConfig:
    config = AlembicConfig()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


def upgrade(engine: Engine) -> None:
    """Apply every migration (idempotent)."""
    config = alembic_config(engine.url.render_as_string(hide_password=False))
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, "head")


def current_revision(engine: Engine) -> str | None:
    with engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()


def head_revision() -> str | None:
    script = ScriptDirectory.from_config(alembic_config("sqlite://"))
    return script.get_current_head()


def check_migrated(engine: Engine) -> None:
    current, head = current_revision(engine), head_revision()
    if current != head:
        raise StoreNotMigrated(
            f"the store is at revision {current or 'none'}, the code needs {head}; "
            "run `refund-bridge db upgrade`"
        )


class Store:
    """The engine and session factory an app (or the worker, or a command) works with."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.dialect = "sqlite" if url.startswith("sqlite") else "postgresql"
        database = make_url(url).database
        self._write_lock = _sqlite_write_lock(database) if self.dialect == "sqlite" else None
        self._checkpointer = _sqlite_checkpointer(database) if self.dialect == "sqlite" else None
        self.engine = make_engine(url, write_lock=self._write_lock, checkpointer=self._checkpointer)
        self.sessionmaker = sessionmaker(self.engine, expire_on_commit=False)
        self.read_sessionmaker = sessionmaker(
            self.engine.execution_options(**{READ_ONLY: True}), expire_on_commit=False
        )
        # Per-process group writers by name (bridge/store/group_commit.py), made on first use.
        self.writers: dict[str, Any] = {}
        self._driver = _DriverConnection(self.engine)

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A session whose transaction commits on success and rolls back on error."""
        with self.sessionmaker() as session, session.begin():
            yield session

    @contextmanager
    def read_session(self) -> Iterator[Session]:
        """A session that only reads: on SQLite a deferred transaction (no write lock, no
        wait behind writers in WAL mode), so the many small reads of a request do not queue
        with the writes."""
        with self.read_sessionmaker() as session, session.begin():
            yield session

    @contextmanager
    def transaction(self, *, read_only: bool = False) -> Iterator[DriverTransaction]:
        """A transaction for Core statements run by the driver (bridge/store/driver.py) on a
        connection of the engine's pool: what a session does for them, without the session's
        and the engine's per-statement work (a refund request's hot path: docs/performance.md).
        Commits on success, rolls back on error; callbacks given to `after_commit` run after
        the commit.

        SQLite: `BEGIN IMMEDIATE` under the store's write lock, as a session's write (the
        paced checkpoint after); `read_only`: no lock and no BEGIN, for one statement.
        PostgreSQL: the driver's own transaction."""
        pooled = self.engine.raw_connection()
        connection: Any = pooled.dbapi_connection
        write_lock = None if read_only else self._write_lock
        locked = False
        try:
            if write_lock is not None:
                # As a session's write: when the lock timed out, SQLite's own locking decides.
                locked = write_lock.acquire(SQLITE_BUSY_TIMEOUT_MS / 1000)
                connection.execute("BEGIN IMMEDIATE")
            transaction = DriverTransaction(connection, self.engine)
            try:
                yield transaction
                connection.commit()
            except BaseException:
                with suppress(Exception):
                    connection.rollback()
                if getattr(connection, "broken", False):
                    pooled.invalidate()  # PostgreSQL went away: not back into the pool
                raise
        finally:
            if locked and write_lock is not None:
                write_lock.release()
            pooled.close()
            if write_lock is not None:
                self.after_write()
        transaction.committed()

    @contextmanager
    def driver_write(self) -> Iterator[Any]:
        """The process's own driver connection (sqlite3 or psycopg) for one write, outside
        SQLAlchemy's pool, events and statement work: for a hot path that writes plain rows
        (the inbox's group write, docs/performance.md). One thread at a time.

        SQLite: inside `BEGIN IMMEDIATE` ... `COMMIT` (rolled back on error), under the store's
        write lock. PostgreSQL: in autocommit, each statement its own transaction (one round
        trip): write with one statement (a data-modifying `WITH` inserts into several tables
        atomically)."""
        if self._write_lock is None:
            with self._driver.lock:
                yield self._driver.get()
            return
        if not self._write_lock.acquire(SQLITE_BUSY_TIMEOUT_MS / 1000):
            raise sqlite3.OperationalError("database is locked (the write lock timed out)")
        try:
            connection = self._driver.get()
            connection.execute("BEGIN IMMEDIATE")
            try:
                yield connection
                connection.execute("COMMIT")
            except BaseException:
                if connection.in_transaction:
                    with suppress(sqlite3.Error):
                        connection.execute("ROLLBACK")
                raise
        finally:
            self._write_lock.release()

    def after_write(self) -> None:
        """What a thread that wrote with `driver_write` does once its answer is settled: the
        SQLite store's paced WAL checkpoint when one is due (writes through sessions do it when
        their connection goes back to the pool); nothing on PostgreSQL."""
        if self._checkpointer is not None:
            self._checkpointer.after_write()

    def dispose(self) -> None:
        self.writers.clear()
        self._driver.close()
        if self._checkpointer is not None:
            self._checkpointer.close()
        self.engine.dispose()


class _DriverConnection:
    """A store's own driver connection in this process (`Store.driver_write`), opened
    on first use with the engine's own connect arguments and settings; opened anew in a
    forked child, and after a PostgreSQL connection broke or sat idle too long to trust."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self.lock = threading.Lock()
        self._connection: Any = None
        self._pid = 0
        self._used = 0.0

    def get(self) -> Any:
        connection = self._connection
        if connection is None or self._pid != os.getpid() or self._stale(connection):
            dialect = self._engine.dialect
            cargs, cparams = dialect.create_connect_args(self._engine.url)
            connection = dialect.connect(*cargs, **cparams)
            if dialect.name == "sqlite":
                _sqlite_settings(connection)
            else:
                connection.autocommit = True  # one statement is one transaction
            self._connection, self._pid = connection, os.getpid()
        self._used = time.monotonic()
        return connection

    def _stale(self, connection: Any) -> bool:
        if self._engine.dialect.name == "sqlite":
            return False
        if connection.closed or connection.broken:
            return True
        if time.monotonic() - self._used < PING_AFTER_IDLE_SECONDS:
            return False
        try:
            connection.execute("SELECT 1")
        except psycopg.Error:
            return True
        return False

    def close(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None and self._pid == os.getpid():
            with suppress(Exception):
                connection.close()


def get_store() -> Store:
    store: Store = current_app.extensions["bridge.store"]
    return store


def init_app(app: Flask) -> None:
    url = app.config.get("DATABASE_URL") or default_database_url(app.instance_path)
    store = Store(url)
    app.extensions["bridge.store"] = store
    if app.config.get("AUTO_MIGRATE"):
        upgrade(store.engine)
