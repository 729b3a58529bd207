"""Football data, a plugin: models, APIFootball sync jobs (queue ``low``), flow actions, CLI.

``init_app`` wires it into an app (Flask tutorial style): its flow actions, its CLI group
and its schedules. Nothing below this layer imports football.
"""

from __future__ import annotations

from crm.base.schedules import add_schedules
from flows.actions import register_actions
from football import actions, jobs, models  # noqa: F401 - models: the schema must know the tables
from football.cli import football_cli


def init_app(app) -> None:
    register_actions(app, actions.ACTIONS)
    app.cli.add_command(football_cli)
    add_schedules(app, *jobs.schedules(app.config["SETTINGS"]))
