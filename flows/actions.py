"""Registry of Python actions that flows can call (``type: action``).

An action is ``fn(params: dict, context: dict) -> result``; the result lands in
the step's ``save_as`` variable. Actions may do I/O; the engine itself does not.
"""

from __future__ import annotations

from collections.abc import Callable

_ACTIONS: dict[str, Callable] = {}


def action(name: str):
    def register(fn: Callable) -> Callable:
        _ACTIONS[name] = fn
        return fn

    return register


def registry() -> dict[str, Callable]:
    import football.actions  # noqa: F401 - registers the football actions
    return dict(_ACTIONS)
