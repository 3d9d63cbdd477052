"""A reusable client for the Directus REST API (no Flask, nothing of the bridge)."""

from directus_client.client import DirectusClient, read_environment_once, send_request
from directus_client.errors import (
    DirectusError,
    DirectusTimeoutError,
    DirectusUnavailableError,
    FailedValidationError,
    ForbiddenError,
    InvalidCredentialsError,
    InvalidForeignKeyError,
    InvalidPayloadError,
    InvalidQueryError,
    MissingPermissionError,
    NotFoundError,
    RateLimitedError,
    RecordNotUniqueError,
    UriTooLongError,
)

__all__ = [
    "DirectusClient",
    "DirectusError",
    "DirectusTimeoutError",
    "DirectusUnavailableError",
    "FailedValidationError",
    "ForbiddenError",
    "InvalidCredentialsError",
    "InvalidForeignKeyError",
    "InvalidPayloadError",
    "InvalidQueryError",
    "MissingPermissionError",
    "NotFoundError",
    "RateLimitedError",
    "RecordNotUniqueError",
    "UriTooLongError",
    "read_environment_once",
    "send_request",
]
