"""``pipecast serve`` (the HTTP API) and ``pipecast keys`` (who may call it)."""

from __future__ import annotations

import os
from typing import Annotated

import typer
from rich.table import Table

from features.errors import InputError
from serving.auth import KeyStore, Role
from serving.cli.app import PipecastApp
from serving.cli.common import console, safe_text

keys_app = PipecastApp(help="API keys: create (shown once), list, revoke.", no_args_is_help=True)

KeysFileOption = Annotated[
    str | None,
    typer.Option(
        "--keys-file", help="keys file (default: PIPECAST_KEYS_FILE or pipecast-keys.json)"
    ),
]


def _store(keys_file: str | None) -> KeyStore:
    from serving.api.settings import ApiSettings

    return KeyStore(keys_file or ApiSettings().keys_file)


def create(
    role: Annotated[str, typer.Option("--role", help="rep, manager or revops")],
    owner: Annotated[str | None, typer.Option("--owner", help="the rep (role rep)")] = None,
    team: Annotated[str | None, typer.Option("--team", help="the team (role manager)")] = None,
    label: Annotated[str, typer.Option("--label", help="a note: who or what uses it")] = "",
    keys_file: KeysFileOption = None,
) -> None:
    """Create an API key and print it once (only its hash is stored)."""
    try:
        parsed = Role(role)
    except ValueError:
        raise InputError(f"--role: expected rep, manager or revops, got {role!r}") from None
    key, token = _store(keys_file).create(parsed, owner=owner, team=team, label=label)
    typer.echo(token)
    scope = key.owner or key.team or "everything"
    typer.echo(
        f"key {key.key_id}: {key.role.value} ({safe_text(scope)}); shown once, store it now",
        err=True,
    )


def list_keys(keys_file: KeysFileOption = None) -> None:
    """List keys (ids, roles, scopes; never the secrets)."""
    table = Table("id", "role", "owner", "team", "label", "created", "revoked")
    for k in _store(keys_file).all():
        table.add_row(
            k.key_id,
            k.role.value,
            safe_text(k.owner or "-"),
            safe_text(k.team or "-"),
            safe_text(k.label or "-"),
            k.created_at,
            k.revoked_at or "-",
        )
    console().print(table)


def revoke(
    key_id: Annotated[str, typer.Argument(help="the key's id, as `pipecast keys list` shows it")],
    keys_file: KeysFileOption = None,
) -> None:
    """Revoke a key: requests with it get 401 from now on."""
    key = _store(keys_file).revoke(key_id)
    typer.echo(f"revoked key {key.key_id} ({key.role.value})")


def serve(
    host: Annotated[str, typer.Option("--host", help="interface to listen on")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", min=1, max=65535)] = 8000,
    workers: Annotated[int, typer.Option("--workers", min=1, help="worker processes")] = 1,
) -> None:
    """Run the HTTP API (uvicorn); settings from PIPECAST_* environment variables."""
    import uvicorn

    # One math thread per worker: workers already use the cores, nested pools only contend.
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = "1"
    uvicorn.run(
        "serving.api.app:create_app",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        log_level="info",
    )


def register(app: typer.Typer) -> None:
    keys_app.command("create")(create)
    keys_app.command("list")(list_keys)
    keys_app.command("revoke")(revoke)
    app.add_typer(keys_app, name="keys")
    app.command("serve")(serve)
