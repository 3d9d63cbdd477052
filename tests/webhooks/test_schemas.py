"""The webhook body's fast path (`plainly_valid`) against its schema, by property (hypothesis).

`parse_event` skips marshmallow when `plainly_valid` says a body obeys the schema's rules
(docs/performance.md). The two are written apart, so these tests tie them: for bodies generated
around every rule (identifiers of each length and kind of character, amounts at and beyond their
bounds and of the wrong JSON type, statuses valid and not, fields missing, extra fields), the fast
path accepts only what the schema loads, to an equal dict, and `parse_event` answers exactly as
the schema does: the same dict, or a ValidationProblem with the same errors.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import HealthCheck, example, find, given, settings
from hypothesis import strategies as st
from marshmallow import ValidationError

from bridge.errors import ValidationProblem
from bridge.webhooks.schemas import (
    MAX_AMOUNT_CENTS,
    MAX_ID_LENGTH,
    STATUSES,
    RefundStatusEventSchema,
    parse_event,
    plainly_valid,
)

SCHEMA = RefundStatusEventSchema()
REQUIRED = ("refund_id", "external_order_id", "amount_cents", "status")
PROPERTY_SETTINGS = settings(
    max_examples=400,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)

# What JSON carries, bounded: json.loads refuses integers of more than 4300 digits, and NaN and
# infinities are not JSON (parse_event refuses them before any rule is checked).
json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(10**20), 10**20)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8)
)
json_values = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=6,
)


def _repeat(char: str, length: int) -> str:
    return char * length


identifiers = st.one_of(
    st.text(alphabet=st.characters(codec="utf-8"), min_size=1, max_size=12),  # mostly valid
    st.text(max_size=12),  # any text: empty, control characters, separators, format characters
    st.sampled_from(
        [
            "",
            " ",
            "\t",
            "\xa0",
            "\u3000",
            "a\u200b",
            "\x85",
            " a ",
            "x" * MAX_ID_LENGTH,
            "x" * (MAX_ID_LENGTH + 1),
        ]
    ),
    # At and around the length bound, in printable, space-only and non-printable characters.
    st.builds(
        _repeat,
        st.sampled_from(["a", "é", " ", "\t", "\u3000"]),
        st.integers(MAX_ID_LENGTH - 2, MAX_ID_LENGTH + 2),
    ),
    st.builds(
        lambda head, tail: head + tail,
        st.builds(_repeat, st.just("x"), st.integers(MAX_ID_LENGTH - 3, MAX_ID_LENGTH)),
        st.text(max_size=3),
    ),
    json_values,  # the wrong JSON type (a number, null, a list, an object, a boolean)
)
amounts = st.one_of(
    st.sampled_from([0, 1, -1, MAX_AMOUNT_CENTS, MAX_AMOUNT_CENTS + 1, True, False, 1.0, "1"]),
    st.integers(-2, 3),
    st.integers(MAX_AMOUNT_CENTS - 2, MAX_AMOUNT_CENTS + 2),
    st.integers(1, MAX_AMOUNT_CENTS),
    st.integers(-(10**20), 10**20),
    st.booleans(),
    st.floats(allow_nan=False, allow_infinity=False),
    st.sampled_from([1.0, 5000.0, 0.5, float(MAX_AMOUNT_CENTS), -0.0]),
    st.integers(-5, 10**13).map(str),
    json_values,
)
statuses = st.one_of(
    st.sampled_from(STATUSES),
    st.sampled_from(["refunded", "Failed", "PENDING", "", "REFUNDED ", " FAILED", "REFUND"]),
    st.text(max_size=10),
    st.just(list(STATUSES)),
    json_values,
)
# Bodies around the rules: a body that obeys them (of printable text, spaces included, and any
# allowed amount), then, often, some of its required fields swapped for anything above or left
# out, and extra fields, of any JSON value, added.
obeying = st.fixed_dictionaries(
    {
        "refund_id": st.text(
            st.characters(codec="utf-8", categories=["L", "N", "P", "S"], include_characters=" "),
            min_size=1,
            max_size=MAX_ID_LENGTH,
        ),
        "external_order_id": st.text(min_size=1, max_size=40),
        "amount_cents": st.sampled_from([1, MAX_AMOUNT_CENTS]) | st.integers(1, MAX_AMOUNT_CENTS),
        "status": st.sampled_from(STATUSES),
    }
)
ANYTHING = {
    "refund_id": identifiers,
    "external_order_id": identifiers,
    "amount_cents": amounts,
    "status": statuses,
}
swaps = st.one_of(
    st.just({}),
    # One field swapped: the others still obey, so the swapped field alone decides.
    st.sampled_from(REQUIRED).flatmap(lambda key: st.fixed_dictionaries({key: ANYTHING[key]})),
    st.fixed_dictionaries({}, optional=ANYTHING),
)
missing = st.just(frozenset()) | st.frozensets(st.sampled_from(REQUIRED), max_size=4)
extras = st.just({}) | st.dictionaries(
    st.text(max_size=12).filter(lambda key: key not in REQUIRED), json_values, max_size=3
)


def _body(
    base: dict[str, Any], swapped: dict[str, Any], left_out: frozenset[str], extra: dict[str, Any]
) -> dict[str, Any]:
    body = {**extra, **base, **swapped}
    return {key: value for key, value in body.items() if key not in left_out}


bodies = st.builds(_body, obeying, swaps, missing, extras)


# Each rule's edges, always tried (@example) besides what is generated: a body that obeys, and
# that body with one field at or past an edge, of the wrong type, or left out.
OBEYING = {"refund_id": "re_1", "external_order_id": "ord-1", "amount_cents": 1, "status": "FAILED"}
EDGES = {
    "refund_id": ["x" * MAX_ID_LENGTH, "x" * (MAX_ID_LENGTH + 1), "", " ", " a ", "\t", "a\u200b"],
    "external_order_id": ["é" * MAX_ID_LENGTH, "é" * (MAX_ID_LENGTH + 1), "\u3000", "\xa0", 1],
    "amount_cents": [MAX_AMOUNT_CENTS, MAX_AMOUNT_CENTS + 1, 0, -1, True, False, 1.0, "1", None],
    "status": [*STATUSES, "refunded", "PENDING", "", None, list(STATUSES)],
}
EDGE_BODIES = [
    OBEYING,
    {**OBEYING, "reason": "x", "amount_details": {"total": 1}, "items": []},
    *({**OBEYING, key: value} for key, values in EDGES.items() for value in values),
    *({k: v for k, v in OBEYING.items() if k != key} for key in REQUIRED),
]


def with_edges(test: Any) -> Any:
    for body in EDGE_BODIES:
        test = example(body)(test)
    return test


def schema_answer(data: dict[str, Any]) -> tuple[str, Any]:
    """What the schema alone makes of a body: ("loaded", dict) or ("refused", the problem its
    errors make, contract section 6)."""
    try:
        return "loaded", SCHEMA.load(data)
    except ValidationError as exc:
        assert isinstance(exc.messages, dict)  # a body is an object: errors are by field
        return "refused", ValidationProblem(exc.messages).to_dict()


def parse_answer(data: dict[str, Any]) -> tuple[str, Any]:
    try:
        return "loaded", parse_event(json.dumps(data).encode("utf-8"))
    except ValidationProblem as problem:
        return "refused", problem.to_dict()


@PROPERTY_SETTINGS
@given(bodies)
@with_edges
def test_the_fast_path_accepts_only_what_the_schema_loads_unchanged(data: dict[str, Any]) -> None:
    if plainly_valid(data):
        assert schema_answer(data) == ("loaded", data)


@PROPERTY_SETTINGS
@given(bodies)
@with_edges
def test_parse_event_answers_as_the_schema_does(data: dict[str, Any]) -> None:
    # What the endpoint receives is JSON: the schema sees the body as JSON gives it back.
    received = json.loads(json.dumps(data))
    assert parse_answer(data) == schema_answer(received)


@pytest.mark.parametrize("accepted", [True, False])
def test_the_generated_bodies_reach_both_sides_of_the_fast_path(accepted: bool) -> None:
    """The properties above are not vacuous: bodies the fast path takes are generated, and so
    are bodies it leaves to the schema, both with extra fields."""
    found = find(
        bodies,
        lambda data: plainly_valid(data) is accepted and len(data) > len(REQUIRED),
        settings=settings(database=None, max_examples=2000),
    )
    assert plainly_valid(found) is accepted
