"""The demo data of the local stack, and one refund end to end at COOCO's URLs.

`seed(client)` makes the demo people (two customers and a chef, each with an e-mail and a static
token) and a few demo orders, idempotently: found by e-mail and by order id, never duplicated.

`python -m devstack demo` (`make demo`, and `make dev` once after start-up) runs one refund the
way COOCO does it: a fresh demo order, `POST {DIRECTUS_URL}/ridendine/refunds` with an admin's
Directus token, then it waits (bounded) for RideNDine's result to come back through
`{DIRECTUS_URL}/ridendine/webhooks/refund-status`, and prints the order before and after, the
refund with its history, and the three e-mails read from the SMTP sink's .eml files. Then the
refund policy (docs/refunds.md): the customer Ana asks for a refund of another DELIVERED order
with her own token, which waits for an admin (`REQUESTED`, RideNDine hears nothing), and the
admin approves it at `{DIRECTUS_URL}/ridendine/refunds/<id>/approve`; it ends REFUNDED.
"""

from __future__ import annotations

import argparse
import email
import email.policy
import secrets
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import requests

from devstack.directus import ADMIN_TOKEN, REPO
from directus_client import DirectusClient, DirectusError

DEV_DIR = REPO / ".dev"
DEMO_REASON = "chef_rejected"
DEMO_AMOUNT_CENTS = 2750
EXPECTED_MAILS = 3  # customer, chef, admins
# A waiting request approved at once: the result's 3 (its "being reviewed" notices are skipped
# when the worker reaches them after the decision: docs/refunds.md).
EXPECTED_POLICY_MAILS = EXPECTED_MAILS


@dataclass(frozen=True)
class DemoUser:
    key: str
    email: str
    first_name: str
    last_name: str
    # Local-only static tokens (the dev stack's Directus only; printed by `make dev`).
    token: str


DEMO_USERS = (
    DemoUser(
        "customer", "ana.customer@example.com", "Ana", "Customer", "dev-customer-ana-token-0123"
    ),
    DemoUser(
        "other_customer",
        "ben.customer@example.com",
        "Ben",
        "Customer",
        "dev-customer-ben-token-0123",
    ),
    DemoUser("chef", "carla.chef@example.com", "Carla", "Chef", "dev-chef-carla-token-0123"),
)


@dataclass(frozen=True)
class DemoOrder:
    id: str
    customer: str  # DemoUser.key
    amount_paid_cents: int


DEMO_ORDERS = (
    DemoOrder("demo-1001", "customer", 4250),
    DemoOrder("demo-1002", "other_customer", 1899),
    DemoOrder("demo-1003", "customer", 7500),
)


@dataclass(frozen=True)
class Seeded:
    user_ids: dict[str, str]  # DemoUser.key -> Directus user id
    created: list[str]  # what this run created ("user ...", "order ...")


def seed(client: DirectusClient) -> Seeded:
    """The demo people and orders, created when missing (idempotent)."""
    user_ids: dict[str, str] = {}
    created: list[str] = []
    for user in DEMO_USERS:
        found = client.list_system("users", filter={"email": {"_eq": user.email}}, fields=["id"])
        if found:
            user_ids[user.key] = str(found[0]["id"])
            continue
        made = client.create_system(
            "users",
            {
                "email": user.email,
                "first_name": user.first_name,
                "last_name": user.last_name,
                "token": user.token,
                "status": "active",
            },
        )
        user_ids[user.key] = str(made["id"])
        created.append(f"user {user.email}")
    for order in DEMO_ORDERS:
        if client.find_item("orders", order.id, fields=["id"]) is not None:
            continue
        client.create_item(
            "orders", order_values(order.id, order.amount_paid_cents, order.customer, user_ids)
        )
        created.append(f"order {order.id}")
    return Seeded(user_ids, created)


def order_values(
    order_id: str, amount_paid_cents: int, customer_key: str, user_ids: dict[str, str]
) -> dict[str, Any]:
    return {
        "id": order_id,
        "ridendine_order_id": f"rdn-{order_id}",
        "status": "DELIVERED",
        "payment_status": "PAID",
        "amount_paid_cents": amount_paid_cents,
        "currency": "EUR",
        "customer": user_ids[customer_key],
        "chef": user_ids["chef"],
    }


# -- the demo run ----------------------------------------------------------------------------


def money(cents: Any, currency: Any = "EUR") -> str:
    return f"{cents / 100:.2f} {currency}" if isinstance(cents, int) else "?"


def wait_for(check: Callable[[], Any], *, timeout: float, interval: float = 0.25) -> Any:
    """`check()` until it returns something true, at most `timeout` seconds; the last value."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value or time.monotonic() >= deadline:
            return value
        time.sleep(interval)


@dataclass(frozen=True)
class Mail:
    path: Path
    to: str
    subject: str


def read_mails(maildir: Path, needle: str, skip: set[str]) -> list[Mail]:
    """The .eml files in `maildir` (not named in `skip`) whose subject or body mention
    `needle`, oldest first."""
    found = []
    for path in sorted(maildir.glob("*.eml")):
        if path.name in skip:
            continue
        try:
            message = email.message_from_bytes(path.read_bytes(), policy=email.policy.default)
        except OSError:
            continue  # being written; read on the next round
        assert isinstance(message, EmailMessage)
        text = "\n".join(
            str(part.get_content())
            for part in message.walk()
            if part.get_content_maintype() == "text"
        )
        subject = str(message.get("Subject", ""))
        if needle in subject or needle in text:
            found.append(Mail(path, str(message.get("To", "")), subject))
    return found


def show_order(print_: Callable[[str], None], label: str, order: dict[str, Any]) -> None:
    print_(
        f"  order {order['id']} {label}: status {order.get('status')}, "
        f"payment_status {order.get('payment_status')}, paid "
        f"{money(order.get('amount_paid_cents'), order.get('currency'))}"
    )


def run_demo(
    directus_url: str,
    maildir: Path,
    *,
    admin_token: str = ADMIN_TOKEN,
    order_id: str | None = None,
    timeout: float = 60.0,
    print_: Callable[[str], None] = print,
) -> int:
    """One refund end to end at COOCO's URLs; 0 when it ended REFUNDED with three e-mails."""
    directus_url = directus_url.rstrip("/")
    admin = DirectusClient(directus_url, admin_token)
    http = requests.Session()
    http.headers["Authorization"] = f"Bearer {admin_token}"
    try:
        return _run(admin, http, directus_url, maildir, order_id, timeout, print_)
    finally:
        http.close()
        admin.close()


def _run(
    admin: DirectusClient,
    http: requests.Session,
    directus_url: str,
    maildir: Path,
    order_id: str | None,
    timeout: float,
    print_: Callable[[str], None],
) -> int:
    seeded = seed(admin)
    if order_id is None:
        stamp = datetime.now(tz=UTC).strftime("%Y%m%d-%H%M%S")
        order_id = f"demo-run-{stamp}-{secrets.token_hex(2)}"
        admin.create_item(
            "orders", order_values(order_id, DEMO_AMOUNT_CENTS, "customer", seeded.user_ids)
        )
    before = admin.find_item("orders", order_id)
    if before is None:
        print_(f"demo: there is no order {order_id!r} in Directus")
        return 1
    old_mails = {path.name for path in maildir.glob("*.eml")}
    print_(f"\ndemo: one refund end to end at COOCO's URLs (order {order_id})")
    show_order(print_, "before", before)

    url = f"{directus_url}/ridendine/refunds"
    answer = http.post(
        url,
        json={
            "order_id": order_id,
            "reason": DEMO_REASON,
            "reason_comments": "demo: the chef could not cook this order",
        },
        # One key per run: a retry of this request would reuse it, another run is a new one.
        headers={"Idempotency-Key": f"demo-{order_id}-{secrets.token_hex(4)}"},
        timeout=30,
    )
    body = _json(answer)
    if answer.status_code != 202:
        print_(f"  POST {url} (admin's Directus token) -> {answer.status_code}: {body}")
        print_("demo: FAILED: the refund was not accepted")
        return 1
    refund = body["refund"]
    print_(
        f"  POST {url} (admin's Directus token) -> 202, refund {refund['id']} "
        f"{refund['status']}, {money(refund['amount_cents'], refund['currency'])}, "
        f"requested_by {refund['requested_by']}"
    )

    deadline = time.monotonic() + timeout

    def settled() -> dict[str, Any] | None:
        got = http.get(f"{url}/{refund['id']}", timeout=10)
        current: dict[str, Any] = _json(got).get("refund") or {}
        return current if current.get("status") not in (None, "PENDING") else None

    refund = wait_for(settled, timeout=max(deadline - time.monotonic(), 0)) or refund
    print_(
        f"  refund {refund['id']}: {refund['status']}, RideNDine refund "
        f"{refund.get('ridendine_refund_id')}, reason {refund['reason']}"
    )
    for change in refund.get("history") or []:
        print_(
            f"    {change['at']}  {change['from_status'] or '-'} -> {change['to_status']}"
            f"  ({change['source']}{': ' + change['detail'] if change.get('detail') else ''})"
        )

    def order_applied() -> dict[str, Any] | None:
        current = admin.find_item("orders", order_id)
        paid = (current or {}).get("payment_status")
        return current if paid != before.get("payment_status") else None

    after = wait_for(order_applied, timeout=max(deadline - time.monotonic(), 0))
    show_order(print_, "after", after or admin.find_item("orders", order_id) or before)

    def all_mails() -> list[Mail] | None:
        found = read_mails(maildir, order_id, old_mails)
        return found if len(found) >= EXPECTED_MAILS else None

    # A moment longer than the refund: the worker applies the order, then starts the Flow.
    mails = wait_for(all_mails, timeout=max(deadline - time.monotonic(), 5.0)) or read_mails(
        maildir, order_id, old_mails
    )
    print_(f"  e-mails about {order_id} in {maildir}: {len(mails)}")
    for mail in mails:
        print_(f"    {mail.path.name}  to {mail.to}: {mail.subject}")

    done = (
        refund["status"] == "REFUNDED"
        and after is not None
        and (after.get("payment_status"), after.get("status")) == ("REFUNDED", "CANCELLED")
        and len(mails) == EXPECTED_MAILS
    )
    if done:
        print_(
            f"demo: refund {refund['id']} REFUNDED; order {order_id} payment_status REFUNDED, "
            f"status CANCELLED; {len(mails)} e-mails (customer, chef, admins)"
        )
        return _policy(admin, http, directus_url, maildir, seeded, timeout, print_)
    print_(
        f"demo: FAILED within {timeout:.0f}s: refund {refund['status']}, order "
        f"{(after or before).get('payment_status')}/{(after or before).get('status')}, "
        f"{len(mails)} of {EXPECTED_MAILS} e-mails (logs: see docs/local-stack.md)"
    )
    return 1


def _policy(
    admin: DirectusClient,
    http: requests.Session,
    directus_url: str,
    maildir: Path,
    seeded: Seeded,
    timeout: float,
    print_: Callable[[str], None],
) -> int:
    """A customer's request on a DELIVERED order waits; the admin approves it."""
    old_mails = {path.name for path in maildir.glob("*.eml")}
    customer = next(user for user in DEMO_USERS if user.key == "customer")
    stamp = datetime.now(tz=UTC).strftime("%Y%m%d-%H%M%S")
    order_id = f"demo-wait-{stamp}-{secrets.token_hex(2)}"
    admin.create_item("orders", order_values(order_id, 1250, "customer", seeded.user_ids))
    url = f"{directus_url}/ridendine/refunds"
    print_(f"\ndemo: the refund policy, a customer's request that waits (order {order_id})")
    asked = requests.post(
        url,
        json={"order_id": order_id, "reason": "customer_cancel", "reason_comments": "too late"},
        headers={"Authorization": f"Bearer {customer.token}"},
        timeout=30,
    )
    body = _json(asked)
    refund = body.get("refund") or {}
    print_(
        f"  POST {url} ({customer.email}'s token) -> {asked.status_code}, refund "
        f"{refund.get('id')} {refund.get('status')}: waits for an admin, nothing sent to RideNDine"
    )
    if asked.status_code != 202 or refund.get("status") != "REQUESTED":
        print_(f"demo: FAILED: the customer's request did not wait: {body}")
        return 1
    decision_url = f"{url}/{refund['id']}/approve"
    approved = http.post(decision_url, json={"comment": "demo: approved"}, timeout=30)
    shown = _json(approved).get("refund") or {}
    print_(
        f"  POST {decision_url} (admin's Directus token) -> {approved.status_code}, "
        f"{shown.get('status')}, sent to RideNDine as {shown.get('ridendine_refund_id')}"
    )

    def settled() -> dict[str, Any] | None:
        got = http.get(f"{url}/{refund['id']}", timeout=10)
        current: dict[str, Any] = _json(got).get("refund") or {}
        return current if current.get("status") not in (None, "REQUESTED", "PENDING") else None

    final = wait_for(settled, timeout=timeout) or shown
    for change in final.get("history") or []:
        print_(
            f"    {change['at']}  {change['from_status'] or '-'} -> {change['to_status']}"
            f"  ({change['source']}{': ' + change['detail'] if change.get('detail') else ''})"
        )
    # The worker sends the e-mails after the result is applied: wait for them (bounded).
    mails = wait_for(
        lambda: (
            found
            if len(found := read_mails(maildir, order_id, old_mails)) >= EXPECTED_POLICY_MAILS
            else None
        ),
        timeout=timeout,
    ) or read_mails(maildir, order_id, old_mails)
    print_(f"  e-mails about {order_id} in {maildir}: {len(mails)}")
    for mail in mails:
        print_(f"    {mail.path.name}  to {mail.to}: {mail.subject}")
    if approved.status_code == 200 and final.get("status") == "REFUNDED":
        if len(mails) < EXPECTED_POLICY_MAILS:
            print_(f"demo: FAILED: {len(mails)} of {EXPECTED_POLICY_MAILS} e-mails")
            return 1
        print_(f"demo: refund {refund['id']} waited, was approved by the admin, and is REFUNDED")
        return 0
    print_(f"demo: FAILED: the approved refund is {final.get('status')} after {timeout:.0f}s")
    return 1


def _json(response: requests.Response) -> dict[str, Any]:
    try:
        body = response.json()
    except ValueError:
        return {"text": response.text[:500]}
    return body if isinstance(body, dict) else {"body": body}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m devstack demo", description="one refund end to end at COOCO's URLs"
    )
    add_arguments(parser)
    return run_from_args(parser.parse_args(argv))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--directus-url", default="http://127.0.0.1:8055")
    parser.add_argument(
        "--maildir", type=Path, default=DEV_DIR / "mail", help="the sink's .eml files"
    )
    parser.add_argument("--order", default=None, help="refund this order instead of a fresh one")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds to wait, at most")


def run_from_args(args: argparse.Namespace) -> int:
    try:
        return run_demo(args.directus_url, args.maildir, order_id=args.order, timeout=args.timeout)
    except (requests.RequestException, DirectusError) as exc:
        print(
            f"demo: cannot reach the stack at {args.directus_url} ({type(exc).__name__}); "
            "is `make dev` running?",
            file=sys.stderr,
        )
        return 1
