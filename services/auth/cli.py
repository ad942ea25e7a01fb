"""Operator commands: ``python -m services.auth.cli --help``.

The first admin is made here, by someone with access to the deployment's
configuration, never by an open endpoint. Settings come from the same
``PARLEY_*`` environment as the service.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Annotated, TypeVar

import typer

from services.auth import accounts, admin, sessions
from services.auth.config import AuthSettings, require_key_encryption
from services.auth.signing import published
from services.auth.state import AuthService
from services.common.clients import mongo_client, redis_client, service_db
from services.common.config import ConfigError, load_settings, read_settings
from services.common.errors import ApiError

app = typer.Typer(help="Parley auth service administration.", no_args_is_help=True)
T = TypeVar("T")
ACTOR = "cli"


@asynccontextmanager
async def _service() -> AsyncIterator[AuthService]:
    try:
        settings = load_settings()
        config = read_settings(AuthSettings)
        require_key_encryption(settings)
    except (ConfigError, ValueError) as exc:
        typer.echo(f"bad configuration: {exc}", err=True)
        raise typer.Exit(2) from None
    mongo = mongo_client(settings)
    redis = redis_client(settings)
    try:
        svc = AuthService.build(settings, config, service_db(mongo, settings, "auth"), redis)
        await svc.start()
        yield svc
        await svc.drain()
    finally:
        await redis.aclose()
        await mongo.close()


def _run(work: Callable[[AuthService], Awaitable[T]]) -> T:
    async def main() -> T:
        async with _service() as svc:
            return await work(svc)

    try:
        return asyncio.run(main())
    except ApiError as exc:
        typer.echo(f"error: {exc.code.value}: {exc.message}", err=True)
        raise typer.Exit(1) from None


def _read_password(from_stdin: bool) -> str:
    if from_stdin:
        return sys.stdin.readline().rstrip("\r\n")
    value: str = typer.prompt("Password", hide_input=True, confirmation_prompt=True)
    return value


@app.command("create-admin")
def create_admin(
    username: Annotated[str, typer.Option(help="The new admin's username.")],
    email: Annotated[str, typer.Option(help="The new admin's e-mail address.")],
    password_stdin: Annotated[
        bool, typer.Option("--password-stdin", help="Read the password from standard input.")
    ] = False,
) -> None:
    """Create an account with the admin role (the password is prompted for)."""
    password = _read_password(password_stdin)

    async def work(svc: AuthService) -> str:
        user = await accounts.create_user(svc, username, email, password, ["user", "admin"])
        await admin.audit(svc, ACTOR, "user.create_admin", None, user["_id"])
        return str(user["_id"])

    user_id = _run(work)
    typer.echo(f"created admin {username.lower()} ({user_id})")


@app.command("grant-admin")
def grant_admin(username: Annotated[str, typer.Argument(help="An existing username.")]) -> None:
    """Give an existing account the admin role (its sessions end: new tokens carry it)."""

    async def work(svc: AuthService) -> str:
        user = await svc.store.user_by_username(username.lower())
        if user is None:
            typer.echo("error: no such user", err=True)
            raise typer.Exit(1)
        if "admin" not in user["roles"]:
            await svc.store.update_user(
                user["_id"], {"roles": ["user", "admin"], "updated_at": svc.now()}
            )
            await admin.audit(svc, ACTOR, "user.grant_admin", None, user["_id"])
            await sessions.revoke_all(svc, user["_id"], "roles_changed")
        return str(user["_id"])

    user_id = _run(work)
    typer.echo(f"{username.lower()} ({user_id}) is an admin")


@app.command("rotate-keys")
def rotate_keys(
    immediate: Annotated[
        bool, typer.Option(help="Sign with the new key at once (skip the publication delay).")
    ] = False,
    drop_previous: Annotated[
        bool,
        typer.Option(help="Delete every older key: all outstanding tokens die (key compromise)."),
    ] = False,
) -> None:
    """Create a new signing key; the old one stays published until its tokens expire."""

    async def work(svc: AuthService) -> str:
        kid = await svc.keyring.rotate(immediate=immediate, drop_previous=drop_previous)
        await admin.audit(
            svc, ACTOR, "keys.rotate", None, None, kid=kid, drop_previous=drop_previous
        )
        return kid

    typer.echo(f"new signing key {_run(work)}")


@app.command("keys")
def list_keys() -> None:
    """List the signing keys and whether each is published and signing."""

    async def work(svc: AuthService) -> list[str]:
        keys = await svc.keyring.keys()
        now = datetime.now(UTC)
        shown, _ = published(keys, now, svc.keyring.token_ttl)
        signer = await svc.keyring.signer()
        return [
            f"{k.kid}  gen={k.generation}  created={k.created_at:%Y-%m-%dT%H:%M:%SZ}  "
            f"{'signing' if k is signer else ('published' if k in shown else 'retired')}"
            for k in keys
        ]

    for line in _run(work):
        typer.echo(line)


if __name__ == "__main__":
    app()
