"""Who is calling: `Authorization: Bearer <token>` on the refund endpoints (contract section 1).

Three ways in:
- a service token from `BRIDGE_API_TOKENS` (compared in constant time with every configured
  token): a trusted caller such as a Directus Flow; the body says `requested_by`;
- the same service token plus `X-Directus-User-Id: <uuid>` (the Directus extension acting for
  the signed-in user): the bridge treats the caller as that user;
- a Directus user token (access or static token): Directus says whose it is (`/users/me`, which
  may show no more than the id), and the bridge's own token looks up the rest (status, e-mail,
  admin access through any policy).

A user with admin access is an admin; any other user is a customer. Lookups are cached for
`USER_CACHE_SECONDS` at most, so a revoked token or a removed admin policy takes effect within
that time. Tokens are never logged and never appear in an answer.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import threading
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING

from cachetools import TTLCache

from bridge.errors import DirectusUnavailable, Forbidden, NotAuthenticated
from directus_client import (
    DirectusError,
    DirectusUnavailableError,
    ForbiddenError,
    InvalidCredentialsError,
    MissingPermissionError,
    NotFoundError,
)

if TYPE_CHECKING:
    from bridge.services import Services

log = logging.getLogger(__name__)

ACTING_USER_HEADER = "X-Directus-User-Id"
USER_CACHE_SECONDS = 30
USER_CACHE_SIZE = 2048
MAX_TOKEN_CHARS = 4096
ROLE_ADMIN = "admin"
ROLE_CUSTOMER = "customer"
_CACHE_KEY = "auth.user_cache"
_REPORTED_KEY = "auth.missing_permissions_reported"
_cache_guard = threading.Lock()


@dataclass(frozen=True)
class DirectusUser:
    id: str
    email: str | None
    is_admin: bool


@dataclass(frozen=True)
class Caller:
    """The authenticated caller of a request."""

    kind: str  # "service" or "user"
    # Who owns the caller's Idempotency-Keys: a hash of the service token, the acting user.
    scope: str
    user: DirectusUser | None = None

    @property
    def role(self) -> str | None:
        """`admin` or `customer` when the caller is (or acts for) a Directus user."""
        if self.user is None:
            return None
        return ROLE_ADMIN if self.user.is_admin else ROLE_CUSTOMER

    @property
    def is_customer(self) -> bool:
        return self.role == ROLE_CUSTOMER


class _UserCache:
    """A small TTL cache shared by the threads of one process (TTLCache is not thread-safe)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._entries: TTLCache[tuple[str, str], object] = TTLCache(
            maxsize=USER_CACHE_SIZE, ttl=USER_CACHE_SECONDS
        )

    def get(self, key: tuple[str, str]) -> object | None:
        with self._lock:
            return self._entries.get(key)

    def put(self, key: tuple[str, str], value: object) -> None:
        with self._lock:
            self._entries[key] = value


def _cache(services: Services) -> _UserCache:
    with _cache_guard:
        cache = services.extras.get(_CACHE_KEY)
        if cache is None:
            cache = services.extras[_CACHE_KEY] = _UserCache()
    assert isinstance(cache, _UserCache)
    return cache


def _fingerprint(token: str) -> str:
    """A stable, non-reversible name for a token (cache keys, idempotency scopes)."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()[:32]


def bearer_token(authorization: str | None) -> str:
    """The token of an `Authorization: Bearer <token>` header, or 401."""
    if not authorization:
        raise NotAuthenticated("Send `Authorization: Bearer <token>`.")
    scheme, _, token = authorization.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise NotAuthenticated("Send `Authorization: Bearer <token>`.")
    if len(token) > MAX_TOKEN_CHARS or any(ch.isspace() for ch in token):
        raise NotAuthenticated("The token is not valid.")
    return token


def is_service_token(token: str, service_tokens: tuple[str, ...]) -> bool:
    """Constant-time comparison with every configured token (no early exit)."""
    given = token.encode("utf-8")
    matched = False
    for candidate in service_tokens:
        matched |= hmac.compare_digest(candidate.encode("utf-8"), given)
    return matched


def authenticate(
    services: Services, authorization: str | None, acting_user_id: str | None = None
) -> Caller:
    """The caller named by the request's Authorization (and X-Directus-User-Id) headers."""
    token = bearer_token(authorization)
    acting_user_id = (acting_user_id or "").strip() or None
    if is_service_token(token, services.settings.api_tokens):
        scope = "service:" + _fingerprint(token)
        if acting_user_id is None:
            return Caller(kind="service", scope=scope)
        user = _acting_user(services, acting_user_id)
        return Caller(kind="service", scope=f"{scope}:user:{user.id}", user=user)
    user = _token_user(services, token)
    if acting_user_id is not None and acting_user_id != user.id:
        # Only a service may act for someone else; a user token speaks for its owner only.
        raise Forbidden(f"{ACTING_USER_HEADER} is only for service tokens.")
    return Caller(kind="user", scope="user:" + user.id, user=user)


def _acting_user(services: Services, user_id: str) -> DirectusUser:
    try:
        canonical = str(uuid.UUID(user_id))
    except ValueError:
        raise NotAuthenticated(f"{ACTING_USER_HEADER} is not a Directus user id.") from None
    return _lookup_user(services, canonical)


def _token_user(services: Services, token: str) -> DirectusUser:
    cache = _cache(services)
    key = ("token", _fingerprint(token))
    user_id = cache.get(key)
    if not isinstance(user_id, str):
        try:
            me = services.directus.me(token=token, fields=["id"])
        except (InvalidCredentialsError, ForbiddenError, NotFoundError):
            log.info("a bearer token was refused by Directus")
            raise NotAuthenticated("The token is not valid.") from None
        except DirectusError as exc:
            raise _unavailable(exc) from None
        user_id = str(me.get("id") or "") if isinstance(me, dict) else ""
        if not user_id:
            raise NotAuthenticated("The token is not valid.")
        cache.put(key, user_id)
    return _lookup_user(services, user_id)


def _lookup_user(services: Services, user_id: str) -> DirectusUser:
    """The user's status, e-mail and admin access, read with the bridge's own token."""
    cache = _cache(services)
    key = ("user", user_id)
    cached = cache.get(key)
    if isinstance(cached, DirectusUser):
        return cached
    directus = services.directus
    try:
        found = directus.find_user(user_id, fields=("id", "email", "status", "role"))
        if found is None:
            raise NotAuthenticated("The user does not exist.")
        if found.get("status") != "active":
            raise NotAuthenticated("The user is not active.")
        is_admin = directus.admin_access(user_id, found.get("role"))
    except MissingPermissionError as exc:
        raise _misconfigured(services, exc) from None
    except DirectusError as exc:
        raise _unavailable(exc) from None
    _permissions_ok(services)
    email = found.get("email")
    user = DirectusUser(
        id=str(found.get("id") or user_id),
        email=email if isinstance(email, str) else None,
        is_admin=is_admin,
    )
    cache.put(key, user)
    return user


def _misconfigured(services: Services, exc: MissingPermissionError) -> DirectusUnavailable:
    """The bridge's own token lacks a permission: its configuration, not the caller's fault.
    Logged as an error once per missing permission until a lookup succeeds again (every
    request would otherwise log it); the caller gets 503 without the details."""
    with _cache_guard:
        reported = services.extras.setdefault(_REPORTED_KEY, set())
        first = exc.permission not in reported
        reported.add(exc.permission)
    if first:
        log.error(
            "the bridge's Directus token lacks a permission: %s "
            "(run `refund-bridge policy apply`, then `refund-bridge check`; docs/directus.md)",
            exc.message,
            extra={"permission": exc.permission},
        )
    return DirectusUnavailable(
        "The bridge cannot tell who is calling: its own Directus token lacks a permission "
        "(a configuration error of the bridge, not of your token). Try again later."
    )


def _permissions_ok(services: Services) -> None:
    """A lookup went through: a permission missing again later is reported again."""
    if services.extras.get(_REPORTED_KEY):
        with _cache_guard:
            services.extras[_REPORTED_KEY] = set()


def _unavailable(exc: DirectusError) -> DirectusUnavailable:
    if not isinstance(exc, DirectusUnavailableError):
        # Directus answered something unexpected to the bridge's own lookup.
        log.error("Directus refused the bridge's user lookup: %s", exc)
    return DirectusUnavailable("Directus could not confirm who is calling; try again shortly.")
