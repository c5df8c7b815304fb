"""``morag-jobs keys``: create, revoke and list the HTTP API's keys."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Annotated

import typer

from morag_jobs.cli._common import EXIT_USAGE, DatabaseOption, fail, open_store
from morag_jobs.errors import StoreUnavailable
from morag_jobs.store import JobStore

if TYPE_CHECKING:
    from morag_jobs.api.auth import ApiKey, ApiKeys, Scope

app = typer.Typer(help="Manage the HTTP API's keys.", no_args_is_help=True)


@contextmanager
def _keys(database: str | None) -> Iterator[ApiKeys]:
    from morag_jobs.api.auth import ApiKeys  # noqa: PLC0415 (FastAPI loads only when needed)

    try:
        store = open_store(database)  # `keys list` never creates a database
    except ValueError as error:
        fail(str(error), EXIT_USAGE)
    try:
        _reach(store)
        yield ApiKeys(store)
    except StoreUnavailable as error:  # the database answers, so the table is what is wrong
        fail(f"cannot use the api_keys table of {store.url}: {error.reason}; "
             "is the database migrated? run 'morag-jobs db upgrade'")
    finally:
        store.close()


def _reach(store: JobStore) -> None:
    """Exit with the store's own message when the database cannot be reached at all."""
    try:
        store.ensure_ready()
    except StoreUnavailable as error:
        fail(str(error))


def _scope(worker: str | None, user: str | None, admin: bool) -> tuple[Scope, str | None]:
    chosen = [name for name, given in (("--worker", worker), ("--user", user),
                                       ("--admin", admin)) if given]
    if len(chosen) != 1:
        fail("give exactly one of --worker W, --user U or --admin", EXIT_USAGE)
    if worker:
        return "worker", worker
    if user:
        return "user", user
    return "admin", None


@app.command("create")
def create(
    worker: Annotated[str | None, typer.Option(help="A worker key: reports on W's jobs.")] = None,
    user: Annotated[str | None, typer.Option(help="A user key: reads U's jobs.")] = None,
    admin: Annotated[bool, typer.Option("--admin", help="An admin key: everything.")] = False,
    label: Annotated[str | None, typer.Option(help="A note to recognise the key by.")] = None,
    database: DatabaseOption = None,
) -> None:
    """Create a key and print it once, alone on the last line (only its hash is stored)."""
    scope, subject = _scope(worker, user, admin)
    with _keys(database) as keys:
        record, key = keys.create(scope, subject, label)
    who = f" for {scope} {subject!r}" if subject else ""
    typer.echo(f"created {scope} key {record.id}{who}"
               + (f" ({label})" if label else ""), err=True)
    typer.echo("store it now: it is shown only this once", err=True)
    typer.echo(key)  # alone on stdout: KEY=$(morag-jobs keys create --admin)


@app.command("revoke")
def revoke(
    key_id: Annotated[str, typer.Argument(help="The key's id (the part after 'mjk_').")],
    database: DatabaseOption = None,
) -> None:
    """Revoke a key: refused from then on (within a second by running servers)."""
    with _keys(database) as keys:
        record = keys.revoke(key_id)
    if record is None:
        fail(f"no key with id {key_id!r}; 'morag-jobs keys list' shows the ids")
    typer.echo(f"revoked key {record.id}")


@app.command("list")
def list_keys(database: DatabaseOption = None) -> None:
    """List the keys (never their secrets): id, scope, subject, label, created, last used."""
    with _keys(database) as keys:
        records = keys.list_keys()
    typer.echo("id\tscope\tsubject\tlabel\tcreated\tlast_used\trevoked")
    for record in records:
        typer.echo("\t".join(_row(record)))


def _row(record: ApiKey) -> list[str]:
    def when(value: object) -> str:
        return value.isoformat(timespec="seconds") if value is not None else "-"  # type: ignore[attr-defined]

    return [record.id, record.scope, record.subject or "-", record.label or "-",
            when(record.created_at), when(record.last_used_at), when(record.revoked_at)]
