"""The registry of Python actions that flows can call (``type: action``).

An action is ``fn(params: dict, context: dict) -> result``; the result lands in the step's
``save_as`` variable. Actions may do I/O; the engine itself does not: the runtime passes it
the registry. Packages register theirs in their ``init_app`` (football does), so the engine
never imports a plugin.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

EXTENSION = "crm.flow_actions"


def register_actions(app, actions: Mapping[str, Callable]) -> None:
    registry = app.extensions.setdefault(EXTENSION, {})
    clash = sorted(set(registry) & set(actions))
    if clash:
        raise ValueError(f"flow actions registered twice: {', '.join(clash)}")
    registry.update(actions)


def actions_of(app) -> dict[str, Callable]:
    return app.extensions.get(EXTENSION, {})
