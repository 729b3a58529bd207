"""``flask --app wsgi operators ...``: named operator accounts and their personal API tokens.

Passwords come from a prompt (asked twice) on a terminal, or from the first line of
standard input otherwise (``printf '%s\\n' "$PASSWORD" | flask --app wsgi operators create bo``),
never from an argument (it would land in the shell history and the process list).
"""

from __future__ import annotations

import sys

import click
from flask.cli import AppGroup
from sqlalchemy import select

from crm.base import keys
from crm.base.extensions import db, get_redis
from crm.base.operators import ROLES, AccountError, Operator, audit, create_operator, find_operator, issue_token

operators_cli = AppGroup("operators", help="Operator accounts (inbox sign-in) and personal API tokens.")


def read_password() -> str:
    if sys.stdin.isatty():
        return click.prompt("Password", hide_input=True, confirmation_prompt=True)
    line = sys.stdin.readline()
    return line.rstrip("\r\n")


def fail(message: str) -> None:
    db.session.rollback()
    click.echo(f"error: {message}", err=True)
    sys.exit(1)


def get(name: str) -> Operator:
    operator = find_operator(name)
    if operator is None:
        fail(f"no operator named {name!r} (see: flask --app wsgi operators list)")
    return operator


@operators_cli.command("create")
@click.argument("name")
@click.option("--role", type=click.Choice(ROLES), default="agent", show_default=True)
def create_cmd(name, role):
    """Create an operator; the password is asked for (or read from standard input)."""
    try:
        operator = create_operator(name, role, read_password())
        db.session.flush()
        audit("operator_create", target=operator.name, detail={"role": role})
        db.session.commit()
    except AccountError as exc:
        fail(str(exc))
    click.echo(f"created {operator.role} {operator.name}")


@operators_cli.command("list")
def list_cmd():
    """Operators with their role, state and last sign-in."""
    rows = db.session.execute(select(Operator).order_by(Operator.name)).scalars().all()
    if not rows:
        click.echo("no operators yet: flask --app wsgi operators create NAME --role admin")
    for o in rows:
        last = o.last_login_at.isoformat(timespec="seconds") + "Z" if o.last_login_at else "never"
        click.echo(f"{o.name:24} {o.role:6} {'active' if o.active else 'disabled':9} last sign-in {last}")


@operators_cli.command("password")
@click.argument("name")
def password_cmd(name):
    """Set a new password (asked for, or read from standard input)."""
    operator = get(name)
    try:
        operator.set_password(read_password())
    except AccountError as exc:
        fail(str(exc))
    audit("password", target=operator.name)
    db.session.commit()
    click.echo(f"password of {operator.name} changed")


@operators_cli.command("role")
@click.argument("name")
@click.argument("role", type=click.Choice(ROLES))
def role_cmd(name, role):
    """Change an operator's role."""
    operator = get(name)
    operator.role = role
    audit("operator_role", target=operator.name, detail={"role": role})
    db.session.commit()
    click.echo(f"{operator.name} is now {role}")


def _set_active(name: str, active: bool) -> None:
    operator = get(name)
    operator.active = active
    audit("operator_enable" if active else "operator_disable", target=operator.name)
    db.session.commit()
    click.echo(f"{operator.name} {'enabled' if active else 'disabled (signed out everywhere; tokens refused)'}")


@operators_cli.command("disable")
@click.argument("name")
def disable_cmd(name):
    """Disable an operator: its sessions and tokens stop working at once."""
    _set_active(name, False)


@operators_cli.command("enable")
@click.argument("name")
def enable_cmd(name):
    """Enable a disabled operator again."""
    _set_active(name, True)


@operators_cli.command("token")
@click.argument("name")
@click.option("--label", default="cli", show_default=True, help="what the token is for")
def token_cmd(name, label):
    """Issue a personal API token for /api (printed once; only its hash is stored)."""
    operator = get(name)
    try:
        row, token = issue_token(operator, label)
    except AccountError as exc:
        fail(str(exc))
    audit("token_create", target=row.label, detail={"operator": operator.name})
    db.session.commit()
    click.echo(token)


@operators_cli.command("unlock")
@click.argument("name")
def unlock_cmd(name):
    """Lift a sign-in lockout (5 failures) for this name from every address."""
    redis = get_redis()
    found = list(redis.scan_iter(match=keys.login_failures(name, "*"), count=500))
    if found:
        redis.delete(*found)
    click.echo(f"{len(found)} lockout counter(s) cleared for {name}")
