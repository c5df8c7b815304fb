"""API keys: creation, revocation, and checking the bearer key of every request.

A key reads ``mjk_<id>_<secret>``. The id finds the row; only a hash of the whole key
is stored, compared with :func:`hmac.compare_digest`. Three scopes:

- ``worker`` (subject: a worker id): may report progress and completion on jobs
  assigned to that worker (``jobs.worker_id``) or mapped to it (``job_mappings``);
  reads nothing.
- ``user`` (subject: a user id): reads that user's jobs; reports nothing.
- ``admin``: everything.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass
from typing import Annotated, Final

from fastapi import HTTPException, Request, Security
from fastapi.security import APIKeyQuery, HTTPAuthorizationCredentials, HTTPBearer

from morag_jobs.api.cache import RefreshingCache
from morag_jobs.events import utc_now
from morag_jobs.store import JobStore
from morag_jobs.store.keys import ApiKey, KeyStore, Scope

__all__ = [
    "SCOPES",
    "ApiKey",
    "ApiKeys",
    "Principal",
    "Scope",
    "authenticate",
    "authenticate_stream",
    "bearer_token",
    "hash_key",
    "principal_of",
]

SCOPES: tuple[Scope, ...] = ("worker", "user", "admin")
KEY_PREFIX: Final = "mjk"

BEARER = HTTPBearer(auto_error=False, description="An API key: `Authorization: Bearer mjk_...`.")
QUERY_TOKEN = APIKeyQuery(
    name="access_token", auto_error=False,
    description="The API key as a query parameter, for EventSource (which cannot send "
                "headers). Accepted on the stream routes only.",
)


def hash_key(key: str) -> str:
    """SHA-256 of the key, hex.

    A fast hash is right here: the secret is 256 random bits, so guessing it from the
    hash is infeasible however fast the hash is. Slow password hashes (bcrypt, argon2)
    exist to protect low-entropy human passwords; on a random key they would only cost
    CPU on every request.
    """
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def _key_id(key: str) -> str | None:
    """The id inside ``mjk_<id>_<secret>``, or None for anything else."""
    prefix, _, rest = key.partition("_")
    key_id, _, secret = rest.partition("_")
    if prefix != KEY_PREFIX or not key_id or not secret or len(key_id) > 32:
        return None
    return key_id


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: the key's id, scope and subject."""

    key_id: str
    scope: Scope
    subject: str | None = None

    def owner(self) -> dict[str, str | None]:
        """The store filter for the jobs this key may touch (``JobStore.get_job``'s owner).

        A user key: its user's jobs; a worker key: the jobs assigned or mapped to its
        worker; an admin key: every job. A key without a subject sees nothing of its kind's
        (the filter names an owner no job has).
        """
        if self.scope == "user":
            return {"user_id": self.subject or ""}
        if self.scope == "worker":
            return {"worker_id": self.subject or ""}
        return {}

    def require_reader(self) -> None:
        if self.scope == "worker":
            raise HTTPException(403, "worker keys may only report progress and completion; "
                                     "read jobs with a user or admin key")

    def require_reporter(self) -> None:
        if self.scope == "user":
            raise HTTPException(403, "user keys may only read jobs; report progress with the "
                                     "worker's key (morag-jobs keys create --worker W)")


@dataclass(frozen=True, slots=True)
class _Stored:
    key_hash: str
    principal: Principal


class ApiKeys:
    """Keys over the ``api_keys`` table (a :class:`KeyStore`), and a short cache so a busy
    key costs no query per request.

    A revoked key stops working within ``cache_ttl`` seconds in every server process.
    ``last_used_at`` is written at most once per ``touch_every`` seconds per key.
    """

    def __init__(self, store: JobStore, *, cache_ttl: float = 1.0, touch_every: float = 60.0):
        self.store = store
        self.key_store = KeyStore(store)
        self.touch_every = touch_every
        self._cache: RefreshingCache[str, _Stored] = RefreshingCache(
            self._load_many, ttl=cache_ttl, name="api-key", on_refresh=self._touch_many
        )
        self._verified: set[str] = set()
        self._touched: dict[str, float] = {}

    # -- managing keys ---------------------------------------------------------------------

    def create(
        self, scope: Scope, subject: str | None = None, label: str | None = None
    ) -> tuple[ApiKey, str]:
        """A new key: its record, and the key itself (shown once, never stored)."""
        if scope not in SCOPES:
            raise ValueError(f"unknown scope {scope!r}; use one of {', '.join(SCOPES)}")
        if (scope == "admin") != (subject is None):
            raise ValueError("worker and user keys need a subject (the worker or user id); "
                             "admin keys take none")
        key_id = secrets.token_hex(6)
        key = f"{KEY_PREFIX}_{key_id}_{secrets.token_urlsafe(32)}"
        record = ApiKey(key_id, scope, subject, label, utc_now())
        self.key_store.add(record, hash_key(key))
        return record, key

    def revoke(self, key_id: str) -> ApiKey | None:
        """Revoke a key (kept for the record); None when there is no such key."""
        self.key_store.revoke(key_id)
        self._cache.drop(key_id)
        return self.get(key_id)

    def get(self, key_id: str) -> ApiKey | None:
        return self.key_store.get(key_id)

    def list_keys(self) -> list[ApiKey]:
        return self.key_store.list_keys()

    # -- checking keys ---------------------------------------------------------------------

    async def verify(self, key: str) -> Principal | None:
        """The key's principal, or None for an unknown, malformed or revoked key.

        Served from the cache; a miss is read together with the other misses of the
        moment. ``last_used_at`` is written by the cache's next refresh.
        """
        key_id = _key_id(key)
        if key_id is None:
            return None
        return self._match(key_id, await self._cache.get(key_id), key)

    def check(self, key: str) -> Principal | None:
        """The key's principal, or None for an unknown, malformed or revoked key (blocking)."""
        key_id = _key_id(key)
        if key_id is None:
            return None
        principal = self._match(key_id, self._cache.load(key_id), key)
        if principal is not None:
            self._touch_many([key_id])
        return principal

    def close(self) -> None:
        self._cache.close()

    def _match(self, key_id: str, stored: _Stored | None, key: str) -> Principal | None:
        if stored is None or not hmac.compare_digest(stored.key_hash, hash_key(key)):
            return None
        self._verified.add(key_id)
        return stored.principal

    def _load_many(self, key_ids: list[str]) -> dict[str, _Stored]:
        return {found.id: _Stored(found.key_hash, Principal(found.id, found.scope, found.subject))
                for found in self.key_store.active(key_ids)}

    def _touch_many(self, key_ids: list[str]) -> None:
        """Write ``last_used_at`` of keys verified since, at most once per ``touch_every``."""
        now = time.monotonic()
        due = [key_id for key_id in key_ids if key_id in self._verified
               and now - self._touched.get(key_id, -self.touch_every) >= self.touch_every]
        if not due:
            return
        for key_id in due:
            self._verified.discard(key_id)
            self._touched[key_id] = now
        self.key_store.touch(due)


# -- FastAPI dependencies --------------------------------------------------------------------

_MISSING = "missing API key: send 'Authorization: Bearer <key>' (an admin creates keys with " \
           "'morag-jobs keys create')"
_INVALID = "invalid or revoked API key: check the key, or ask an admin for a new one " \
           "('morag-jobs keys create')"


def _unauthorized(detail: str, error: str | None = None) -> HTTPException:
    challenge = "Bearer" if error is None else f'Bearer error="{error}"'
    return HTTPException(401, detail, headers={"WWW-Authenticate": challenge})


def bearer_token(request: Request) -> str | None:
    """The key in ``Authorization: Bearer <key>``, else None."""
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    return (token.strip() or None) if scheme.lower() == "bearer" else None


async def principal_of(request: Request, key: str | None) -> Principal:
    """The principal of ``key``; 401 (with ``WWW-Authenticate: Bearer``) when there is none."""
    if not key:
        raise _unauthorized(_MISSING)
    keys: ApiKeys = request.app.state.morag.keys
    found = await keys.verify(key)
    if found is None:
        raise _unauthorized(_INVALID, "invalid_token")
    return found


Bearer = Annotated[HTTPAuthorizationCredentials | None, Security(BEARER)]


async def authenticate(request: Request, credentials: Bearer) -> Principal:
    """The caller's principal from ``Authorization: Bearer``; 401 when missing or invalid."""
    return await principal_of(request, credentials.credentials if credentials else None)


async def authenticate_stream(
    request: Request,
    credentials: Bearer,
    access_token: Annotated[str | None, Security(QUERY_TOKEN)],
) -> Principal:
    """Like :func:`authenticate`, also accepting ``?access_token=`` (for EventSource).

    Only the name spelled exactly so counts: ``?%61ccess_token=`` decodes to the same
    name but is not what a client sends, and is what slips past log redaction.
    """
    if access_token is not None and not _literal_token_parameter(request.url.query):
        access_token = None
    return await principal_of(request, credentials.credentials if credentials else access_token)


def _literal_token_parameter(query: str) -> bool:
    return any(part.split("=", 1)[0] == "access_token" for part in query.split("&"))
