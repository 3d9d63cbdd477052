"""The bridge's own store: migrations on SQLite and PostgreSQL, a ledger round trip, order locks,
SQLite's WAL checkpoints."""

from __future__ import annotations

import sqlite3
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import select, text

from bridge.store import db
from bridge.store.models import Base, Refund, RefundStatus, RefundStatusChange


def _round_trip(url: str) -> None:
    store = db.Store(url)
    try:
        db.upgrade(store.engine)
        db.upgrade(store.engine)  # idempotent
        db.check_migrated(store.engine)
        with store.session() as session:
            refund = Refund(
                order_id="ord-1",
                ridendine_order_id="rdn-1",
                amount_cents=1234,
                currency="EUR",
                reason="chef_rejected",
                requested_by="admin",
                items=[{"external_id": "i1", "name": "Soup", "quantity": 1, "amount_cents": 1234}],
            )
            refund.history.append(RefundStatusChange(to_status="PENDING", source="request"))
            session.add(refund)
            refund_id = refund.id
        with store.session() as session:
            loaded = session.get(Refund, refund_id)
            assert loaded is not None
            assert loaded.amount_cents == 1234
            assert isinstance(loaded.amount_cents, int)
            assert loaded.status == RefundStatus.PENDING
            assert loaded.needs_review is False
            assert loaded.items and loaded.items[0]["amount_cents"] == 1234
            assert loaded.created_at.tzinfo is not None
            assert abs((datetime.now(UTC) - loaded.created_at).total_seconds()) < 60
            assert [h.to_status for h in loaded.history] == ["PENDING"]
        # The models and the migrations describe the same schema.
        with store.engine.connect() as connection:
            diff = compare_metadata(MigrationContext.configure(connection), Base.metadata)
        assert diff == []
    finally:
        store.dispose()


def test_round_trip_on_sqlite(database_url: str) -> None:
    _round_trip(database_url)
    store = db.Store(database_url)
    with store.engine.connect() as connection:
        assert connection.execute(text("PRAGMA journal_mode")).scalar() == "wal"
    store.dispose()


def test_round_trip_on_postgresql(postgres_url: str) -> None:
    _round_trip(postgres_url)


def test_check_migrated_fails_on_empty_store(database_url: str) -> None:
    store = db.Store(database_url)
    with pytest.raises(db.StoreNotMigrated, match="db upgrade"):
        db.check_migrated(store.engine)
    store.dispose()


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_order_lock_serialises_transactions(
    backend: str, database_url: str, request: pytest.FixtureRequest
) -> None:
    url = database_url if backend == "sqlite" else request.getfixturevalue("postgres_url")
    store = db.Store(url)
    db.upgrade(store.engine)
    events: list[str] = []
    first_holds = threading.Event()

    def first() -> None:
        with store.session() as session:
            db.lock_order(session, "ord-lock")
            events.append("first-locked")
            first_holds.set()
            time.sleep(0.5)
            events.append("first-done")

    def second() -> None:
        first_holds.wait(5)
        with store.session() as session:
            db.lock_order(session, "ord-lock")
            events.append("second-locked")

    threads = [threading.Thread(target=first), threading.Thread(target=second)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(20)
    assert events == ["first-locked", "first-done", "second-locked"]
    # PostgreSQL locks a row of the order; SQLite's write lock needs none.
    expected_rows = ["ord-lock"] if backend == "postgresql" else []
    with store.session() as session:
        assert session.scalars(select(db.OrderLock.order_id)).all() == expected_rows
    store.dispose()


def test_an_order_lock_needs_a_writing_session(database_url: str) -> None:
    store = db.Store(database_url)
    db.upgrade(store.engine)
    with store.read_session() as session, pytest.raises(RuntimeError, match="writing session"):
        db.lock_order(session, "ord-read")
    store.dispose()


def test_sqlite_commits_leave_the_checkpoint_to_the_store(database_url: str) -> None:
    store = db.Store(database_url)
    with store.engine.connect() as connection:
        pages = connection.exec_driver_sql("PRAGMA wal_autocheckpoint").scalar()
    assert pages == db.SQLITE_AUTOCHECKPOINT_PAGES
    store.dispose()


def _checkpointed_store(tmp_path: Path) -> tuple[db.Store, Path]:
    """A migrated SQLite store whose WAL is all in the database file (nothing to checkpoint)."""
    path = tmp_path / "checkpoints.sqlite3"
    store = db.Store(f"sqlite:///{path}")
    db.upgrade(store.engine)
    with sqlite3.connect(path) as connection:
        connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    return store, path


@pytest.mark.parametrize(("interval", "checkpointed"), [(0.0, True), (3600.0, False)])
def test_a_write_is_checkpointed_after_its_commit_at_the_stores_pace(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, interval: float, checkpointed: bool
) -> None:
    # In WAL mode only a checkpoint writes to the database file itself.
    monkeypatch.setattr(db, "SQLITE_CHECKPOINT_INTERVAL_SECONDS", interval)
    store, path = _checkpointed_store(tmp_path)
    before = path.read_bytes()
    with store.session() as session:
        session.add(db.OrderLock(order_id="ord-checkpoint"))
    assert (path.read_bytes() != before) is checkpointed
    before = path.read_bytes()
    with store.driver_write() as connection:
        connection.execute(
            "INSERT INTO order_locks (order_id, created_at) VALUES ('ord-driver', '2026-12-03')"
        )
    assert path.read_bytes() == before  # the driver's write: when its caller says so
    store.after_write()
    assert (path.read_bytes() != before) is checkpointed
    store.dispose()
