"""A client for the Directus REST API, on requests.

Pooled keep-alive session, connect and read timeouts, and retries (urllib3's `Retry`: capped
exponential backoff with jitter, honouring `Retry-After`) for connection errors, 429 and 5xx,
only on calls that are safe to repeat: reads, and PATCHes that set fields to given values.
POSTs that create are not retried here; callers that need them at least once use their own
outbox.

Directus quirks handled here: a GET of a missing item answers 403, which `get_item` reports as
`NotFoundError` when the token can read the collection (else it stays `ForbiddenError`); a PATCH
of a missing item answers 204 with no body, which `update_item` reports as `NotFoundError`. Ids
and collection names in paths are URL-encoded so that an id like `1/../../users` stays one
path segment.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Mapping, Sequence
from typing import Any
from urllib.parse import quote

import requests
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

from directus_client.errors import (
    ERRORS_BY_CODE,
    ERRORS_BY_STATUS,
    DirectusError,
    DirectusTimeoutError,
    DirectusUnavailableError,
    ForbiddenError,
    NotFoundError,
)

log = logging.getLogger(__name__)

Item = dict[str, Any]
RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
SAFE_TO_RETRY = frozenset({"GET", "HEAD", "OPTIONS", "PATCH", "SEARCH"})


def _segment(value: object) -> str:
    """One URL path segment: every reserved character (including '/') percent-encoded."""
    text = str(value)
    if text in ("", ".", ".."):
        raise ValueError(f"invalid path segment {text!r}")
    return quote(text, safe="")


class DirectusClient:
    """Talks to one Directus instance with one token."""

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
        pool_maxsize: int = 16,
        session: requests.Session | None = None,
        user_agent: str = "refund-bridge-directus-client",
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout = (connect_timeout, read_timeout)
        self.session = session or requests.Session()
        retry = Retry(
            total=retries,
            connect=retries,
            read=retries,
            status=retries,
            other=0,
            allowed_methods=SAFE_TO_RETRY,
            status_forcelist=RETRY_STATUSES,
            backoff_factor=backoff_factor,
            backoff_max=backoff_max,
            backoff_jitter=backoff_jitter,
            respect_retry_after_header=True,
            raise_on_status=False,
            raise_on_redirect=False,
        )
        adapter = HTTPAdapter(max_retries=retry, pool_connections=4, pool_maxsize=pool_maxsize)
        self.session.mount("http://", adapter)
        self.session.mount("https://", adapter)
        self.session.headers["User-Agent"] = user_agent
        self.session.headers["Accept"] = "application/json"
        self._token = token

    def with_token(self, token: str) -> DirectusClient:
        """A client for the same server with another token, sharing this one's pool."""
        other = DirectusClient.__new__(DirectusClient)
        other.base_url = self.base_url
        other.timeout = self.timeout
        other.session = self.session
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
        """Send one request; return the decoded JSON (or None for an empty body)."""
        url = f"{self.base_url}{path}"
        headers: dict[str, str] = {}
        bearer = token if token is not None else self._token
        if bearer:
            headers["Authorization"] = f"Bearer {bearer}"
        encoded_params = _encode_params(params) if params else None
        try:
            response = self.session.request(
                method,
                url,
                params=encoded_params,
                json=json_body,
                headers=headers,
                timeout=self.timeout,
            )
        except requests.Timeout as exc:
            raise DirectusTimeoutError(
                "Directus did not answer in time", method=method, url=url
            ) from exc
        except requests.RequestException as exc:
            raise DirectusUnavailableError(
                f"Directus could not be reached: {type(exc).__name__}", method=method, url=url
            ) from exc
        return self._decode(response, method, url)

    @staticmethod
    def _decode(response: requests.Response, method: str, url: str) -> Any:
        status = response.status_code
        body: Any = None
        if response.content:
            try:
                body = response.json()
            except ValueError:
                body = response.text[:500]
        if status < 400:
            return body
        code, message = None, f"HTTP {status}"
        if isinstance(body, dict) and isinstance(body.get("errors"), list) and body["errors"]:
            first = body["errors"][0] if isinstance(body["errors"][0], dict) else {}
            message = str(first.get("message") or message)
            extensions = first.get("extensions")
            if isinstance(extensions, dict):
                code = extensions.get("code")
        error_cls: type[DirectusError]
        if status >= 500 or status == 429:
            error_cls = DirectusUnavailableError if status != 429 else ERRORS_BY_STATUS[429]
        else:
            error_cls = ERRORS_BY_CODE.get(code or "") or ERRORS_BY_STATUS.get(
                status, DirectusError
            )
        raise error_cls(message, status=status, code=code, method=method, url=url, body=body)

    # -- server ------------------------------------------------------------------------------

    def ping(self) -> bool:
        """True when `/server/ping` answers `pong`."""
        try:
            return self.request("GET", "/server/ping", token="") == "pong"
        except DirectusError:
            return False

    # -- items -------------------------------------------------------------------------------

    def get_item(
        self, collection: str, item_id: object, *, fields: Sequence[str] | None = None
    ) -> Item:
        """One item. Directus answers 403 for a missing item: raised here as NotFoundError
        only when the item is confirmed absent (the caller can read the collection)."""
        path = f"/items/{_segment(collection)}/{_segment(item_id)}"
        params = {"fields": ",".join(fields)} if fields else None
        try:
            data = self.request("GET", path, params=params)
        except ForbiddenError as exc:
            if self._collection_readable(collection):
                raise NotFoundError(
                    f"{collection} item {item_id!r} does not exist",
                    status=exc.status,
                    code="NOT_FOUND",
                    method="GET",
                    url=exc.url,
                ) from exc
            raise
        return _data(data)

    def _collection_readable(self, collection: str) -> bool:
        try:
            self.request("GET", f"/items/{_segment(collection)}", params={"limit": 0})
        except ForbiddenError:
            return False
        return True

    def find_item(
        self, collection: str, item_id: object, *, fields: Sequence[str] | None = None
    ) -> Item | None:
        """One item by primary key through a filter query: None when it does not exist."""
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

    def create_item(self, collection: str, values: Mapping[str, Any]) -> Item:
        return _data(self.request("POST", f"/items/{_segment(collection)}", json_body=values))

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
        """PATCH one item. A missing item (Directus: 204, empty body) raises NotFoundError."""
        path = f"/items/{_segment(collection)}/{_segment(item_id)}"
        params = {"fields": ",".join(fields or ("id",))}
        data = self.request("PATCH", path, params=params, json_body=values)
        if not data or not isinstance(data, dict) or not data.get("data"):
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
        """PATCH many items with the same values; returns the items that were updated."""
        body = {"keys": list(keys), "data": dict(values)}
        data = self.request(
            "PATCH", f"/items/{_segment(collection)}", params={"fields": "id"}, json_body=body
        )
        rows = _data(data) if data else []
        return list(rows) if isinstance(rows, list) else []

    def update_batch(self, collection: str, items: Sequence[Mapping[str, Any]]) -> list[Item]:
        """PATCH a batch of items, each with its primary key and its own values."""
        data = self.request(
            "PATCH", f"/items/{_segment(collection)}", params={"fields": "id"}, json_body=items
        )
        rows = _data(data) if data else []
        return list(rows) if isinstance(rows, list) else []

    def delete_item(self, collection: str, item_id: object) -> None:
        self.request("DELETE", f"/items/{_segment(collection)}/{_segment(item_id)}")

    # -- users -------------------------------------------------------------------------------

    def me(self, *, token: str | None = None, fields: Sequence[str] | None = None) -> Item:
        """The user the token belongs to (`/users/me`)."""
        params = {"fields": ",".join(fields)} if fields else None
        return _data(self.request("GET", "/users/me", params=params, token=token))

    def get_user(self, user_id: object, *, fields: Sequence[str] | None = None) -> Item:
        params = {"fields": ",".join(fields)} if fields else None
        return _data(self.request("GET", f"/users/{_segment(user_id)}", params=params))

    def user_has_admin_access(self, user_id: object) -> bool:
        """Whether the user has admin access through any policy (Directus 11: policies on
        the user's role or the user itself)."""
        policies = self.request(
            "GET",
            "/policies",
            params={
                "filter": {
                    "_and": [
                        {"admin_access": {"_eq": True}},
                        {
                            "_or": [
                                {"users": {"user": {"_eq": str(user_id)}}},
                                {"roles": {"role": {"users": {"id": {"_eq": str(user_id)}}}}},
                            ]
                        },
                    ]
                },
                "fields": "id",
                "limit": 1,
            },
        )
        return bool(_data(policies))

    def admin_emails(self) -> list[str]:
        """E-mails of the active users with admin access."""
        policies = _data(
            self.request(
                "GET",
                "/policies",
                params={
                    "filter": {"admin_access": {"_eq": True}},
                    "fields": "users.user.email,users.user.status,"
                    "roles.role.users.email,roles.role.users.status",
                    "limit": -1,
                },
            )
        )
        emails: list[str] = []
        for policy in policies or []:
            for access in policy.get("users") or []:
                user = (access or {}).get("user") or {}
                if user.get("status") == "active" and user.get("email"):
                    emails.append(user["email"])
            for access in policy.get("roles") or []:
                role = (access or {}).get("role") or {}
                for user in role.get("users") or []:
                    if user.get("status") == "active" and user.get("email"):
                        emails.append(user["email"])
        return sorted(set(emails))

    # -- flows -------------------------------------------------------------------------------

    def trigger_flow(self, flow_id: str, payload: Mapping[str, Any]) -> Any:
        """POST /flows/trigger/<id> (webhook trigger). Not retried here: a Flow may send
        e-mails, so the caller decides (the bridge's outbox retries it, once per result)."""
        return self.request("POST", f"/flows/trigger/{_segment(flow_id)}", json_body=payload)

    # -- schema and system collections (for `schema apply`, `flows sync`, `check`) -----------

    def list_collections(self) -> list[Item]:
        return list(_data(self.request("GET", "/collections")) or [])

    def get_collection(self, collection: str) -> Item | None:
        try:
            return _data(self.request("GET", f"/collections/{_segment(collection)}"))
        except (ForbiddenError, NotFoundError):
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

    def list_system(self, endpoint: str, *, filter: Mapping[str, Any] | None = None) -> list[Item]:
        """Items of a system collection by its endpoint (`flows`, `operations`, `dashboards`...)."""
        params: dict[str, Any] = {"limit": -1}
        if filter is not None:
            params["filter"] = filter
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
                method="PATCH",
                url=f"{self.base_url}{path}",
            )
        return _data(data)

    def delete_system(self, endpoint: str, item_id: object) -> None:
        self.request("DELETE", f"/{_segment(endpoint)}/{_segment(item_id)}")


def _encode_params(params: Mapping[str, Any]) -> dict[str, str]:
    """Directus takes filter/aggregate/deep as JSON in the query string."""
    encoded: dict[str, str] = {}
    for key, value in params.items():
        if isinstance(value, Mapping | list):
            encoded[key] = json.dumps(value, separators=(",", ":"))
        else:
            encoded[key] = str(value)
    return encoded


def _data(body: Any) -> Any:
    if isinstance(body, dict) and "data" in body:
        return body["data"]
    return body
