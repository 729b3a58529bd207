""".env.example reads the same in all three places that read a .env file.

scripts/run.sh sources it with bash (``set -a; . ./.env``), honcho parses it again for the
processes it starts, and the flask CLI loads it with python-dotenv. An unquoted value with a
space means three different things to them (bash runs the rest as a command, honcho drops the
spaces), so every value must come out identical from all three, and the app must accept it.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest
from dotenv import dotenv_values
from honcho.environ import parse as honcho_parse

from crm.base.config import Settings
from tests.helpers import ROOT

EXAMPLE = ROOT / ".env.example"
ASSIGNMENT = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*)=", re.MULTILINE)


def read_three_ways(path, cwd) -> tuple[list[str], dict, dict, dict, str]:
    """Names in a .env file, its values as bash, honcho and python-dotenv see them, bash's stderr."""
    dump = "import json, os; print(json.dumps(dict(os.environ)))"
    script = f'set -a; . "$1"; set +a; exec "{sys.executable}" -c "{dump}"'
    result = subprocess.run(["bash", "--noprofile", "--norc", "-c", script, "bash", str(path)],
                            env={"PATH": os.environ.get("PATH", "/usr/bin:/bin")}, cwd=cwd,
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    text = path.read_text()
    return (ASSIGNMENT.findall(text), json.loads(result.stdout), honcho_parse(text),
            dict(dotenv_values(path)), result.stderr)


def disagreements(path, cwd) -> list[str]:
    names, bash, honcho, dotenv, bash_stderr = read_three_ways(path, cwd)
    problems = [f"bash: {line}" for line in bash_stderr.splitlines()]
    for name in names:
        if name not in bash:
            problems.append(f"{name}: bash did not set it")
            continue
        value = bash[name]
        if dotenv.get(name) != value:
            problems.append(f"{name}: bash {value!r}, python-dotenv {dotenv.get(name)!r}")
        # honcho leaves out a variable with an empty value; bash and dotenv set it to "".
        if honcho.get(name, "") != value or (name not in honcho and value != ""):
            problems.append(f"{name}: bash {value!r}, honcho {honcho.get(name)!r}")
    return problems


def test_every_value_of_env_example_reads_the_same_in_bash_honcho_and_dotenv(tmp_path):
    # Run bash in a directory with files in it: an unquoted '*' would expand to them.
    (tmp_path / "Procfile").write_text("web: true\n")
    assert disagreements(EXAMPLE, tmp_path) == []


def test_the_comparison_catches_an_unquoted_value_with_spaces(tmp_path):
    (tmp_path / "Procfile").write_text("web: true\n")
    env = tmp_path / "bad.env"
    env.write_text("SESSION_CLEANUP_CRON=*/5 * * * *\nGREETING=hello there\n")
    problems = disagreements(env, tmp_path)
    assert any("SESSION_CLEANUP_CRON" in p for p in problems), problems
    assert any("GREETING" in p for p in problems), problems


def test_the_app_accepts_env_example_and_its_values_are_the_defaults():
    values = dotenv_values(EXAMPLE)
    assert "SESSION_EXPIRED_MESSAGE" in values and "REDIS_TLS_VERIFY" in values
    from_example = Settings.from_env({k: v for k, v in values.items() if v is not None})
    assert from_example == Settings.from_env({})
    assert from_example.session_cleanup_cron == "*/5 * * * *"
    assert from_example.session_expired_message.startswith("Your session has expired")


@pytest.mark.parametrize("name", ["PORT"])
def test_env_example_does_not_pin_what_the_command_line_should_choose(name):
    # honcho gives a PORT from .env precedence over `PORT=8123 bash scripts/run.sh`.
    assert name not in dotenv_values(EXAMPLE)
