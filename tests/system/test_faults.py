"""Faults, each with real processes (tests/support/fault_stack.py): Directus slow beyond the
timeouts, Directus answering 500s, Directus stopped, RideNDine flapping, and kill -9 of the web
process and of the worker at random points across 200 refunds.

After each: every refund reached RideNDine once (one refund per order at the sandbox, with the
bridge's refund id as Idempotency-Key), every webhook was answered and applied, every order is
REFUNDED in Directus, the customer, the chef and the admins were e-mailed, no job is left, and
`refund-bridge reconcile` finds zero mismatches. The counts are recorded for
docs/reliability.md.
"""

from __future__ import annotations

import json
import random
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import requests

from bridge.cli.directus import flow_params
from bridge.config import Settings
from devstack.directus import DirectusServer
from devstack.smtp import SmtpSink
from directus_client import DirectusClient
from flows.sync import ping_refund_result, sync_flows
from tests.support import reliability
from tests.support.fault_stack import ADMINS, FaultStack
from tests.support.helpers import FLOW_SECRET, make_settings, make_user


@pytest.fixture(scope="module")
def stack(
    cooco_directus: DirectusServer,
    directus_admin: DirectusClient,
    smtp_sink: SmtpSink,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[FaultStack]:
    # The project's Flows, as `refund-bridge flows sync` makes them (the e-mails go through).
    settings = make_settings(cooco_directus.url, cooco_directus.admin_token)
    flow_ids = {r.key: str(r.flow_id) for r in sync_flows(directus_admin, flow_params(settings))}
    ping_refund_result(directus_admin, FLOW_SECRET, flow_ids["refund-result"])
    folder = tmp_path_factory.mktemp("faults")
    stack = FaultStack(cooco_directus, directus_admin, smtp_sink, folder).start()
    try:
        yield stack
    finally:
        stack.stop()


@pytest.fixture(scope="module")
def people(directus_admin: DirectusClient) -> dict[str, dict[str, Any]]:
    return {"customer": make_user(directus_admin), "chef": make_user(directus_admin)}


def accepted(answer: requests.Response) -> str:
    assert answer.status_code == 202, answer.text
    refund_id: str = answer.json()["refund"]["id"]
    return refund_id


def unavailable(answer: requests.Response) -> None:
    assert answer.status_code == 503, answer.text
    assert answer.headers["Content-Type"].startswith("application/problem+json")
    assert answer.json()["code"] == "directus_unavailable"


def verify_outcome(
    stack: FaultStack,
    people: dict[str, dict[str, Any]],
    order_ids: list[str],
    *,
    exactly_once_mail: bool = True,
) -> dict[str, Any]:
    """The promises, checked after recovery; returns the counts."""
    stack.settle(order_ids)
    # At most one RideNDine refund per refund id, and per order (one request each).
    created = Counter()
    calls = Counter()
    for order_id in order_ids:
        refunds = stack.sandbox.control.refunds(external_order_id=order_id)
        assert len(refunds) == 1, (order_id, refunds)
        ledger = stack.query("SELECT id, status FROM refunds WHERE order_id = ?", order_id)
        assert len(ledger) == 1 and ledger[0][1] == "REFUNDED", (order_id, ledger)
        assert refunds[0]["idempotency_key"] == ledger[0][0]
        created[order_id] = len(refunds)
        calls[order_id] = len(stack.submissions(order_id))
    # Every webhook recorded and applied; none failed at the sandbox's end.
    wanted = set(order_ids)
    events = [
        (order_id, state)
        for order_id, state in stack.query("SELECT external_order_id, state FROM inbox_events")
        if order_id in wanted
    ]
    assert sorted(order for order, _ in events) == sorted(order_ids)
    assert {state for _, state in events} == {"applied"}
    failed_deliveries = [
        d
        for order_id in order_ids
        for d in stack.sandbox.control.deliveries(external_order_id=order_id)
        if d["state"] != "delivered"
    ]
    assert failed_deliveries == []
    # E-mails: the customer, the chef and the admins, for every result.
    mails = stack.mails_by_order()
    duplicates = 0
    for order_id in order_ids:
        got = mails.get(order_id, Counter())
        for address in (people["customer"]["email"], people["chef"]["email"], ADMINS):
            assert got[address] >= 1, (order_id, address, got)
            if exactly_once_mail:
                assert got[address] == 1, (order_id, address, got)
            duplicates += got[address] - 1
    # The ledger and Directus agree.
    reconciled = stack.reconcile()
    assert reconciled.returncode == 0, reconciled.stdout + reconciled.stderr
    report = json.loads(reconciled.stdout)
    assert report["mismatches"] == [], report
    # The whole ledger was compared (the refunds of earlier faults too).
    assert report["summary"]["refunds_checked"] >= len(order_ids), report["summary"]
    return {
        "refunds": len(order_ids),
        "ridendine_refunds_per_order_max": max(created.values()),
        "ridendine_calls": sum(calls.values()),
        "webhooks_applied": len(events),
        "events_lost": len(order_ids) - len(events),
        "duplicate_emails": duplicates,
        "reconcile_mismatches": report["summary"]["mismatches"],
        "reconcile_refunds_checked": report["summary"]["refunds_checked"],
    }


def directus_fault(
    stack: FaultStack,
    people: dict[str, dict[str, Any]],
    name: str,
    inject: Callable[[], None],
    heal: Callable[[], None],
    *,
    exactly_once_mail: bool = True,
) -> None:
    stack.proxy.faults.clear()
    order_ids = stack.orders(6, people["customer"], people["chef"])
    before, during = order_ids[:3], order_ids[3:]
    refund_ids = [accepted(stack.request_refund(order_id)) for order_id in before]
    inject()
    started = time.monotonic()
    try:
        # Requests cannot check the order: 503 problem+json, promptly.
        slowest = 0.0
        for order_id in during:
            began = time.monotonic()
            unavailable(stack.request_refund(order_id))
            slowest = max(slowest, time.monotonic() - began)
        assert slowest < 20, slowest
        ready = requests.get(f"{stack.url}/readyz", timeout=30)
        assert ready.status_code == 503
        # RideNDine's results of the refunds made before the fault arrive meanwhile: recorded
        # and answered 200 (Directus is never a reason to refuse one).
        for order_id in before:
            stack.sandbox.control.wait_for_deliveries(1, timeout=30, external_order_id=order_id)
        # Long enough for the worker's Directus jobs to fail at least once.
        stack.wait_for(
            "a Directus job to fail",
            lambda: any(error for _, error in stack.pending_jobs()),
            timeout=30,
        )
        failed_jobs = len([1 for _, error in stack.pending_jobs() if error])
    finally:
        heal()
    fault_seconds = time.monotonic() - started
    # The refunds refused meanwhile are asked for again (the same Idempotency-Key).
    for order_id in during:
        refund_ids.append(accepted(stack.request_refund(order_id)))
    outcome = verify_outcome(stack, people, order_ids, exactly_once_mail=exactly_once_mail)
    reliability.record(
        f"test_faults.{name}",
        fault_seconds=round(fault_seconds, 1),
        refused_503=len(during),
        slowest_503_s=round(slowest, 2),
        jobs_failed_during_fault=failed_jobs,
        faults_injected=dict(stack.proxy.faults),
        **outcome,
    )


def test_directus_slow_beyond_the_timeouts(
    stack: FaultStack, people: dict[str, dict[str, Any]]
) -> None:
    stack.proxy.delay = 3.0  # the bridge waits 1 s
    # A Flow call that timed out may have sent its e-mails: at least once, counted.
    directus_fault(
        stack,
        people,
        "directus_slow",
        lambda: stack.proxy.set_mode("slow"),
        lambda: stack.proxy.set_mode("pass"),
        exactly_once_mail=False,
    )


def test_directus_answering_500s(stack: FaultStack, people: dict[str, dict[str, Any]]) -> None:
    directus_fault(
        stack,
        people,
        "directus_500",
        lambda: stack.proxy.set_mode("error500"),
        lambda: stack.proxy.set_mode("pass"),
        # The proxy's 500s never reach Directus, but a Flow call already under way when the
        # fault starts, or slower than the read timeout on a loaded machine, is retried: the
        # e-mails are at least once (docs/reliability.md, known limits); repeats are counted.
        exactly_once_mail=False,
    )


def test_directus_stopped(
    stack: FaultStack, people: dict[str, dict[str, Any]], cooco_directus: DirectusServer
) -> None:
    def stop() -> None:
        cooco_directus.stop()
        stack.proxy.drop_connections()

    try:
        directus_fault(stack, people, "directus_stopped", stop, cooco_directus.start)
    finally:
        if not cooco_directus.is_running():  # the session's Directus is shared
            cooco_directus.start()


def test_ridendine_flapping(stack: FaultStack, people: dict[str, dict[str, Any]]) -> None:
    order_ids = stack.orders(5, people["customer"], people["chef"])
    for order_id in order_ids:
        stack.sandbox.control.set_rule(order_id, scenario="flaky", flaky_failures=3)
    refund_ids = [accepted(stack.request_refund(order_id)) for order_id in order_ids]
    outcome = verify_outcome(stack, people, order_ids)
    for order_id, refund_id in zip(order_ids, refund_ids, strict=True):
        calls = stack.submissions(order_id)
        # Every attempt with the refund's id as key; three 503s, then one refund.
        assert {call["idempotency_key"] for call in calls} == {refund_id}
        assert [call["status"] for call in calls] == [503, 503, 503, 201], calls
    reliability.record(
        "test_faults.ridendine_flapping", ridendine_503s=3 * len(order_ids), **outcome
    )


# -- kill -9 ---------------------------------------------------------------------------------------

KILL_REFUNDS = 200


def _request_until_answered(stack: FaultStack, order_id: str) -> str:
    """What a careful client does: retry the same request (same Idempotency-Key) on a
    connection error or a 5xx; a key still in progress (its first request's process was
    killed after recording it) is recorded and will be applied: stop there."""
    deadline = time.monotonic() + 180
    in_progress = 0
    while time.monotonic() < deadline:
        try:
            answer = stack.request_refund(order_id, timeout=15)
        except requests.RequestException:
            time.sleep(0.3)
            continue
        if answer.status_code == 202:
            return "accepted"
        code = answer.json().get("code") if answer.content else None
        if answer.status_code == 409 and code == "idempotency_key_in_progress":
            in_progress += 1
            if in_progress >= 3:
                return "in_progress"
            time.sleep(1)
            continue
        if answer.status_code >= 500:
            time.sleep(0.3)
            continue
        raise AssertionError(f"{order_id}: {answer.status_code} {answer.text}")
    raise AssertionError(f"{order_id}: no answer in time")


@pytest.mark.slow
def test_kill_9_of_web_and_worker_across_200_refunds(
    stack: FaultStack, people: dict[str, dict[str, Any]]
) -> None:
    seed = random.randrange(2**32)
    rng = random.Random(seed)
    order_ids = stack.orders(KILL_REFUNDS, people["customer"], people["chef"])
    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=4) as pool:
        futures = [pool.submit(_request_until_answered, stack, order_id) for order_id in order_ids]
        # Kill at random points while requests, webhooks and jobs are in flight.
        plan = ["web worker"] * 6 + ["web server"] * 3 + ["worker"] * 6
        rng.shuffle(plan)
        for kind in plan:
            time.sleep(rng.uniform(0.5, 2.5))
            if kind == "web worker":
                stack.kill_web_worker()
            elif kind == "web server":
                stack.kill_web()
            else:
                stack.kill_worker()
        answers = Counter(future.result() for future in futures)
    requests_seconds = time.monotonic() - started
    assert sum(answers.values()) == KILL_REFUNDS
    outcome = verify_outcome(stack, people, order_ids, exactly_once_mail=False)
    # A worker killed during its Flow calls may repeat the notifications under way: at most
    # BRIDGE_WORKER_FLOW_CALLS (default 4) of three e-mails each per worker kill.
    flow_calls = Settings.worker_flow_calls  # the default: the fault stack does not set it
    assert outcome["duplicate_emails"] <= 3 * flow_calls * stack.kills["worker"], outcome
    reliability.record(
        "test_faults.kill_9",
        seed=seed,
        kills=dict(stack.kills),
        client_answers=dict(answers),
        seconds=round(time.monotonic() - started, 1),
        requests_seconds=round(requests_seconds, 1),
        **outcome,
    )
