"""`refund-bridge inbox list|show|replay`: the operators' view of the refund-status webhooks.

`list` shows events (newest first), `show` one event with its payload, kept headers and the
outbox jobs it caused (never a secret: the inbox keeps no Authorization header), `replay` runs
the matching of an unmatched or failed event again after an operator fixed the data.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import click
from sqlalchemy import or_, select
from sqlalchemy.exc import SQLAlchemyError

from bridge.cli.base import CommandFailed, one_line_errors, settings_from_env
from bridge.ledger.ledger import iso
from bridge.services import Services, build_services
from bridge.store.models import InboxEvent, InboxState, OutboxJob

STATES = [state.value for state in InboxState]
# Headers never shown, even if a future version stored them.
HIDDEN_HEADERS = frozenset({"authorization", "cookie", "x-api-key"})


@contextmanager
def _services() -> Iterator[Services]:
    services = build_services(settings_from_env())
    try:
        yield services
    except SQLAlchemyError as exc:
        raise CommandFailed(f"store: {type(exc).__name__}: {_first_line(exc)}") from None
    finally:
        services.close()


def _first_line(exc: Exception) -> str:
    text = str(exc.args[0]) if exc.args else type(exc).__name__
    return text.splitlines()[0] if text else type(exc).__name__


def event_summary(event: InboxEvent) -> dict[str, Any]:
    return {
        "id": event.id,
        "received_at": iso(event.received_at),
        "state": event.state,
        "status": event.status,
        "ridendine_refund_id": event.ridendine_refund_id,
        "external_order_id": event.external_order_id,
        "amount_cents": event.amount_cents,
        "refund_id": event.refund_id,
        "attempts": event.attempts,
        "next_attempt_at": iso(event.next_attempt_at),
        "last_error": event.last_error,
    }


def event_detail(event: InboxEvent, jobs: list[OutboxJob]) -> dict[str, Any]:
    body = event_summary(event)
    try:
        raw = event.raw_body.decode("utf-8")
    except UnicodeDecodeError:
        raw = event.raw_body.hex()
    body.update(
        webhook_id=event.webhook_id,
        processed_at=iso(event.processed_at),
        headers={k: v for k, v in (event.headers or {}).items() if k not in HIDDEN_HEADERS},
        payload=event.payload,
        raw_body=raw,
        jobs=[
            {
                "id": job.id,
                "kind": job.kind,
                "state": job.state,
                "attempts": job.attempts,
                "next_attempt_at": iso(job.next_attempt_at),
                "last_error": job.last_error,
            }
            for job in jobs
        ],
    )
    return body


def _jobs_of(session: Any, event: InboxEvent) -> list[OutboxJob]:
    """The event's processing jobs, and the jobs of the refund it was applied to."""
    conditions = [
        OutboxJob.dedupe_key == f"event:{event.id}",
        OutboxJob.dedupe_key.like(f"resolve:{event.id}%"),
    ]
    if event.refund_id:
        conditions.append(OutboxJob.refund_id == event.refund_id)
    return list(session.scalars(select(OutboxJob).where(or_(*conditions)).order_by(OutboxJob.id)))


def _line(event: InboxEvent) -> str:
    error = f"  {event.last_error[:80]}" if event.last_error else ""
    return (
        f"{event.id:>6}  {iso(event.received_at)}  {event.state:<9}  {event.status:<8}  "
        f"order={event.external_order_id}  ridendine={event.ridendine_refund_id}  "
        f"amount={event.amount_cents}  refund={event.refund_id or '-'}  "
        f"attempts={event.attempts}{error}"
    )


@click.group()
def inbox() -> None:
    """The refund-status webhooks the bridge received."""


@inbox.command("list")
@click.option("--state", type=click.Choice(STATES), help="only events in this state")
@click.option("--limit", default=50, show_default=True, type=click.IntRange(1, 10_000))
@click.option("--json", "as_json", is_flag=True, help="one JSON object per line")
@one_line_errors
def inbox_list(state: str | None, limit: int, as_json: bool) -> None:
    """List events, newest first."""
    with _services() as services, services.store.session() as session:
        query = select(InboxEvent).order_by(InboxEvent.id.desc()).limit(limit)
        if state:
            query = query.where(InboxEvent.state == state)
        events = list(session.scalars(query))
        for event in events:
            click.echo(json.dumps(event_summary(event)) if as_json else _line(event))
        if not events and not as_json:
            click.echo("no inbox events" + (f" in state {state}" if state else ""))


@inbox.command("show")
@click.argument("event_id", type=int)
@one_line_errors
def inbox_show(event_id: int) -> None:
    """One event as JSON: payload, kept headers, raw body, and its jobs."""
    with _services() as services, services.store.session() as session:
        event = session.get(InboxEvent, event_id)
        if event is None:
            raise CommandFailed(f"inbox event {event_id} does not exist")
        click.echo(json.dumps(event_detail(event, _jobs_of(session, event)), indent=2))


@inbox.command("replay")
@click.argument("event_id", type=int)
@one_line_errors
def inbox_replay(event_id: int) -> None:
    """Match and apply an unmatched or failed event again (after fixing the data)."""
    from bridge.webhooks import inbox as webhook_inbox

    with _services() as services:
        try:
            event = webhook_inbox.replay(services, event_id)
        except (webhook_inbox.EventNotFound, webhook_inbox.NothingToReplay) as exc:
            raise CommandFailed(str(exc)) from None
    if event.state != InboxState.APPLIED:
        reason = f": {event.last_error}" if event.last_error else ""
        later = "; the worker retries it" if event.state != InboxState.FAILED else ""
        raise CommandFailed(f"inbox event {event_id} is still {event.state}{reason}{later}")
    click.echo(f"inbox event {event_id} applied to refund {event.refund_id}")


COMMANDS = (inbox,)
