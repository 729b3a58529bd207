"""``flask football ...``: run or enqueue the football sync, show what is stored."""

from __future__ import annotations

import click
from flask.cli import with_appcontext
from sqlalchemy import func, select

from crm.base import keys
from crm.base.extensions import db, get_queue
from football import jobs
from football.models import Fixture, League, Odds, Team, TeamFollow
from integrations.apifootball import APIFootballError


@click.group("football", help="Football data from APIFootball.")
def football_cli() -> None:
    pass


@football_cli.command("sync")
@click.option("--now", "foreground", is_flag=True, help="Run in this process, one progress line per stage.")
@with_appcontext
def sync_command(foreground: bool) -> None:
    """Full sync: leagues, fixtures and odds for the coming days, recent results."""
    if not foreground:
        job = get_queue(keys.LOW).enqueue(jobs.full_sync, job_timeout=3600, result_ttl=3600,
                                     failure_ttl=keys.FAILURE_TTL)
        click.echo(f"enqueued full sync on 'low' as job {job.id}")
        return
    try:
        summary = jobs.full_sync(progress=lambda line: click.echo(line))
    except APIFootballError as exc:
        raise click.ClickException(str(exc)) from None
    if "skipped" in summary:
        raise click.ClickException(summary["skipped"])
    click.echo("football sync done")


@football_cli.command("status")
@with_appcontext
def status_command() -> None:
    """How many leagues, teams, fixtures (by status) and odds are stored."""
    for label, model in (("leagues", League), ("teams", Team), ("odds", Odds), ("follows", TeamFollow)):
        click.echo(f"{label:9} {db.session.execute(select(func.count()).select_from(model)).scalar_one()}")
    for status, count in db.session.execute(select(Fixture.status, func.count()).group_by(Fixture.status)):
        click.echo(f"fixtures  {status:10} {count}")
