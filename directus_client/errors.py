"""Errors raised by the Directus client.

One base class carrying the HTTP context, narrow subclasses keyed on Directus's
`errors[0].extensions.code` (or on the kind of transport failure).
"""

from __future__ import annotations

from typing import Any


class DirectusError(Exception):
    """Base of every error from the client."""

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        code: str | None = None,
        method: str | None = None,
        url: str | None = None,
        body: Any = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.code = code
        self.method = method
        self.url = url
        self.body = body

    def __str__(self) -> str:
        where = f" ({self.method} {self.url})" if self.method and self.url else ""
        status = f"{self.status} " if self.status is not None else ""
        code = f"{self.code}: " if self.code else ""
        return f"{status}{code}{self.message}{where}"


class DirectusUnavailableError(DirectusError):
    """Directus could not be reached, timed out, or answered 5xx/429 after the retries.

    `retry_after`: the seconds Directus asked to wait (its `Retry-After`), when it said so.
    """

    retry_after: float | None = None


class DirectusTimeoutError(DirectusUnavailableError):
    """A connect or read timeout."""


class InvalidCredentialsError(DirectusError):
    """401 INVALID_CREDENTIALS / TOKEN_EXPIRED: the token is not valid."""


class ForbiddenError(DirectusError):
    """403 FORBIDDEN: no permission, or (Directus's way) the item does not exist."""


class MissingPermissionError(DirectusError):
    """The client's token may not do what a lookup needs: Directus answered 403 where the
    query is valid, or an answer of a shape the client cannot read (ids where objects were
    asked for, which Directus does when a related collection may not be read).

    `permission` names what is likely missing ("read directus_access"), `purpose` what it is
    needed for. A configuration error of the token, never a sign that the item is absent.
    """

    def __init__(self, permission: str, purpose: str, *, detail: str = "", **context: Any) -> None:
        message = f"cannot {permission}: needed to {purpose}"
        super().__init__(f"{message} ({detail})" if detail else message, **context)
        self.permission = permission
        self.purpose = purpose


class NotFoundError(DirectusError):
    """The item or route does not exist (a 404, or a PATCH that matched nothing)."""


class InvalidPayloadError(DirectusError):
    """400 INVALID_PAYLOAD."""


class InvalidQueryError(DirectusError):
    """400 INVALID_QUERY."""


class RecordNotUniqueError(DirectusError):
    """400 RECORD_NOT_UNIQUE."""


class FailedValidationError(DirectusError):
    """400 FAILED_VALIDATION."""


class InvalidForeignKeyError(DirectusError):
    """400 INVALID_FOREIGN_KEY: a relation points at an item that does not exist."""


class RateLimitedError(DirectusUnavailableError):
    """429 REQUESTS_EXCEEDED after the retries."""


class UriTooLongError(DirectusError):
    """414/431: the URL (e.g. an id of several kilobytes) is too long for the server."""


ERRORS_BY_CODE: dict[str, type[DirectusError]] = {
    "INVALID_CREDENTIALS": InvalidCredentialsError,
    "TOKEN_EXPIRED": InvalidCredentialsError,
    "INVALID_TOKEN": InvalidCredentialsError,
    "FORBIDDEN": ForbiddenError,
    "ROUTE_NOT_FOUND": NotFoundError,
    "INVALID_PAYLOAD": InvalidPayloadError,
    "INVALID_QUERY": InvalidQueryError,
    "RECORD_NOT_UNIQUE": RecordNotUniqueError,
    "FAILED_VALIDATION": FailedValidationError,
    "INVALID_FOREIGN_KEY": InvalidForeignKeyError,
    "REQUESTS_EXCEEDED": RateLimitedError,
    "SERVICE_UNAVAILABLE": DirectusUnavailableError,
}

ERRORS_BY_STATUS: dict[int, type[DirectusError]] = {
    401: InvalidCredentialsError,
    403: ForbiddenError,
    404: NotFoundError,
    414: UriTooLongError,
    429: RateLimitedError,
    431: UriTooLongError,
}
