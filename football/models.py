"""Football data: leagues, teams, fixtures, odds, and who follows which team.

Everything from the provider is keyed by the provider's id and upserted in
place (``football.sync``), so ids stay stable and nothing is deleted and
re-created.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Boolean, DateTime, Float, ForeignKey, Index, Integer, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column, relationship

from crm.base.extensions import db
from crm.base.models import BigId, utcnow


class League(db.Model):
    __tablename__ = "football_leagues"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    provider_id: Mapped[str] = mapped_column(String(32), unique=True)
    name: Mapped[str] = mapped_column(String(128))
    country: Mapped[str | None] = mapped_column(String(128))
    season: Mapped[str | None] = mapped_column(String(32))
    logo_url: Mapped[str | None] = mapped_column(String(512))
    updated_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


class Team(db.Model):
    __tablename__ = "football_teams"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    provider_id: Mapped[str] = mapped_column(String(32), unique=True)
    name: Mapped[str] = mapped_column(String(128), index=True)
    badge_url: Mapped[str | None] = mapped_column(String(512))
    updated_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


class Fixture(db.Model):
    __tablename__ = "football_fixtures"
    __table_args__ = (Index("ix_football_fixtures_status_kickoff", "status", "kickoff_at"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    provider_id: Mapped[str] = mapped_column(String(32), unique=True)
    league_id: Mapped[int] = mapped_column(ForeignKey("football_leagues.id"), index=True)
    home_team_id: Mapped[int] = mapped_column(ForeignKey("football_teams.id"), index=True)
    away_team_id: Mapped[int] = mapped_column(ForeignKey("football_teams.id"), index=True)
    kickoff_at: Mapped[datetime] = mapped_column(DateTime, index=True)  # naive UTC
    kickoff_time_known: Mapped[bool] = mapped_column(Boolean, default=True)
    status: Mapped[str] = mapped_column(String(16))  # football.parse: scheduled, live, finished, ...
    status_text: Mapped[str | None] = mapped_column(String(32))  # the provider's own string
    minute: Mapped[str | None] = mapped_column(String(16))
    round: Mapped[str | None] = mapped_column(String(64))
    home_score: Mapped[int | None] = mapped_column(Integer)
    away_score: Mapped[int | None] = mapped_column(Integer)
    home_ht_score: Mapped[int | None] = mapped_column(Integer)
    away_ht_score: Mapped[int | None] = mapped_column(Integer)
    home_ft_score: Mapped[int | None] = mapped_column(Integer)  # 90 minutes
    away_ft_score: Mapped[int | None] = mapped_column(Integer)
    home_et_score: Mapped[int | None] = mapped_column(Integer)
    away_et_score: Mapped[int | None] = mapped_column(Integer)
    home_pen_score: Mapped[int | None] = mapped_column(Integer)
    away_pen_score: Mapped[int | None] = mapped_column(Integer)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime)  # when we first saw it finished
    result_notified_at: Mapped[datetime | None] = mapped_column(DateTime)
    updated_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)

    league: Mapped[League] = relationship(lazy="joined")
    home: Mapped[Team] = relationship(foreign_keys=[home_team_id], lazy="joined")
    away: Mapped[Team] = relationship(foreign_keys=[away_team_id], lazy="joined")


class Odds(db.Model):
    __tablename__ = "football_odds"
    __table_args__ = (UniqueConstraint("fixture_id", "bookmaker", "market", "selection"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    fixture_id: Mapped[int] = mapped_column(ForeignKey("football_fixtures.id"))
    bookmaker: Mapped[str] = mapped_column(String(64))
    market: Mapped[str] = mapped_column(String(48))
    selection: Mapped[str] = mapped_column(String(16))
    price: Mapped[float] = mapped_column(Float)
    updated_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


class TeamFollow(db.Model):
    """A contact asked to hear about a team's results."""

    __tablename__ = "football_follows"
    __table_args__ = (UniqueConstraint("contact_id", "team_id"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    contact_id: Mapped[int] = mapped_column(ForeignKey("contacts.id", ondelete="CASCADE"), index=True)
    team_id: Mapped[int] = mapped_column(ForeignKey("football_teams.id"), index=True)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
