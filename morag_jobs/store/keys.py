"""``KeyStore``: the ``api_keys`` table, read and written through a ``JobStore``'s connections.

Only hashes are stored here; making keys and checking them is :mod:`morag_jobs.api.auth`'s.
Driver errors leave as ``StoreUnavailable``, as from every other store.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal, NamedTuple, cast

from sqlalchemy import Table, select, update

from morag_jobs.events import utc_now
from morag_jobs.store.jobs import JobStore
from morag_jobs.store.models import ApiKeyRow

__all__ = ["API_KEYS", "ActiveKey", "ApiKey", "KeyStore", "Scope"]

Scope = Literal["worker", "user", "admin"]
API_KEYS = cast(Table, ApiKeyRow.__table__)


@dataclass(frozen=True, slots=True)
class ApiKey:
    """A stored key, without its secret."""

    id: str
    scope: Scope
    subject: str | None
    label: str | None
    created_at: datetime
    last_used_at: datetime | None = None
    revoked_at: datetime | None = None

    @classmethod
    def from_row(cls, row: Any) -> ApiKey:
        return cls(row.id, row.scope, row.subject, row.label, row.created_at,
                   row.last_used_at, row.revoked_at)


class ActiveKey(NamedTuple):
    """What checking a key needs: its hash, and whom it speaks for."""

    id: str
    key_hash: str
    scope: Scope
    subject: str | None


class KeyStore:
    """The ``api_keys`` rows of ``store``'s database.

    Queries run in the store's own ``_reading``/``_writing`` blocks (``store/`` shares them),
    so the tables are ready first and driver errors are translated as for jobs.
    """

    def __init__(self, store: JobStore) -> None:
        self.store = store

    def add(self, record: ApiKey, key_hash: str) -> None:
        values = {"id": record.id, "key_hash": key_hash, "scope": record.scope,
                  "subject": record.subject, "label": record.label,
                  "created_at": record.created_at}
        with self.store._writing() as connection:
            connection.execute(API_KEYS.insert().values(values))

    def revoke(self, key_id: str) -> None:
        """Mark the key revoked, unless it already is (the first revocation's time stays)."""
        with self.store._writing() as connection:
            connection.execute(
                update(API_KEYS)
                .where(API_KEYS.c.id == key_id, API_KEYS.c.revoked_at.is_(None))
                .values(revoked_at=utc_now())
            )

    def get(self, key_id: str) -> ApiKey | None:
        with self.store._reading() as connection:
            row = connection.execute(select(API_KEYS).where(API_KEYS.c.id == key_id)).first()
        return ApiKey.from_row(row) if row is not None else None

    def list_keys(self) -> list[ApiKey]:
        """Every key, revoked ones too, oldest first."""
        with self.store._reading() as connection:
            rows = connection.execute(select(API_KEYS).order_by(API_KEYS.c.created_at))
            return [ApiKey.from_row(row) for row in rows]

    def active(self, key_ids: Collection[str]) -> list[ActiveKey]:
        """The keys among ``key_ids`` that exist and are not revoked, in one query."""
        table = API_KEYS
        query = select(table.c.id, table.c.key_hash, table.c.scope, table.c.subject).where(
            table.c.id.in_(key_ids), table.c.revoked_at.is_(None)
        )
        with self.store._reading() as connection:
            return [ActiveKey(*row) for row in connection.execute(query)]

    def touch(self, key_ids: Collection[str]) -> None:
        """Set ``last_used_at`` of these keys to now."""
        with self.store._writing() as connection:
            connection.execute(
                update(API_KEYS).where(API_KEYS.c.id.in_(key_ids)).values(last_used_at=utc_now())
            )
