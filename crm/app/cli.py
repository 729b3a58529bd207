"""``flask --app wsgi flows ...`` and ``flask --app wsgi sessions ...``."""

from __future__ import annotations

import json
import sys
import uuid
from contextlib import contextmanager
from dataclasses import replace

import click
from flask import current_app
from flask.cli import AppGroup
from sqlalchemy import func, insert, select

from crm.base.enums import OPEN_STATUSES
from crm.base.extensions import db
from crm.base.models import Contact, utcnow
from crm.replies.expiry import expire_idle_sessions
from flows.actions import actions_of
from flows.document import FlowError, check_library
from flows.engine import EngineSettings
from flows.models import Flow, FlowSession
from flows.store import import_flows, library_cache, load_files
from flows.transcripts import Conversation, DatabaseFixture, bot_lines, load_library, parts, run_transcripts, state

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
        select(FlowSession, func.coalesce(Contact.wa_id, Contact.user_id))
        .join(Contact, Contact.id == FlowSession.contact_id)
        .where(FlowSession.status.in_(OPEN_STATUSES)).order_by(FlowSession.last_activity_at)
    ).all()
    for s, wa_id in rows:
        idle = (now - s.last_activity_at).total_seconds()
        click.echo(f"{wa_id:16} {s.flow_name:16} {s.step_id or '-':16} {s.status:9} idle {idle:8.0f}s")
    click.echo(f"{len(rows)} open session(s)")


# --- conversation tests and the terminal chat -------------------------------------------------

def _add_contact(session, contact: dict) -> int:
    """The test contact as a contacts row, inside a transaction that is never committed."""
    now = utcnow()
    return session.execute(insert(Contact).returning(Contact.id), {
        "wa_id": contact["wa_id"], "profile_name": contact.get("name") or None,
        "custom_fields": dict(contact.get("fields") or {}), "opted_out": bool(contact.get("opted_out")),
        "blocked": False, "first_seen_at": now, "last_seen_at": now, "last_inbound_at": now,
    }).scalar_one()


@contextmanager
def _throwaway_app():
    """An app like this one on an empty in-memory SQLite database: transcripts seed what they need
    and never see (or change) real contacts, flows or football data."""
    # the factory that built this app (no import of crm.app.factory here: it imports this module)
    app = current_app.extensions["crm.create_app"](replace(current_app.config["SETTINGS"], database_url="sqlite://"))
    with app.app_context():
        db.create_all()
        try:
            yield app
        finally:
            db.session.remove()
            db.engine.dispose()


@flows_cli.command("test")
@click.argument("paths", nargs=-1, required=True)
@click.option("--full-coverage", is_flag=True, help="Also fail when a step of a tested flow is never visited.")
def test_cmd(paths, full_coverage):
    """Run conversation tests (*.test.yaml files, or the folders holding them).

    Each transcript runs against the flow files next to it (or its 'flows:'), the real engine and
    the registered actions, on a throwaway database; nothing is sent. Exit status 1 on any failure.
    """
    settings = current_app.config["SETTINGS"]
    with _throwaway_app() as app:
        fixture = DatabaseFixture(db.session, db.metadata, _add_contact)
        summary = run_transcripts(list(paths), actions_of(app), EngineSettings.from_settings(settings),
                                  settings.session_expired_message, fixture, click.echo)
    partial = [name for name, (_steps, missed) in summary.coverage.items() if missed]
    if full_coverage and partial:
        click.echo(f"not every step is visited: {', '.join(partial)}")
    if not summary.ok or (full_coverage and partial):
        sys.exit(1)


CHAT_HELP = """Type what the user says. A number or an option id presses a button or list row of the
last message. Commands: /vars (session, variables, the steps of the last turn), /reset (start
again as a new contact), /expire (the session idles out), /say TEXT (send TEXT as typed, even a
number), /quit."""


@contextmanager
def _turn_transaction(contact: dict):
    """Actions run on the real database in a transaction rolled back after the turn, with the
    test contact as a temporary row; without the tables, the contact has no row."""
    try:
        try:
            contact["id"] = _add_contact(db.session, contact)
        except Exception:  # no contacts table: actions that need the row fail
            db.session.rollback()
            contact["id"] = 0
        yield
    finally:
        db.session.rollback()


@flows_cli.command("chat")
@click.argument("name")
@click.option("--flows", "paths", multiple=True, help="Flow files or folders to use instead of the "
              "active flows in the database (repeatable).")
@click.option("--contact-name", default="Test", show_default=True, help="The test contact's profile name.")
def chat_cmd(name, paths, contact_name):
    """Talk to flow NAME in the terminal as a test contact.

    The real engine and actions answer; nothing is sent to WhatsApp and nothing is saved.
    """
    settings = current_app.config["SETTINGS"]
    try:
        if paths:
            library = load_library(list(paths))
        else:
            library = library_cache.get()
    except FlowError as exc:
        click.echo(str(exc), err=True)
        sys.exit(1)
    if name not in library.flows:
        where = ", ".join(paths) if paths else "the database (import it, or use --flows PATH)"
        click.echo(f"no active flow named {name!r} in {where}", err=True)
        sys.exit(1)

    def new_contact() -> dict:
        return {"id": 0, "wa_id": f"chat-{uuid.uuid4().hex[:8]}", "name": contact_name, "fields": {},
                "opted_out": False}

    conv = Conversation(library, new_contact(), EngineSettings.from_settings(settings), actions_of(current_app),
                        settings.session_expired_message)

    def show(messages: list[dict]) -> None:
        for message in messages:
            click.echo("\n".join(bot_lines(parts(message), detail=True, prefix="bot> ")))
        for error in conv.errors:
            what = f"action {error['action']}" if error.get("action") else f"step {error.get('step') or '-'}"
            first = (str(error.get("error") or "").strip().splitlines() or ["?"])[0]
            click.echo(f"  ! {what} failed: {first}")
        if not messages:
            click.echo("  (no answer)")

    def turn(run) -> None:
        before = len(conv.sent)
        with _turn_transaction(conv.contact):
            run()
        show(conv.sent[before:])

    click.echo(f"Chatting with {name!r} as {contact_name!r}: nothing is sent to WhatsApp or saved. /help for help.")
    turn(lambda: conv.start(name))
    while True:
        try:
            line = click.prompt("", prompt_suffix="you> ", default="", show_default=False)
        except (click.Abort, EOFError):
            click.echo()
            break
        line = line.strip()
        if not line:
            continue
        command, _, rest = line.partition(" ")
        if command in ("/quit", "/exit"):
            break
        if command == "/help":
            click.echo(CHAT_HELP)
        elif command == "/vars":
            now = state(conv)
            click.echo(f"flow: {now['flow'] or '-'}  step: {now['step'] or '-'}  status: {now['status']}"
                       + (f" ({now['end_reason']})" if now["end_reason"] else ""))
            click.echo(f"path: {' → '.join(conv.steps()) or '-'}")
            click.echo(f"vars: {json.dumps(now['vars'], ensure_ascii=False, indent=2, default=str)}")
            click.echo(f"contact fields: {json.dumps(now['fields'], ensure_ascii=False, default=str)}"
                       + ("  (opted out)" if now["opted_out"] else ""))
        elif command == "/reset":
            conv.reset(new_contact())
            conv.sent.clear()
            turn(lambda: conv.start(name))
        elif command == "/expire":
            show(conv.expire())
        elif command == "/say" and rest:
            turn(lambda text=rest: conv.say(text))
        elif command.startswith("/"):
            click.echo(f"unknown command {command}; /help lists them")
        else:
            _chat_input(conv, line, turn)


def _chat_input(conv, line: str, turn) -> None:
    """A number or an option id of the bot's latest message presses it; anything else is text."""
    last = conv.sent[-1] if conv.sent else None
    if last is not None and last.get("type") == "interactive":
        p = parts(last)
        titles = p.get("buttons") or p.get("rows") or []
        if line in p["ids"] or (line.isdigit() and 1 <= int(line) <= len(titles)):
            choice = titles[p["ids"].index(line)] if line in p["ids"] else titles[int(line) - 1]
            click.echo(f"  (pressed {choice!r})")
            turn(lambda: conv.press(line))
            return
    turn(lambda: conv.say(line))


def init_app(app) -> None:
    app.cli.add_command(flows_cli)
    app.cli.add_command(sessions_cli)
