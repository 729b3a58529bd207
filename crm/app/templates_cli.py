"""``flask --app wsgi templates sync|list``: the business account's message templates, and their
hourly sync (``crm-templates-sync`` on ``low``)."""

from __future__ import annotations

import sys

import click
from flask.cli import AppGroup
from sqlalchemy import select

from crm.base import keys
from crm.base.extensions import db, get_settings
from crm.base.schedules import Schedule, add_schedules
from crm.base.templates import SYNC_JOB, SYNC_TIMEOUT, MessageTemplate, sync_templates
from integrations.whatsapp.templates import TemplateClientError, TemplatesClient

templates_cli = AppGroup("templates", help="Sync and list the WhatsApp message templates.")


@templates_cli.command("sync")
def sync_cmd():
    """Read every template of WHATSAPP_BUSINESS_ACCOUNT_ID from the Graph API now."""
    try:
        result = sync_templates(TemplatesClient.from_settings(get_settings()))
    except TemplateClientError as exc:
        db.session.rollback()
        click.echo(f"templates sync failed: {exc}", err=True)
        sys.exit(1)
    click.echo(f"{result.created} created, {result.updated} updated, {result.unchanged} unchanged, "
               f"{result.deleted} marked deleted ({result.pages} page(s), {result.calls} request(s))")


@templates_cli.command("list")
@click.option("--approved", is_flag=True, help="only the approved ones")
def list_cmd(approved):
    """Name, language, status, category and parameter counts of the stored templates."""
    stmt = select(MessageTemplate).order_by(MessageTemplate.name, MessageTemplate.language)
    if approved:
        stmt = stmt.where(MessageTemplate.status == "APPROVED")
    rows = db.session.execute(stmt).scalars().all()
    for t in rows:
        params = (f"header {t.header_params} body {t.body_params} buttons {t.button_params}"
                  if t.components is not None else "parameters not synced yet")
        click.echo(f"{t.name:32} {t.language:8} {t.status:16} {t.category or '-':14} {params}")
    click.echo(f"{len(rows)} template(s)")


def init_app(app) -> None:
    app.cli.add_command(templates_cli)
    # skips quietly without WHATSAPP_BUSINESS_ACCOUNT_ID
    add_schedules(app, Schedule("templates-sync", app.config["SETTINGS"].templates_sync_cron, SYNC_JOB, keys.LOW,
                                SYNC_TIMEOUT))
