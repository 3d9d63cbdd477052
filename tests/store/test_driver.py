"""`Store.transaction`: Core statements run by the driver write what a session writes, on SQLite
and PostgreSQL; errors, rollback, commit callbacks and SQLite's write lock as with a session."""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError

from bridge.jobs import outbox
from bridge.ledger import ledger
from bridge.refunds import approval, intake, submission
from bridge.store import db
from bridge.store.driver import Transaction
from bridge.store.models import Refund, RefundStatus, utcnow


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request: pytest.FixtureRequest, database_url: str) -> Iterator[db.Store]:
    url = database_url if request.param == "sqlite" else request.getfixturevalue("postgres_url")
    store = db.Store(url)
    db.upgrade(store.engine)
    yield store
    store.dispose()


AT = datetime(2026, 12, 4, 10, 30, 15, 123456, tzinfo=UTC)


def _refund(refund_id: str, order_id: str) -> Refund:
    refund = Refund(
        id=refund_id,
        created_at=AT,
        order_id=order_id,
        ridendine_order_id="rdn-" + order_id,
        amount_cents=1550,
        order_paid_cents=4000,
        currency="EUR",
        reason="customer_cancel",
        reason_comments="späte Lieferung",  # not ASCII
        requested_by="customer",
        requested_by_user="user-1",
        items=[{"external_id": "i1", "name": "Soup", "quantity": 1, "amount_cents": 1550}],
        status=RefundStatus.PENDING,
    )
    ledger.record_created(refund, detail="requested by customer")
    return refund


def _write(transaction: Transaction, tag: str) -> None:
    """A refund request's statements, as intake, submission and projection run them."""
    order_id, refund_id = f"ord-{tag}", f"rf_{tag}"
    db.lock_order(transaction, order_id)
    transaction.execute(
        intake._INSERT_KEY,
        {
            "caller": "svc",
            "key": f"key-{tag}",
            "request_hash": "ab" * 32,
            "refund_id": refund_id,
            "created_at": AT,
        },
    )
    assert ledger.refundable_cents(transaction, order_id, 4000) == 4000
    assert approval.self_service_cents(transaction, order_id) == 0
    refund = _refund(refund_id, order_id)
    ledger.insert_new(transaction, refund)
    jobs = [
        outbox.enqueue(transaction, "project_refund", f"p1:{tag}", refund_id=refund_id),
        outbox.enqueue(
            transaction,
            "submit_refund",
            f"s:{tag}",
            refund_id=refund_id,
            payload={"note": "ü"},
            lease_to="request:1",
        ),
        outbox.enqueue(transaction, "project_refund", f"p2:{tag}", refund_id=refund_id),
    ]
    assert all(isinstance(job, int) for job in jobs)
    # The same dedupe key again: nothing, as the session's ON CONFLICT DO NOTHING.
    assert outbox.enqueue(transaction, "project_refund", f"p1:{tag}", refund_id=refund_id) is None
    assert ledger.refundable_cents(transaction, order_id, 4000) == 4000 - 1550
    assert approval.self_service_cents(transaction, order_id) == 1550
    assert outbox.keep_lease(transaction, jobs[1], owner="request:1")
    assert not outbox.keep_lease(transaction, jobs[1], owner="someone else")
    assert submission._accept_known(
        transaction, refund, submission.RefundAccepted(status=200, refund_id=f"re_{tag}", body={})
    )
    assert outbox.mark_done(transaction, jobs[1], owner="request:1")
    pending = outbox.pending_job_ids(
        transaction, "project_refund", refund_id, owner=None, exclude=-1
    )
    assert sorted(pending) == sorted([jobs[0], jobs[2]])
    assert outbox.complete_superseded_in(transaction, pending, owner=None) == 2
    answer = intake.Answer(status=202, body={"refund": {"id": refund_id, "n": 1.5}})
    intake._save_answer_in(transaction, "svc", f"key-{tag}", answer)


# Columns whose value is the time of writing, or an id given by the database.
_VARYING = {"id", "created_at", "updated_at", "next_attempt_at", "locked_until", "done_at", "at"}


def _rows(store: db.Store, tag: str) -> dict[str, list[dict[str, Any]]]:
    """The rows a `_write` left, as the database holds them (no SQLAlchemy type processing),
    with the tag taken out and the times reduced to their shape."""
    tables = {
        "refunds": "id = :refund",
        "refund_status_changes": "refund_id = :refund",
        "outbox_jobs": "refund_id = :refund",
        "idempotency_keys": "refund_id = :refund",
        "order_locks": "order_id = :order",
    }
    found: dict[str, list[dict[str, Any]]] = {}
    with store.engine.connect() as connection:
        for table, where in tables.items():
            rows = connection.execute(
                text(f"SELECT * FROM {table} WHERE {where} ORDER BY 1"),
                {"refund": f"rf_{tag}", "order": f"ord-{tag}"},
            ).mappings()
            found[table] = [
                {column: _plain(column, value, tag) for column, value in row.items()}
                for row in rows
            ]
    return found


def _plain(column: str, value: Any, tag: str) -> Any:
    if isinstance(value, datetime):
        assert value.tzinfo is not None, column  # PostgreSQL: timestamptz
        return "<time>" if column in _VARYING else value
    if isinstance(value, dict | list):  # PostgreSQL's JSON, decoded by the driver
        value = json.dumps(value, sort_keys=True)
    if isinstance(value, str):
        value = value.replace(tag, "<tag>")
        if column in _VARYING:
            return re.sub(r"\d", "9", value)  # SQLite: the text's format, not the time
    if isinstance(value, int) and column == "id":
        return "<id>"
    return value


def test_a_driver_transaction_writes_the_rows_a_session_writes(store: db.Store) -> None:
    with store.session() as session:
        _write(session, "session")
    with store.transaction() as transaction:
        _write(transaction, "driver")

    by_session, by_driver = _rows(store, "session"), _rows(store, "driver")
    differing = [
        (table, column, row[column], by_driver[table][number].get(column))
        for table, rows in by_session.items()
        for number, row in enumerate(rows)
        for column in row
        if len(by_driver[table]) != len(rows) or by_driver[table][number][column] != row[column]
    ]
    assert differing == []
    assert len(by_session["outbox_jobs"]) == 3
    assert len(by_session["refund_status_changes"]) == 2  # created, accepted by RideNDine
    if store.dialect == "postgresql":
        assert by_session["order_locks"] == [{"order_id": "ord-<tag>", "created_at": "<time>"}]
    # And read back through the models, the same values of the same types.
    with store.read_session() as session:
        refunds = [session.get(Refund, f"rf_{tag}") for tag in ("session", "driver")]
        assert refunds[0] is not None and refunds[1] is not None
        assert refunds[1].created_at == refunds[0].created_at == AT
        assert refunds[1].items == refunds[0].items
        assert refunds[1].ridendine_refund_id == "re_driver"
        assert [change.detail for change in refunds[1].history] == [
            change.detail.replace("session", "driver") if change.detail else None
            for change in refunds[0].history
        ]
        record = session.execute(intake._KEY_RECORD, {"b_caller": "svc", "b_key": "key-driver"})
        assert record.one().response_body == {"refund": {"id": "rf_driver", "n": 1.5}}


def test_an_integrity_error_is_sqlalchemys_and_rolls_the_transaction_back(
    store: db.Store,
) -> None:
    values = {"caller": "svc", "key": "dup", "request_hash": "x", "created_at": utcnow()}
    with store.transaction() as transaction:
        transaction.execute(intake._INSERT_KEY, values)
    with pytest.raises(IntegrityError), store.transaction() as transaction:
        ledger.insert_new(transaction, _refund("rf_lost", "ord-lost"))
        transaction.execute(intake._INSERT_KEY, values)
    with store.read_session() as session:
        assert session.get(Refund, "rf_lost") is None
    # The connection went back to the pool usable.
    with store.transaction() as transaction:
        assert ledger.refundable_cents(transaction, "ord-lost", 100) == 100


def test_callbacks_run_after_the_commit_and_never_after_a_rollback(store: db.Store) -> None:
    seen: list[str] = []
    with store.transaction() as transaction:
        transaction.after_commit(lambda: seen.append("committed"))
        assert seen == []
    assert seen == ["committed"]
    with pytest.raises(RuntimeError), store.transaction() as transaction:
        transaction.after_commit(lambda: seen.append("rolled back"))
        raise RuntimeError("boom")
    assert seen == ["committed"]


def test_a_read_only_transaction_reads_what_was_committed(store: db.Store) -> None:
    values = {"caller": "svc", "key": "seen", "request_hash": "x", "created_at": utcnow()}
    key = {"b_caller": "svc", "b_key": "seen"}
    with store.transaction(read_only=True) as transaction:
        assert transaction.scalar(intake._KEY_EXISTS, key) is None
    with store.transaction() as transaction:
        transaction.execute(intake._INSERT_KEY, values)
    with store.transaction(read_only=True) as transaction:
        assert transaction.scalar(intake._KEY_EXISTS, key) == "svc"


def _blocked_for(store: db.Store, hold: Callable[[], Any]) -> float:
    """How long a session's write waited while `hold()`'s transaction was open."""
    waited: list[float] = []
    started = threading.Event()

    def other_writer() -> None:
        started.set()
        begin = time.monotonic()
        with store.session() as session:
            db.lock_order(session, "ord-shared")
        waited.append(time.monotonic() - begin)

    with hold() as transaction:
        db.lock_order(transaction, "ord-shared")
        thread = threading.Thread(target=other_writer)
        thread.start()
        started.wait(5)
        time.sleep(0.4)
    thread.join(10)
    return waited[0]


def test_a_write_transaction_holds_the_order_lock_against_sessions(store: db.Store) -> None:
    """SQLite: the store's write lock; PostgreSQL: the order's row lock."""
    assert _blocked_for(store, store.transaction) >= 0.3


def test_a_naive_time_is_refused_as_by_a_session(store: db.Store) -> None:
    values = {
        "caller": "svc",
        "key": "naive",
        "request_hash": "x",
        "created_at": datetime(2026, 1, 1) + timedelta(0),
    }
    with pytest.raises(Exception, match="naive datetime"), store.transaction() as transaction:
        transaction.execute(intake._INSERT_KEY, values)
