"""SQLAlchemy Core statements run on the driver's own connection, without a session.

A refund request writes four small transactions of a dozen Core statements in all; through a
session, each statement's execution machinery (events, the result's metadata, the unit of
work's begin and commit) cost more CPU than the statement itself (docs/performance.md, the
tenth pass). `DriverTransaction` runs the same statement objects: compiled once per dialect by
SQLAlchemy's own compiler, their parameters filled in and converted by the same Python-side
defaults and type processors, then handed to the driver's cursor. So the rows written are the
ones a session writes (tests/store/test_driver.py compares them).

What comes back is the driver's values, not converted: use it for statements whose results are
numbers, ids or row counts. Errors are SQLAlchemy's (`IntegrityError`, ...), as from a session.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

from sqlalchemy import Engine
from sqlalchemy.exc import DBAPIError
from sqlalchemy.sql import Executable
from sqlalchemy.sql.dml import ValuesBase

# Statements compiled and kept per dialect. The hot paths' statements are built once at import
# (a few dozen); a statement built per call is compiled per call rather than kept.
MAX_KEPT_STATEMENTS = 256


class Transaction(Protocol):
    """What the ledger's, the outbox's and the projection's functions need of the transaction
    they write in: a `Session`, or a `DriverTransaction`."""

    def execute(self, statement: Any, params: Any = None, /) -> Any: ...

    def scalar(self, statement: Any, params: Any = None, /) -> Any: ...

    def scalars(self, statement: Any, params: Any = None, /) -> Any: ...

    def get_bind(self) -> Any: ...

    def flush(self) -> None: ...


class DriverResult:
    """A statement's outcome: its rows fetched at once (a pending SQLite statement would keep
    the transaction from committing), and the rows it changed."""

    __slots__ = ("rowcount", "rows")

    def __init__(self, rows: list[Sequence[Any]], rowcount: int) -> None:
        self.rows = rows
        self.rowcount = rowcount

    def scalar(self) -> Any:
        return self.rows[0][0] if self.rows else None

    def scalars(self) -> list[Any]:
        return [row[0] for row in self.rows]

    def first(self) -> Sequence[Any] | None:
        return self.rows[0] if self.rows else None


class DriverTransaction:
    """One transaction on a DBAPI connection that the caller began and ends
    (`Store.transaction`). It holds no ORM objects."""

    def __init__(self, connection: Any, engine: Engine) -> None:
        self._connection = connection
        self._engine = engine
        self._dialect = engine.dialect
        self._on_commit: list[Callable[[], None]] = []

    def get_bind(self) -> Engine:
        return self._engine

    def flush(self) -> None:
        """Nothing is held back: every statement ran when it was executed."""

    def execute(self, statement: Executable, params: Any = None, /) -> DriverResult:
        many = isinstance(params, list)
        first = (params[0] if params else {}) if many else (params or {})
        prepared = _prepared(statement, self._dialect, first)
        cursor = self._connection.cursor()
        sql = prepared.sql
        try:
            if many:
                sql, bound = prepared.bind_many(params)
                cursor.executemany(sql, bound)
            else:
                sql, args = prepared.bind(first)
                cursor.execute(sql, args)
            rows = cursor.fetchall() if cursor.description else []
            return DriverResult(rows, cursor.rowcount)
        except self._dialect.loaded_dbapi.Error as exc:
            raise DBAPIError.instance(
                sql, params, exc, self._dialect.loaded_dbapi.Error, dialect=self._dialect
            ) from exc
        finally:
            cursor.close()

    def scalar(self, statement: Executable, params: Any = None, /) -> Any:
        return self.execute(statement, params).scalar()

    def scalars(self, statement: Executable, params: Any = None, /) -> list[Any]:
        return self.execute(statement, params).scalars()

    def after_commit(self, callback: Callable[[], None]) -> None:
        """Call `callback` once this transaction has committed (never after a rollback)."""
        self._on_commit.append(callback)

    def committed(self) -> None:
        """Told by `Store.transaction` after its COMMIT."""
        callbacks, self._on_commit = self._on_commit, []
        for callback in callbacks:
            callback()


class _Prepared:
    """A statement compiled for one dialect and one set of parameter names."""

    def __init__(self, statement: Any, dialect: Any, keys: Sequence[str] | None) -> None:
        compiled: Any = statement.compile(dialect=dialect, column_keys=keys)
        self._compiled = compiled
        self.sql: str = compiled.string
        self._positiontup: Sequence[str] | None = compiled.positiontup
        # IN (...) with a list, and the like: the SQL is rendered per call.
        self._expands = bool(compiled.literal_execute_params or compiled.post_compile_params)
        # Columns whose Python-side default (INSERT) or onupdate (UPDATE) the statement takes.
        self._defaults = [(column.key, column.default) for column in compiled.insert_prefetch] + [
            (column.key, column.onupdate) for column in compiled.update_prefetch
        ]
        # Each parameter's type processor (dates, JSON, ...), by the name it is bound as.
        escaped = compiled.escaped_bind_names or {}
        self._processors: dict[str, Callable[[Any], Any]] = {}
        for bind, name in compiled.bind_names.items():
            if bind in compiled.literal_execute_params:
                continue  # rendered into the SQL
            process = bind.type.dialect_impl(dialect).bind_processor(dialect)
            if process is not None:
                self._processors[escaped.get(name, name)] = process

    def _values(self, params: Mapping[str, Any]) -> dict[str, Any]:
        values = dict(params)
        for key, default in self._defaults:
            if key not in values:
                values[key] = default.arg(None) if default.is_callable else default.arg
        return values

    def bind(self, params: Mapping[str, Any]) -> tuple[str, Any]:
        values = self._values(params)
        processors: Mapping[str, Callable[[Any], Any]] = self._processors
        if self._expands:
            state = self._compiled.construct_expanded_state(values)
            processors = {**processors, **state.processors}
            sql, bound, order = state.statement, dict(state.parameters), state.positiontup
        else:
            sql, order = self.sql, self._positiontup
            bound = self._compiled.construct_params(values)
        for name, process in processors.items():
            if name in bound:
                bound[name] = process(bound[name])
        if order is not None:
            return sql, tuple(bound[name] for name in order)
        return sql, bound

    def bind_many(self, many: list[Mapping[str, Any]]) -> tuple[str, list[Any]]:
        bound = [self.bind(params) for params in many]
        return bound[0][0], [args for _sql, args in bound]


_kept: dict[tuple[Any, ...], _Prepared] = {}
_kept_lock = threading.Lock()


def _prepared(statement: Executable, dialect: Any, params: Mapping[str, Any]) -> _Prepared:
    # An INSERT or UPDATE without fixed values takes its columns from the parameters.
    keys = tuple(sorted(params)) if isinstance(statement, ValuesBase) else None
    cache_key = (statement, dialect.name, keys)
    prepared = _kept.get(cache_key)
    if prepared is None:
        prepared = _Prepared(statement, dialect, keys)
        with _kept_lock:
            if len(_kept) < MAX_KEPT_STATEMENTS:
                _kept[cache_key] = prepared
    return prepared
