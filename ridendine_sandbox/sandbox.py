"""The sandbox's state and rules: refunds, idempotent answers, the record of every call and
every webhook, and what each scenario sends. In memory, one process, guarded by one lock."""

from __future__ import annotations

import itertools
import json
import secrets
import threading
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ridendine_sandbox.config import Behaviour, SandboxConfig
from ridendine_sandbox.delivery import Deliverer, Message, now_iso

# The records kept for inspection; older ones are dropped (a benchmark may send many).
MAX_RECORDS = 10_000


@dataclass(frozen=True)
class Answer:
    """What /refunds/create answers: a status and a JSON body."""

    status: int
    body: dict[str, Any]
    replayed: bool = False
    scenario: str | None = None
    # `early`: the webhook the answer waits for.
    wait_for: Message | None = None


@dataclass(frozen=True)
class StoredAnswer:
    fingerprint: str
    status: int
    body: dict[str, Any]
    scenario: str


@dataclass(frozen=True)
class Refund:
    refund_id: str
    idempotency_key: str
    ridendine_order_id: str
    external_order_id: str
    amount_cents: int
    reason: str
    requested_by: str
    scenario: str
    created_at: str

    def as_dict(self) -> dict[str, Any]:
        return dict(vars(self))


def error_body(code: str, message: str, **extra: Any) -> dict[str, Any]:
    """RideNDine's error shape: {"error": {"code", "message", ...}}."""
    return {"error": {"code": code, "message": message, **extra}}


def new_refund_id() -> str:
    return "re_" + secrets.token_hex(12)


def new_webhook_id() -> str:
    return "msg_" + secrets.token_hex(12)


class Sandbox:
    """One sandbox: its configuration, current behaviour, records and webhook deliverer."""

    def __init__(self, config: SandboxConfig) -> None:
        self.config = config
        self._lock = threading.RLock()
        self._behaviour = config.behaviour
        self._rules: dict[str, dict[str, Any]] = {}
        self._requests: deque[dict[str, Any]] = deque(maxlen=MAX_RECORDS)
        self._messages: deque[Message] = deque(maxlen=MAX_RECORDS)
        self._refunds: dict[str, Refund] = {}
        self._answers: dict[str, StoredAnswer] = {}
        self._flaky_calls: dict[str, int] = {}
        self._seq = itertools.count(1)
        self.deliverer = Deliverer(config, self._lock)

    # -- behaviour -------------------------------------------------------------------------

    @property
    def behaviour(self) -> Behaviour:
        with self._lock:
            return self._behaviour

    def update_behaviour(self, changes: Mapping[str, Any]) -> Behaviour:
        with self._lock:
            self._behaviour = self._behaviour.updated(changes)
            return self._behaviour

    def set_rule(self, external_order_id: str, changes: Mapping[str, Any]) -> None:
        with self._lock:
            self._rules[external_order_id] = dict(changes)

    def rules(self) -> dict[str, dict[str, Any]]:
        with self._lock:
            return {order: dict(rule) for order, rule in self._rules.items()}

    def behaviour_for(self, external_order_id: str) -> Behaviour:
        with self._lock:
            rule = self._rules.get(external_order_id)
            return self._behaviour.updated(rule) if rule else self._behaviour

    # -- POST /refunds/create --------------------------------------------------------------

    def create_refund(self, idempotency_key: str, body: Mapping[str, Any]) -> Answer:
        """Apply the scenario to a valid request (key and body already checked)."""
        fingerprint = json.dumps(body, sort_keys=True, separators=(",", ":"))
        with self._lock:
            stored = self._answers.get(idempotency_key)
            if stored is not None:
                if stored.fingerprint != fingerprint:
                    return Answer(
                        409,
                        error_body(
                            "idempotency_key_reused",
                            "This Idempotency-Key was used with a different request body.",
                        ),
                        scenario=stored.scenario,
                    )
                return Answer(stored.status, stored.body, replayed=True, scenario=stored.scenario)

            behaviour = self.behaviour_for(str(body["external_order_id"]))
            scenario = behaviour.scenario
            if scenario == "flaky":
                calls = self._flaky_calls.get(idempotency_key, 0) + 1
                self._flaky_calls[idempotency_key] = calls
                if calls <= behaviour.flaky_failures:
                    # Not stored: a retry with the same key is processed again.
                    return Answer(
                        503,
                        error_body(
                            "service_unavailable", "Temporarily unavailable, try again later."
                        ),
                        scenario=scenario,
                    )
            if scenario == "reject":
                answer_body = error_body("refund_rejected", behaviour.reject_message)
                self._answers[idempotency_key] = StoredAnswer(
                    fingerprint, behaviour.reject_status, answer_body, scenario
                )
                return Answer(behaviour.reject_status, answer_body, scenario=scenario)

            refund = Refund(
                refund_id=new_refund_id(),
                idempotency_key=idempotency_key,
                ridendine_order_id=str(body["ridendine_order_id"]),
                external_order_id=str(body["external_order_id"]),
                amount_cents=int(body["amount_cents"]),
                reason=str(body["reason"]),
                requested_by=str(body["requested_by"]),
                scenario=scenario,
                created_at=now_iso(),
            )
            self._refunds[refund.refund_id] = refund
            answer_body = {"refund_id": refund.refund_id, "status": "pending"}
            self._answers[idempotency_key] = StoredAnswer(fingerprint, 201, answer_body, scenario)
            first = self._plan_webhooks(refund, behaviour)
        return Answer(
            201, answer_body, scenario=scenario, wait_for=first if scenario == "early" else None
        )

    def _plan_webhooks(self, refund: Refund, behaviour: Behaviour) -> Message | None:
        """Schedule the scenario's webhooks; returns the first one."""
        delay = behaviour.delay_seconds
        gap = delay + behaviour.gap_seconds
        plans: list[tuple[float, str, str | None, str]] = []  # delay, status, webhook-id, kind
        match behaviour.scenario:
            case "succeed" | "flaky":
                plans = [(delay, "REFUNDED", None, "result")]
            case "fail":
                plans = [(delay, "FAILED", None, "result")]
            case "duplicate":
                first_id = new_webhook_id()
                plans = [(delay, "REFUNDED", first_id, "result")]
                plans += [(delay, "REFUNDED", first_id, "duplicate")] * behaviour.duplicates
                plans += [(delay, "REFUNDED", None, "duplicate")] * behaviour.duplicates
            case "out_of_order":
                plans = [(delay, "FAILED", None, "result"), (gap, "REFUNDED", None, "result")]
            case "refunded_then_failed":
                plans = [(delay, "REFUNDED", None, "result"), (gap, "FAILED", None, "result")]
            case "early":
                plans = [(0.0, "REFUNDED", None, "result")]
            case "late":
                plans = [(behaviour.late_delay_seconds, "REFUNDED", None, "result")]
            case _:  # silent
                plans = []
        first: Message | None = None
        for due, status, same_id, kind in plans:
            message = self.send_event(
                self.result_event(refund, status, behaviour),
                url=behaviour.bridge_webhook_url,
                delay=due,
                webhook_id=same_id,
                kind=kind,
            )
            first = first or message
        return first

    def result_event(self, refund: Refund, status: str, behaviour: Behaviour) -> dict[str, Any]:
        event: dict[str, Any] = {
            "refund_id": refund.refund_id,
            "external_order_id": refund.external_order_id,
            "amount_cents": refund.amount_cents,
            "status": status,
            "reason": refund.reason,
            "currency_code": self.config.currency_code,
        }
        if status == "FAILED":
            event["failure_reason"] = behaviour.failure_reason
        return event

    # -- webhooks --------------------------------------------------------------------------

    def send_event(
        self,
        event: dict[str, Any],
        *,
        url: str | None,
        delay: float = 0.0,
        webhook_id: str | None = None,
        kind: str = "manual",
    ) -> Message:
        """Deliver `event` after `delay` seconds (signed, retried until 2xx or attempts end)."""
        with self._lock:
            message = Message(
                delivery_id=next(self._seq),
                webhook_id=webhook_id or new_webhook_id(),
                url=url,
                event=event,
                body=json.dumps(event, separators=(",", ":"), ensure_ascii=False),
                kind=kind,
                due_in_seconds=delay,
            )
            self._messages.append(message)
        self.deliverer.schedule(message, delay)
        return message

    def refund(self, refund_id: str) -> Refund | None:
        with self._lock:
            return self._refunds.get(refund_id)

    # -- records ---------------------------------------------------------------------------

    def record_request(self, entry: dict[str, Any]) -> None:
        with self._lock:
            self._requests.append({"seq": next(self._seq), "received_at": now_iso(), **entry})

    def requests(self, **filters: str) -> list[dict[str, Any]]:
        with self._lock:
            entries = list(self._requests)
        return [e for e in entries if _matches(e, filters)]

    def deliveries(self, **filters: str) -> list[dict[str, Any]]:
        with self._lock:
            messages = [message.as_dict() for message in self._messages]
        return [m for m in messages if _matches(m, filters)]

    def refunds(self, **filters: str) -> list[dict[str, Any]]:
        with self._lock:
            refunds = [refund.as_dict() for refund in self._refunds.values()]
        return [r for r in refunds if _matches(r, filters)]

    def reset(self) -> None:
        """Forget everything and cancel webhooks not yet sent; back to the starting behaviour."""
        self.deliverer.cancel_pending()
        with self._lock:
            for message in self._messages:
                if message.state in ("scheduled", "delivering"):
                    message.state = "cancelled"
            self._behaviour = self.config.behaviour
            self._rules.clear()
            self._requests.clear()
            self._messages.clear()
            self._refunds.clear()
            self._answers.clear()
            self._flaky_calls.clear()

    def close(self) -> None:
        self.deliverer.close()


def _matches(entry: Mapping[str, Any], filters: Mapping[str, str]) -> bool:
    for name, wanted in filters.items():
        value = entry.get(name)
        if value is None and isinstance(entry.get("body"), dict):
            value = entry["body"].get(name)
        if value is None or str(value) != wanted:
            return False
    return True
