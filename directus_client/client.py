"""A client for the Directus REST API, on requests.

Pooled keep-alive session, connect and read timeouts, and retries (urllib3's `Retry`: capped
exponential backoff with jitter, honouring `Retry-After` up to a cap) for connection errors,
read timeouts, 429 and 5xx, only on calls that are safe to repeat: reads, and PATCHes that set
fields to given values. POSTs and DELETEs are retried only when the connection could not be
made (nothing was sent); callers that need them done at least once use their own outbox.

Directus quirks handled here (measured on 11.3.5):
- a GET of a missing item answers 403, like an item the token may not read: `get_item` raises
  `NotFoundError` only when the same query on the collection is allowed (so the item is really
  absent), else the `ForbiddenError` stands;
- a PATCH of a missing item answers 204 with no body (admin tokens) or 403 (other tokens):
  `update_item` raises `NotFoundError` for both when the item is confirmed absent;
- ids and collection names in paths are percent-encoded as one segment: `1/../../users` stays
  one id, `..` is sent as `%2E%2E`; an id too long for a URL (Directus answers 431) cannot name
  an item and is reported as not found.
"""

from __future__ import annotations

import email.utils
import json
import logging
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Self
from urllib.parse import quote, urlencode

import requests
import urllib3.exceptions
from requests.adapters import HTTPAdapter
from requests.structures import CaseInsensitiveDict
from urllib3.util.retry import Retry

from directus_client.errors import (
    ERRORS_BY_CODE,
    ERRORS_BY_STATUS,
    DirectusError,
    DirectusTimeoutError,
    DirectusUnavailableError,
    ForbiddenError,
    MissingPermissionError,
    NotFoundError,
    RateLimitedError,
    UriTooLongError,
)

log = logging.getLogger(__name__)

Item = dict[str, Any]
RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
# PATCH is here because every PATCH this client sends sets fields to given values: sending it
# twice leaves the same state. POST (creates, Flow triggers) and DELETE are not.
SAFE_TO_RETRY = frozenset({"GET", "HEAD", "OPTIONS", "PATCH", "SEARCH"})
USER_FIELDS = ("id", "email", "status", "role")
MAX_ROLE_DEPTH = 10  # roles nested deeper than this are not followed


class _Retry(Retry):
    """urllib3's Retry that waits at most `retry_after_cap` seconds for a `Retry-After`, and
    falls back to its own backoff when the header cannot be parsed (urllib3 would raise)."""

    retry_after_cap: float = 10.0

    def new(self, **kw: Any) -> Self:
        other = super().new(**kw)
        other.retry_after_cap = self.retry_after_cap
        return other

    def parse_retry_after(self, retry_after: str) -> float:
        try:
            seconds = super().parse_retry_after(retry_after)
        except urllib3.exceptions.InvalidHeader:
            return 0.0  # 0 means "no usable header": the exponential backoff applies
        return min(seconds, self.retry_after_cap)


def _segment(value: object) -> str:
    """One URL path segment: every reserved character (including '/') percent-encoded, and
    the dot segments '.' and '..' encoded so that no URL normaliser can resolve them."""
    text = str(value)
    if text == "":
        raise ValueError("empty path segment")
    encoded = quote(text, safe="")
    if encoded in (".", ".."):
        encoded = encoded.replace(".", "%2E")
    return encoded


def _item_path(collection: str, item_id: object) -> str:
    if str(item_id) == "":
        # "/items/orders/" would list the collection: an empty id names no item.
        raise NotFoundError(f"{collection} item '' does not exist", code="NOT_FOUND")
    return f"/items/{_segment(collection)}/{_segment(item_id)}"


def parse_retry_after(value: str | None) -> float | None:
    """Seconds from a `Retry-After` header (delta-seconds or an HTTP date), or None."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    parsed = email.utils.parsedate_tz(value)
    if parsed is None:
        return None
    return max(0.0, email.utils.mktime_tz(parsed) - time.time())


def read_environment_once(session: requests.Session, base_url: str) -> None:
    """Take the environment's proxy (honouring NO_PROXY) and CA bundle settings for `base_url`
    now, and stop requests from reading them, and ~/.netrc, again on every request: that was a
    good part of a call's CPU (docs/performance.md). A later change of the environment needs a
    restart, like every other setting."""
    options = session.merge_environment_settings(base_url, {}, None, None, None)
    session.proxies = dict(options["proxies"] or {})
    session.verify = options["verify"]
    session.trust_env = False


def send_request(
    session: requests.Session,
    method: str,
    url: str,
    headers: Mapping[str, str],
    json_body: Any = None,
    *,
    timeout: float | tuple[float, float],
) -> requests.Response:
    """Send one request through `session.send` (so that what wraps or mocks it sees every
    call), never following a redirect, prepared here rather than by `Session.prepare_request`:
    the URL as given (already encoded: no parsing again), the session's headers and `headers`
    (checked), its hooks, the JSON body. `Session.prepare_request` merged the session's
    cookies, auth and params and parsed the URL again on every call: a third of a call's CPU,
    for settings these clients never use (docs/performance.md)."""
    prepared = requests.PreparedRequest()
    prepared.method = method
    prepared.url = url
    merged = CaseInsensitiveDict(session.headers)
    merged.update(headers)
    prepared.prepare_headers(merged)
    prepared.prepare_cookies(session.cookies)  # empty; requests' redirect check reads it
    prepared.prepare_body(None, None, json_body)
    prepared.prepare_hooks(session.hooks)
    return session.send(
        prepared,
        timeout=timeout,
        allow_redirects=False,
        proxies=session.proxies,
        verify=session.verify,
    )


class DirectusClient:
    """Talks to one Directus instance with one token (thread-safe: one pooled session)."""

    def __init__(
        self,
        base_url: str,
        token: str | None = None,
        *,
        connect_timeout: float = 3.05,
        read_timeout: float = 10.0,
        retries: int = 3,
        backoff_factor: float = 0.25,
        backoff_max: float = 8.0,
        backoff_jitter: float = 0.25,
        retry_after_max: float = 10.0,
        pool_maxsize: int = 16,
        session: requests.Session | None = None,
        user_agent: str = "refund-bridge-directus-client",
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout = (connect_timeout, read_timeout)
        self.session = session or requests.Session()
        retry = _Retry(
            total=retries,
            connect=retries,
            read=retries,
            status=retries,
            other=0,
            redirect=0,
            allowed_methods=SAFE_TO_RETRY,
            status_forcelist=RETRY_STATUSES,
            backoff_factor=backoff_factor,
            backoff_max=backoff_max,
            backoff_jitter=backoff_jitter,
            respect_retry_after_header=True,
            raise_on_status=False,
            raise_on_redirect=False,
        )
        retry.retry_after_cap = retry_after_max
        self.retry = retry
        adapter = HTTPAdapter(max_retries=retry, pool_connections=4, pool_maxsize=pool_maxsize)
        self.session.mount("http://", adapter)
        self.session.mount("https://", adapter)
        self.session.headers["User-Agent"] = user_agent
        self.session.headers["Accept"] = "application/json"
        read_environment_once(self.session, self.base_url)
        self._token = token

    def with_token(self, token: str) -> DirectusClient:
        """A client for the same server with another token, sharing this one's pool (closing
        either closes the pool of both)."""
        other = DirectusClient.__new__(DirectusClient)
        other.base_url = self.base_url
        other.timeout = self.timeout
        other.session = self.session
        other.retry = self.retry
        other._token = token
        return other

    def close(self) -> None:
        self.session.close()

    # -- transport ---------------------------------------------------------------------------

    def request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, Any] | None = None,
        json_body: Any = None,
        token: str | None = None,
    ) -> Any:
        """Send one request; return the decoded JSON (or None for an empty body).

        `token=None` uses the client's token, `token=""` sends no Authorization at all.
        """
        url = f"{self.base_url}{path}"
        headers: dict[str, str] = {}
        bearer = token if token is not None else self._token
        if bearer:
            headers["Authorization"] = f"Bearer {bearer}"
        encoded_params = _encode_params(params) if params else None
        try:
            response = self._send(method, url, encoded_params, json_body, headers)
        except (requests.RequestException, urllib3.exceptions.HTTPError) as exc:
            if _timed_out(exc):
                raise DirectusTimeoutError(
                    "Directus did not answer in time", method=method, url=url
                ) from exc
            raise DirectusUnavailableError(
                f"Directus could not be reached: {type(exc).__name__}", method=method, url=url
            ) from exc
        return self._decode(response, method, url)

    def _send(
        self,
        method: str,
        url: str,
        params: Mapping[str, str] | None,
        json_body: Any,
        headers: Mapping[str, str],
    ) -> requests.Response:
        """`Session.request`, except that the path is sent exactly as we encoded it (requests
        would decode `%2E` back to `.`, turning an id `..` into a dot segment that a proxy in
        front of Directus might resolve), and prepared by `send_request`."""
        full_url = f"{url}?{urlencode(params)}" if params else url
        return send_request(
            self.session, method, full_url, headers, json_body, timeout=self.timeout
        )

    @staticmethod
    def _decode(response: requests.Response, method: str, url: str) -> Any:
        status = response.status_code
        body: Any = None
        if response.content:
            try:
                body = response.json()
            except ValueError:
                body = response.text[:500]
        if status < 300:
            return body
        code, message = None, f"HTTP {status}"
        if isinstance(body, dict) and isinstance(body.get("errors"), list) and body["errors"]:
            first = body["errors"][0] if isinstance(body["errors"][0], dict) else {}
            message = str(first.get("message") or message)
            extensions = first.get("extensions")
            if isinstance(extensions, dict) and isinstance(extensions.get("code"), str):
                code = extensions["code"]
        error_cls: type[DirectusError]
        if status == 429:
            error_cls = RateLimitedError
        elif status >= 500:
            error_cls = DirectusUnavailableError
        elif status < 400:
            # Directus does not redirect API calls; a proxy in front of it might.
            error_cls = DirectusError
            location = response.headers.get("Location", "").split("?")[0][:200]
            message = f"unexpected redirect (HTTP {status}) to {location or 'nowhere'}"
        else:
            error_cls = ERRORS_BY_CODE.get(code or "") or ERRORS_BY_STATUS.get(
                status, DirectusError
            )
        error = error_cls(message, status=status, code=code, method=method, url=url, body=body)
        if isinstance(error, DirectusUnavailableError):
            error.retry_after = parse_retry_after(response.headers.get("Retry-After"))
        raise error

    # -- server ------------------------------------------------------------------------------

    def ping(self) -> bool:
        """True when `/server/ping` answers `pong`."""
        try:
            return self.request("GET", "/server/ping", token="") == "pong"
        except DirectusError:
            return False

    def server_info(self) -> Item:
        """`/server/info` (with a token that may see it: the version, among others)."""
        return dict(_data(self.request("GET", "/server/info")) or {})

    # -- items -------------------------------------------------------------------------------

    def get_item(
        self, collection: str, item_id: object, *, fields: Sequence[str] | None = None
    ) -> Item:
        """One item by primary key.

        Directus answers 403 both for a missing item and for one the token may not read:
        `NotFoundError` is raised only when the token may run the same query on the
        collection (so the item is absent), else the `ForbiddenError` stands.
        """
        path = _item_path(collection, item_id)
        params = {"fields": ",".join(fields)} if fields else None
        try:
            data = self.request("GET", path, params=params)
        except UriTooLongError as exc:
            raise _not_found(collection, item_id, exc) from exc
        except ForbiddenError as exc:
            if self._collection_readable(collection, fields):
                raise _not_found(collection, item_id, exc) from exc
            raise
        return _data(data)

    def _collection_readable(self, collection: str, fields: Sequence[str] | None = None) -> bool:
        """Whether the token may query the collection with these fields (Directus answers
        403 for a field the token may not read, even with limit=0)."""
        params: dict[str, Any] = {"limit": 0}
        if fields:
            params["fields"] = ",".join(fields)
        try:
            self.request("GET", f"/items/{_segment(collection)}", params=params)
        except ForbiddenError:
            return False
        return True

    def _item_absent(self, collection: str, item_id: object) -> bool:
        """True only when the item is confirmed not to exist."""
        try:
            self.request("GET", _item_path(collection, item_id))
        except ForbiddenError:
            return self._collection_readable(collection)
        except UriTooLongError:
            return True
        return False

    def find_item(
        self, collection: str, item_id: object, *, fields: Sequence[str] | None = None
    ) -> Item | None:
        """One item by primary key (`id`) through a filter query: None when it does not
        exist or the token may not see it."""
        rows = self.query_items(
            collection,
            filter={"id": {"_eq": item_id}},
            fields=fields,
            limit=1,
        )
        return rows[0] if rows else None

    def query_items(
        self,
        collection: str,
        *,
        filter: Mapping[str, Any] | None = None,
        fields: Sequence[str] | None = None,
        sort: Sequence[str] | None = None,
        limit: int | None = None,
        offset: int | None = None,
        aggregate: Mapping[str, Any] | None = None,
        group_by: Sequence[str] | None = None,
    ) -> list[Item]:
        """Items matching a query. Without `limit`, Directus returns its default page (100
        items unless QUERY_LIMIT_DEFAULT says otherwise); `limit=-1` returns all."""
        params: dict[str, Any] = {}
        if filter is not None:
            params["filter"] = filter
        if fields:
            params["fields"] = ",".join(fields)
        if sort:
            params["sort"] = ",".join(sort)
        if limit is not None:
            params["limit"] = limit
        if offset is not None:
            params["offset"] = offset
        if aggregate is not None:
            params["aggregate"] = aggregate
        if group_by:
            params["groupBy"] = ",".join(group_by)
        data = self.request("GET", f"/items/{_segment(collection)}", params=params)
        rows = _data(data)
        return list(rows) if isinstance(rows, list) else []

    def create_item(
        self, collection: str, values: Mapping[str, Any], *, fields: Sequence[str] | None = None
    ) -> Item:
        """POST one item; returns it as Directus read it back, with `fields` when given (a
        caller that needs only the id spares Directus reading and sending the whole item)."""
        params = {"fields": ",".join(fields)} if fields else None
        return _data(
            self.request("POST", f"/items/{_segment(collection)}", params=params, json_body=values)
        )

    def create_items(self, collection: str, values: Sequence[Mapping[str, Any]]) -> list[Item]:
        data = _data(self.request("POST", f"/items/{_segment(collection)}", json_body=values))
        return list(data) if isinstance(data, list) else []

    def update_item(
        self,
        collection: str,
        item_id: object,
        values: Mapping[str, Any],
        *,
        fields: Sequence[str] | None = None,
    ) -> Item:
        """PATCH one item; returns it with `fields` (default: its `id`).

        A missing item raises `NotFoundError`: Directus answers 204 with no body for it
        (admin tokens) or 403 (other tokens); both are checked with a read before saying so.
        The token must be able to read what it updates (a 204 for an item it updated but may
        not read back is also reported as not found).
        """
        path = _item_path(collection, item_id)
        params = {"fields": ",".join(fields or ("id",))}
        try:
            data = self.request("PATCH", path, params=params, json_body=values)
        except UriTooLongError as exc:
            raise _not_found(collection, item_id, exc) from exc
        except ForbiddenError as exc:
            if self._item_absent(collection, item_id):
                raise _not_found(collection, item_id, exc) from exc
            raise
        if not isinstance(data, dict) or not data.get("data"):
            raise NotFoundError(
                f"{collection} item {item_id!r} does not exist",
                status=204,
                code="NOT_FOUND",
                method="PATCH",
                url=f"{self.base_url}{path}",
            )
        return _data(data)

    def update_items(
        self, collection: str, keys: Iterable[object], values: Mapping[str, Any]
    ) -> list[Item]:
        """PATCH many items with the same values; returns the items that were updated (a key
        that matches no item is simply not among them)."""
        body = {"keys": list(keys), "data": dict(values)}
        data = self.request(
            "PATCH", f"/items/{_segment(collection)}", params={"fields": "id"}, json_body=body
        )
        rows = _data(data) if data else []
        return list(rows) if isinstance(rows, list) else []

    def update_batch(
        self,
        collection: str,
        items: Sequence[Mapping[str, Any]],
        *,
        fields: Sequence[str] | None = None,
    ) -> list[Item]:
        """PATCH a batch of items, each with its primary key and its own values; returns the
        updated items with `fields` (default: their `id`)."""
        data = self.request(
            "PATCH",
            f"/items/{_segment(collection)}",
            params={"fields": ",".join(fields) if fields else "id"},
            json_body=items,
        )
        rows = _data(data) if data else []
        return list(rows) if isinstance(rows, list) else []

    def delete_item(self, collection: str, item_id: object) -> None:
        """DELETE one item (Directus answers 204 also when it did not exist)."""
        self.request("DELETE", _item_path(collection, item_id))

    # -- users and permissions ---------------------------------------------------------------

    def me(self, *, token: str | None = None, fields: Sequence[str] | None = None) -> Item:
        """The user the token belongs to (`/users/me`). A token whose policies give no read
        access to directus_users sees only its `id`."""
        params = {"fields": ",".join(fields)} if fields else None
        return _data(self.request("GET", "/users/me", params=params, token=token))

    def get_user(self, user_id: object, *, fields: Sequence[str] | None = None) -> Item:
        params = {"fields": ",".join(fields)} if fields else None
        return _data(self.request("GET", f"/users/{_segment(user_id)}", params=params))

    def permissions_me(self, *, token: str | None = None) -> dict[str, dict[str, Item]]:
        """What the token may do, by collection and action (`/permissions/me`, Directus 11):
        `{collection: {action: {"access": "full"|"partial"|"none", "fields": [...]}}}`.
        Changes nothing; collections the token has no permission on at all may be absent."""
        data = _data(self.request("GET", "/permissions/me", token=token))
        return dict(data) if isinstance(data, dict) else {}

    def find_user(self, user_id: object, *, fields: Sequence[str] = USER_FIELDS) -> Item | None:
        """The user with this id, or None when there is none. A filter query, so that a
        missing user (an empty answer) is told apart from a token that may not read users
        (403, raised as `MissingPermissionError`)."""
        rows = self._lookup(
            "users",
            filter={"id": {"_eq": str(user_id)}},
            fields=fields,
            limit=1,
            permission=f"read directus_users ({', '.join(fields)})",
            purpose="look up a user",
        )
        return rows[0] if rows else None

    def user_has_admin_access(self, user_id: object) -> bool:
        """Whether the user has admin access through any policy (False for no such user)."""
        user = self.find_user(user_id, fields=("id", "role"))
        if user is None:
            return False
        return self.admin_access(user_id, user.get("role"))

    def admin_access(self, user_id: object, role_id: object | None) -> bool:
        """Whether a user (of role `role_id`) has admin access. Directus 11 grants it through
        policies on the user itself, on its role, or on any of the role's parent roles.

        Asked step by step (roles, then access rows, then policies) rather than through one
        nested query, so that a permission the token lacks is named (`MissingPermissionError`)
        instead of coming back as bare ids. Needs read of directus_roles (id, parent),
        directus_access (user, role, policy) and directus_policies (id, admin_access).
        """
        purpose = "tell whether a user has admin access"
        roles = self._role_chain(role_id, purpose) if role_id else []
        holders: list[dict[str, Any]] = [{"user": {"_eq": str(user_id)}}]
        if roles:
            holders.append({"role": {"_in": roles}})
        policy_ids = self._policies_of(holders, purpose)
        if not policy_ids:
            return False
        admin = self._lookup(
            "policies",
            filter={"_and": [{"id": {"_in": policy_ids}}, {"admin_access": {"_eq": True}}]},
            fields=("id",),
            limit=1,
            permission="read directus_policies (id, admin_access)",
            purpose=purpose,
        )
        return bool(admin)

    def admin_users(self) -> list[Item]:
        """The active users with admin access, as `{"id", "email"}`, by id: those holding an
        admin policy themselves, and those whose role (or a parent of it) holds one. Needs
        what `admin_access` needs."""
        purpose = "find the users with admin access"
        policies = self._lookup(
            "policies",
            filter={"admin_access": {"_eq": True}},
            fields=("id",),
            limit=-1,
            permission="read directus_policies (id, admin_access)",
            purpose=purpose,
        )
        policy_ids = [str(p["id"]) for p in policies if p.get("id")]
        if not policy_ids:
            return []
        access = self._lookup(
            "access",
            filter={"policy": {"_in": policy_ids}},
            fields=("user", "role"),
            limit=-1,
            permission="read directus_access (user, role, policy)",
            purpose=purpose,
        )
        user_ids = sorted({_key(a.get("user")) for a in access} - {""})
        roles = sorted({_key(a.get("role")) for a in access} - {""})
        roles = self._with_child_roles(roles, purpose)
        holders: list[dict[str, Any]] = []
        if user_ids:
            holders.append({"id": {"_in": user_ids}})
        if roles:
            holders.append({"role": {"_in": roles}})
        if not holders:
            return []
        users = self._lookup(
            "users",
            filter={"_and": [{"status": {"_eq": "active"}}, {"_or": holders}]},
            fields=("id", "email"),
            limit=-1,
            permission="read directus_users (id, email, status, role)",
            purpose=purpose,
        )
        found = [{"id": str(u.get("id")), "email": u.get("email")} for u in users]
        return sorted(found, key=lambda user: user["id"])

    def admin_emails(self) -> list[str]:
        """E-mails of the active users with admin access."""
        emails = (u["email"] for u in self.admin_users())
        return sorted({e for e in emails if isinstance(e, str) and e})

    def _role_chain(self, role_id: object, purpose: str) -> list[str]:
        """The role and its parents, nearest first (Directus nests roles; a cycle or a chain
        deeper than MAX_ROLE_DEPTH stops the walk)."""
        chain: list[str] = []
        current = _key(role_id)
        while current and current not in chain and len(chain) < MAX_ROLE_DEPTH:
            chain.append(current)
            rows = self._lookup(
                "roles",
                filter={"id": {"_eq": current}},
                fields=("id", "parent"),
                limit=1,
                permission="read directus_roles (id, parent)",
                purpose=purpose,
            )
            current = _key(rows[0].get("parent")) if rows else ""
        return chain

    def _with_child_roles(self, roles: list[str], purpose: str) -> list[str]:
        """The roles and every role below them (a child role inherits its parents' policies)."""
        found = list(roles)
        frontier = list(roles)
        for _ in range(MAX_ROLE_DEPTH):
            if not frontier:
                break
            children = self._lookup(
                "roles",
                filter={"parent": {"_in": frontier}},
                fields=("id", "parent"),
                limit=-1,
                permission="read directus_roles (id, parent)",
                purpose=purpose,
            )
            frontier = [k for k in (_key(c.get("id")) for c in children) if k and k not in found]
            found.extend(frontier)
        return found

    def _policies_of(self, holders: list[dict[str, Any]], purpose: str) -> list[str]:
        rows = self._lookup(
            "access",
            filter={"_or": holders},
            fields=("policy",),
            limit=-1,
            permission="read directus_access (user, role, policy)",
            purpose=purpose,
        )
        return sorted({_key(row.get("policy")) for row in rows} - {""})

    def _lookup(
        self,
        endpoint: str,
        *,
        filter: Mapping[str, Any],
        fields: Sequence[str],
        limit: int,
        permission: str,
        purpose: str,
    ) -> list[Item]:
        """A query on a system collection whose 403 (or unreadable answer) means the token
        lacks `permission`: the query is valid, so Directus has no other reason to refuse."""
        params = {"filter": filter, "fields": ",".join(fields), "limit": limit}
        path = f"/{_segment(endpoint)}"
        try:
            body = self.request("GET", path, params=params)
        except ForbiddenError as exc:
            raise MissingPermissionError(
                permission, purpose, status=exc.status, code=exc.code, method="GET", url=exc.url
            ) from exc
        rows = _data(body)
        if not isinstance(rows, list) or not all(isinstance(row, dict) for row in rows):
            shown = type(rows).__name__ if not isinstance(rows, list) else "ids"
            raise MissingPermissionError(
                permission,
                purpose,
                detail=f"Directus answered {shown} where objects were asked for",
                method="GET",
                url=f"{self.base_url}{path}",
            )
        return rows

    # -- flows -------------------------------------------------------------------------------

    def trigger_flow(
        self, flow_id: str, payload: Mapping[str, Any], *, token: str | None = ""
    ) -> Any:
        """POST /flows/trigger/<id> and return the Flow's answer (its last operation's output).

        A webhook Flow needs no token, and a Flow can see the request's headers: by default no
        Authorization is sent (`token=None` sends the client's, e.g. for a manual Flow). Not
        retried here: a Flow may send e-mails, so the caller decides (the bridge's outbox
        retries it, once per result).
        """
        return self.request(
            "POST", f"/flows/trigger/{_segment(flow_id)}", json_body=payload, token=token
        )

    def list_flows(
        self,
        *,
        filter: Mapping[str, Any] | None = None,
        fields: Sequence[str] | None = None,
        sort: Sequence[str] | None = None,
        limit: int = -1,
    ) -> list[Item]:
        return self.list_system("flows", filter=filter, fields=fields, sort=sort, limit=limit)

    def create_flow(self, values: Mapping[str, Any]) -> Item:
        return self.create_system("flows", values)

    def update_flow(self, flow_id: object, values: Mapping[str, Any]) -> Item:
        return self.update_system("flows", flow_id, values)

    def delete_flow(self, flow_id: object) -> None:
        self.delete_system("flows", flow_id)

    def list_operations(self, flow_id: object) -> list[Item]:
        return self.list_system("operations", filter={"flow": {"_eq": str(flow_id)}})

    def create_operation(self, values: Mapping[str, Any]) -> Item:
        return self.create_system("operations", values)

    def delete_operations(self, operation_ids: Sequence[object]) -> None:
        """Delete several operations in one call (they may point to each other)."""
        if operation_ids:
            self.request("DELETE", "/operations", json_body=[str(i) for i in operation_ids])

    # -- schema and system collections (for `schema apply`, `flows sync`, `check`) -----------

    def list_collections(self) -> list[Item]:
        return list(_data(self.request("GET", "/collections")) or [])

    def get_collection(self, collection: str) -> Item | None:
        """The collection, or None when it does not exist. Directus answers 403 for both a
        missing collection and a token that may not read the schema: the second raises."""
        try:
            return _data(self.request("GET", f"/collections/{_segment(collection)}"))
        except (ForbiddenError, NotFoundError):
            names = {c.get("collection") for c in self.list_collections()}
            if collection in names:
                raise
            return None

    def create_collection(self, definition: Mapping[str, Any]) -> Item:
        return _data(self.request("POST", "/collections", json_body=definition))

    def update_collection(self, collection: str, values: Mapping[str, Any]) -> Item:
        return _data(
            self.request("PATCH", f"/collections/{_segment(collection)}", json_body=values)
        )

    def list_fields(self, collection: str) -> list[Item]:
        return list(_data(self.request("GET", f"/fields/{_segment(collection)}")) or [])

    def create_field(self, collection: str, definition: Mapping[str, Any]) -> Item:
        return _data(self.request("POST", f"/fields/{_segment(collection)}", json_body=definition))

    def update_field(self, collection: str, field: str, values: Mapping[str, Any]) -> Item:
        return _data(
            self.request(
                "PATCH", f"/fields/{_segment(collection)}/{_segment(field)}", json_body=values
            )
        )

    def list_relations(self, collection: str | None = None) -> list[Item]:
        path = f"/relations/{_segment(collection)}" if collection else "/relations"
        return list(_data(self.request("GET", path)) or [])

    def create_relation(self, definition: Mapping[str, Any]) -> Item:
        return _data(self.request("POST", "/relations", json_body=definition))

    def update_relation(self, collection: str, field: str, values: Mapping[str, Any]) -> Item:
        return _data(
            self.request(
                "PATCH", f"/relations/{_segment(collection)}/{_segment(field)}", json_body=values
            )
        )

    def list_system(
        self,
        endpoint: str,
        *,
        filter: Mapping[str, Any] | None = None,
        fields: Sequence[str] | None = None,
        sort: Sequence[str] | None = None,
        limit: int = -1,
    ) -> list[Item]:
        """Items of a system collection by its endpoint (`flows`, `operations`, `roles`...)."""
        params: dict[str, Any] = {"limit": limit}
        if filter is not None:
            params["filter"] = filter
        if fields:
            params["fields"] = ",".join(fields)
        if sort:
            params["sort"] = ",".join(sort)
        return list(_data(self.request("GET", f"/{_segment(endpoint)}", params=params)) or [])

    def create_system(self, endpoint: str, values: Mapping[str, Any]) -> Item:
        return _data(self.request("POST", f"/{_segment(endpoint)}", json_body=values))

    def update_system(self, endpoint: str, item_id: object, values: Mapping[str, Any]) -> Item:
        path = f"/{_segment(endpoint)}/{_segment(item_id)}"
        data = self.request("PATCH", path, json_body=values)
        if not data:
            raise NotFoundError(
                f"{endpoint} item {item_id!r} does not exist",
                status=204,
                code="NOT_FOUND",
                method="PATCH",
                url=f"{self.base_url}{path}",
            )
        return _data(data)

    def delete_system(self, endpoint: str, item_id: object) -> None:
        self.request("DELETE", f"/{_segment(endpoint)}/{_segment(item_id)}")


def _timed_out(exc: BaseException) -> bool:
    """Whether the failure is a timeout. requests reports a read timeout that outlived the
    retries as a ConnectionError around urllib3's MaxRetryError, so the reason is looked at."""
    if isinstance(exc, requests.Timeout):
        return True
    reason = exc.args[0] if exc.args else None
    if isinstance(reason, urllib3.exceptions.MaxRetryError):
        reason = reason.reason
    return isinstance(reason, urllib3.exceptions.TimeoutError) and not isinstance(
        reason, urllib3.exceptions.NewConnectionError
    )


def _not_found(collection: str, item_id: object, cause: DirectusError) -> NotFoundError:
    shown = str(item_id)
    shown = shown if len(shown) <= 80 else shown[:77] + "..."
    return NotFoundError(
        f"{collection} item {shown!r} does not exist",
        status=cause.status,
        code="NOT_FOUND",
        method=cause.method,
        url=cause.url if len(cause.url or "") <= 300 else None,
    )


def _encode_params(params: Mapping[str, Any]) -> dict[str, str]:
    """Directus takes filter/aggregate/deep as JSON in the query string."""
    encoded: dict[str, str] = {}
    for key, value in params.items():
        if isinstance(value, Mapping | list):
            encoded[key] = json.dumps(value, separators=(",", ":"))
        else:
            encoded[key] = str(value)
    return encoded


def _key(value: Any) -> str:
    """A related item's key, whether Directus gave the key or the item (`{"id": ...}`)."""
    if isinstance(value, dict):
        value = value.get("id")
    return str(value) if isinstance(value, str | int) and not isinstance(value, bool) else ""


def _data(body: Any) -> Any:
    if isinstance(body, dict) and "data" in body:
        return body["data"]
    return body
