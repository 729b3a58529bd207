"""``flask --app wsgi flows ...`` and ``flask --app wsgi sessions ...``."""

from __future__ import annotations

import sys

import click
from flask.cli import AppGroup
from sqlalchemy import select

from crm.base.enums import OPEN_STATUSES
from crm.base.extensions import db
from crm.base.models import Contact, utcnow
from crm.replies.expiry import expire_idle_sessions
from flows.document import FlowError, check_library
from flows.models import Flow, FlowSession
from flows.store import import_flows, load_files

flows_cli = AppGroup("flows", help="Import, export, validate and list flows.")
sessions_cli = AppGroup("sessions", help="Inspect and expire flow sessions.")


@flows_cli.command("validate")
@click.argument("paths", nargs=-1, required=True)
def validate_cmd(paths):
    """Validate flow files without importing them."""
    try:
        loaded = load_files(list(paths))
        problems = check_library([x.doc for x in loaded]) if len(loaded) > 1 else []
        if problems:
            raise FlowError(problems)
    except FlowError as exc:
        click.echo(str(exc), err=True)
        sys.exit(1)
    for item in loaded:
        click.echo(f"ok  {item.path}  ({item.doc.name}, {len(item.doc.steps)} steps)")


@flows_cli.command("import")
@click.argument("paths", nargs=-1, required=True)
def import_cmd(paths):
    """Import flow files or folders (upsert by name; all or nothing)."""
    warnings: list[str] = []
    try:
        results = import_flows(load_files(list(paths)), warnings)
    except FlowError as exc:
        db.session.rollback()
        click.echo(str(exc), err=True)
        click.echo("nothing imported", err=True)
        sys.exit(1)
    for name, version, what in results:
        click.echo(f"{what:9}  {name}  v{version}")
    for warning in warnings:
        click.echo(f"warning: {warning}", err=True)


@flows_cli.command("export")
@click.argument("name")
def export_cmd(name):
    """Print a flow document exactly as it was imported."""
    flow = db.session.execute(select(Flow).where(Flow.name == name)).scalar_one_or_none()
    if flow is None:
        click.echo(f"no flow named {name!r}", err=True)
        sys.exit(1)
    click.echo(flow.source, nl=not flow.source.endswith("\n"))


@flows_cli.command("list")
def list_cmd():
    """List stored flows."""
    rows = db.session.execute(select(Flow).order_by(Flow.name)).scalars().all()
    for f in rows:
        keywords = ", ".join(f.document.get("triggers", {}).get("keywords", []))
        click.echo(f"{f.name:20} v{f.version:<4} {'active' if f.active else 'inactive':9} {keywords}")


@sessions_cli.command("expire")
def expire_cmd():
    """Expire idle sessions now and print how many."""
    summary = expire_idle_sessions()
    click.echo(f"expired {summary['expired']} session(s), queued {summary['notices']} notice(s)")


@sessions_cli.command("list")
def sessions_list_cmd():
    """Show open sessions with their idle time."""
    now = utcnow()
    rows = db.session.execute(
        select(FlowSession, Contact.wa_id).join(Contact, Contact.id == FlowSession.contact_id)
        .where(FlowSession.status.in_(OPEN_STATUSES)).order_by(FlowSession.last_activity_at)
    ).all()
    for s, wa_id in rows:
        idle = (now - s.last_activity_at).total_seconds()
        click.echo(f"{wa_id:16} {s.flow_name:16} {s.step_id or '-':16} {s.status:9} idle {idle:8.0f}s")
    click.echo(f"{len(rows)} open session(s)")


def init_app(app) -> None:
    app.cli.add_command(flows_cli)
    app.cli.add_command(sessions_cli)
