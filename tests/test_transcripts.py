"""Conversation tests for flows (flows test) and the terminal chat (flows chat)."""

from __future__ import annotations

import shutil
from datetime import datetime

import pytest
from sqlalchemy import func, select

from crm.base.config import DEFAULT_EXPIRED_MESSAGE
from crm.base.extensions import db
from crm.base.models import Contact, Message
from flows import engine
from flows import transcripts as t
from flows.models import FlowSession
from football.models import Team, TeamFollow
from tests.helpers import ROOT, import_examples

EXAMPLES = ROOT / "flows" / "examples"
SQLITE_ONLY = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)  # flows test: own database


def examples_copy(tmp_path):
    target = tmp_path / "examples"
    shutil.copytree(EXAMPLES, target)
    return target


# -- flows test ----------------------------------------------------------------------------------
@SQLITE_ONLY
def test_example_transcripts_pass_and_visit_every_step(app):
    result = app.test_cli_runner().invoke(args=["flows", "test", str(EXAMPLES), "--full-coverage"])
    assert result.exit_code == 0, result.output
    tests = sum(len(t.parse_transcript(p.read_text(), str(p)).doc.tests) for p in EXAMPLES.glob("*.test.yaml"))
    assert tests >= 40
    assert result.output.count("\nok    ") + result.output.startswith("ok    ") == tests
    assert f"{tests} passed, 0 failed" in result.output
    for flow, steps in (("welcome", 6), ("signup", 6), ("handover", 2), ("football", 22)):
        assert f"steps {flow}: {steps}/{steps} visited" in result.output
    with app.app_context():  # the throwaway database held the test contacts and football rows
        assert db.session.execute(select(func.count()).select_from(Contact)).scalar_one() == 0
        assert db.session.execute(select(func.count()).select_from(Team)).scalar_one() == 0


@SQLITE_ONLY
def test_a_changed_reply_text_fails_with_a_diff_naming_the_step(app, tmp_path):
    folder = examples_copy(tmp_path)
    welcome = folder / "welcome.yaml"
    welcome.write_text(welcome.read_text().replace("Please tap one of the buttons.", "Tap a button, please."))
    result = app.test_cli_runner().invoke(args=["flows", "test", str(folder / "welcome.test.yaml")])
    assert result.exit_code == 1
    out = result.output
    transcript = (folder / "welcome.test.yaml").read_text().splitlines()
    line = next(i for i, x in enumerate(transcript, 1) if "name: a wrong answer is asked again" in x)
    assert f"FAIL  {folder / 'welcome.test.yaml'}:{line}  a wrong answer is asked again" in out
    assert f"step 2 (line {line + 3}): bot message 1: the text differs" in out
    diff = out[out.index("--- expected"):]
    assert "+++ actual" in diff
    assert "     user: banana\n" in diff
    assert "    -bot:  Please tap one of the buttons.\n" in diff
    assert "    +bot:  Tap a button, please.\n" in diff
    assert "           [1] Football\n" in diff  # unchanged lines show as context
    assert "1 failed" in out and out.count("FAIL") == 1


@SQLITE_ONLY
def test_state_expectations_and_missing_buttons_fail_readably(app, tmp_path):
    (tmp_path / "flow.yaml").write_text(
        "name: ask\ntriggers: {keywords: [ask]}\nsteps:\n"
        "  - {id: q, type: question, text: Pick, expect: choice, save_as: pick,\n"
        "     options: [{id: a, title: Alpha}, {id: b, title: Beta}]}\n"
        "  - {id: done, type: end, text: 'got {{ pick }}'}\n")
    (tmp_path / "flow.test.yaml").write_text(
        "tests:\n"
        "  - name: state\n"
        "    steps:\n"
        "      - user: ask\n"
        "      - press: 2\n"
        "        bot: [got b]\n"
        "        expect: {status: active, vars: {pick: a, other: 1}}\n"
        "  - name: no such button\n"
        "    steps:\n"
        "      - user: ask\n"
        "      - press: Gamma\n")
    result = app.test_cli_runner().invoke(args=["flows", "test", str(tmp_path)])
    assert result.exit_code == 1
    assert "step 2 (line 5): the state after the turn differs" in result.output
    for line in ("- status: active", "+ status: ended", "- vars.pick: a", "+ vars.pick: b",
                 "- vars.other: 1", "+ vars.other: (missing)"):
        assert f"        {line}\n" in result.output
    assert "step 2 (line 11): no button or row 'Gamma' in the last buttons message (Alpha, Beta)" in result.output


@pytest.mark.parametrize("text, expected", [
    ("tests: [\n", "x.test.yaml:2: not valid YAML"),
    ("flow: welcome\n", "x.test.yaml:1: field 'tests': Field required"),
    ("tests:\n  - name: a\n    steps:\n      - user: hi\n        bott: []\n",
     "x.test.yaml:5: test 'a' step 1 field 'bott': unknown field"),
    ("tests:\n  - name: a\n    steps:\n      - {user: hi, press: Yes}\n",
     "x.test.yaml:4: test 'a' step 1: one input per step, not user and press"),
    ("tests:\n  - name: a\n    steps:\n      - bot: [hi]\n",
     "x.test.yaml:4: test 'a' step 1: 'bot' answers an input"),
    ("tests:\n  - name: a\n    steps:\n      - user: hi\n        bot:\n          - {text~: '(['}\n",
     "x.test.yaml:6: test 'a' step 1 field 'bot[0].text~': bad regex '(['"),
    ("tests:\n  - name: a\n    steps:\n      - user: hi\n        bot:\n          - {type: text, buttons: [A]}\n",
     "x.test.yaml:6: test 'a' step 1 field 'bot[0]': a 'text' message has no buttons or rows"),
    ("tests:\n  - name: a\n    steps:\n      - user: hi\n        expect: {status: finished}\n",
     "x.test.yaml:5: test 'a' step 1 field 'expect.status': Input should be"),
    ("tests:\n  - name: a\n    steps:\n      - user: [hi]\n",
     "x.test.yaml:4: test 'a' step 1 field 'user': Input should be a valid string (put it in quotes)"),
    ("tests:\n  - name: a\n    steps: [{user: hi}]\n  - name: a\n    steps: [{user: hi}]\n",
     "x.test.yaml:4: test 'a' field 'name': a test called 'a' is already at line 2"),
])
def test_malformed_transcripts_name_file_and_line(text, expected):
    with pytest.raises(t.TranscriptError) as err:
        t.parse_transcript(text, "x.test.yaml")
    assert any(p.startswith(expected) for p in err.value.problems), err.value.problems


def test_text_fields_are_taken_as_written():
    loaded = t.parse_transcript("tests:\n  - name: yes\n    steps:\n      - {user: 007, bot: [Yes, 1.50]}\n"
                                "      - {press: No, expect: {vars: {n: 7, ok: yes}}}\n", "x.test.yaml")
    first, second = loaded.doc.tests[0].steps
    assert loaded.doc.tests[0].name == "yes" and first.user == "007" and second.press == "No"
    assert [b.text for b in first.bot] == ["Yes", "1.50"]
    assert second.expect.vars == {"n": 7, "ok": True}  # expected values keep their YAML types


@SQLITE_ONLY
def test_transcripts_that_name_unknown_flows_tables_or_actions(app, tmp_path):
    folder = examples_copy(tmp_path)
    (folder / "bad.test.yaml").write_text(
        "flow: welcom\n"
        "data:\n"
        "  football_teamz: []\n"
        "  football_teams:\n"
        "    - {id: 1, provider_id: '1', nam: Arsenal}\n"
        "tests:\n"
        "  - name: a\n"
        "    fail: [football.fixturez]\n"
        "    steps:\n"
        "      - start: signupp\n")
    result = app.test_cli_runner().invoke(args=["flows", "test", str(folder / "bad.test.yaml")])
    assert result.exit_code == 1
    bad = folder / "bad.test.yaml"
    for problem in (f"{bad}:1: field 'flow': no flow named 'welcom'",
                    f"{bad}:3: field 'data.football_teamz': no table named 'football_teamz'",
                    f"{bad}:5: field 'data.football_teams[0].nam': table 'football_teams' has no column 'nam'",
                    f"{bad}:8: test 'a' field 'fail[0]': no action named 'football.fixturez'",
                    f"{bad}:10: test 'a' step 1 field 'start': no flow named 'signupp'"):
        assert problem in result.output
    assert "0 passed, 0 failed, 5 problems" in result.output


@SQLITE_ONLY
def test_seeding_errors_and_flow_errors_fail_the_test_only(app, tmp_path):
    (tmp_path / "flow.yaml").write_text("name: f\ntriggers: {keywords: [go]}\nsteps:\n"
                                        "  - {id: a, type: action, action: football.following, save_as: r}\n"
                                        "  - {id: b, type: end, text: '{{ r.text }}'}\n")
    (tmp_path / "f.test.yaml").write_text(
        "tests:\n"
        "  - name: duplicate ids\n"
        "    data: {football_teams: [{id: 1, provider_id: '1', name: A}, {id: 1, provider_id: '2', name: B}]}\n"
        "    steps: [{user: go}]\n"
        "  - name: follows nobody\n"
        "    steps:\n"
        "      - user: go\n"
        "        bot: [You don't follow any team yet.]\n")
    result = app.test_cli_runner().invoke(args=["flows", "test", str(tmp_path)])
    assert result.exit_code == 1
    assert "FAIL" in result.output and "could not seed the test's data: (sqlite3.IntegrityError)" in result.output
    assert "ok    " in result.output and "1 passed, 1 failed" in result.output


def test_flow_folders_skip_transcripts(app):
    runner = app.test_cli_runner()
    result = runner.invoke(args=["flows", "validate", str(EXAMPLES)])
    assert result.exit_code == 0 and ".test.yaml" not in result.output
    assert result.output.count("ok  ") == 4


# -- the runner without Flask --------------------------------------------------------------------
def library() -> engine.Library:
    return t.load_library([str(EXAMPLES)])


def test_conversation_presses_by_title_id_and_number_and_keeps_state():
    conv = t.Conversation(library(), {"name": "Ana"})
    conv.say("menu")
    conv.press("Sign up")
    assert conv.session.flow == "signup" and conv.steps() == ["welcome.to_signup", "signup.ask_name"]
    conv.say("menu")
    conv.press("agent")
    assert conv.session.flow == "handover"
    conv.say("menu")
    conv.press("1")
    assert conv.session.step == "menu" and conv.session.flow == "football"
    conv.press("follow a team")  # a list row, by its title in any case
    assert conv.session.step == "follow_ask"
    with pytest.raises(LookupError, match="no button or row 'Cricket'"):
        conv.press("Cricket")
    conv.say("stop")
    assert conv.contact["opted_out"] and conv.end_reason == "stopped"
    assert conv.say("hi").messages == []  # opted out: silence


def test_an_ended_session_is_gone_on_the_next_message():
    conv = t.Conversation(library(), {"name": "Ana"})
    conv.say("signup")
    conv.say("cancel")
    assert conv.session.status == "ended" and conv.end_reason == "cancelled"
    assert conv.say("Ana").session.flow == "welcome"  # not an answer to the cancelled question
    assert conv.end_reason is None


def test_expiry_notice_follows_the_flow_and_consent():
    conv = t.Conversation(library(), {"name": "Ana"}, expired_message="global text")
    conv.start("welcome")
    assert [m["text"]["body"] for m in conv.expire()] == ["global text"]
    conv.start("signup")
    assert [m["text"]["body"] for m in conv.expire()] == ["Your sign-up was not finished. Send 'signup' to try again."]
    quiet = t.Conversation(library(), {"name": "Ana", "opted_out": True}, expired_message="global text")
    quiet.start("signup")  # an operator started it; the contact had opted out
    assert quiet.expire() == [] and quiet.end_reason == "idle" and quiet.session.status == "ended"


def test_data_needs_a_database_without_one(tmp_path, capsys):
    shutil.copytree(EXAMPLES, tmp_path / "ex")
    summary = t.run_transcripts([str(tmp_path / "ex")], {}, engine.EngineSettings(), DEFAULT_EXPIRED_MESSAGE)
    assert not summary.ok
    assert any(p.endswith("'data' needs a database (run `flask flows test`)") for p in summary.problems)
    assert all(o.passed for o in summary.outcomes) and len(summary.outcomes) > 30  # the others ran


@pytest.mark.parametrize("text, expected", [
    ("now", datetime(2026, 6, 13, 12, 34, 56)), ("now-90m", datetime(2026, 6, 13, 11, 4, 56)),
    ("now+1d+2h", datetime(2026, 6, 14, 14, 34, 56)), ("today", datetime(2026, 6, 13)),
    ("today+1d 15:00", datetime(2026, 6, 14, 15, 0)), ("today - 2d 7:05", datetime(2026, 6, 11, 7, 5)),
    ("tomorrow", None), ("2026-06-13", None),
])
def test_relative_times(text, expected):
    assert t.when(text, datetime(2026, 6, 13, 12, 34, 56)) == expected


# -- flows chat ----------------------------------------------------------------------------------
def test_chat_with_the_menu_in_the_terminal(app, graph):
    import_examples(app)
    result = app.test_cli_runner().invoke(args=["flows", "chat", "welcome", "--contact-name", "Ana"],
                                          input="menu\n2\n/vars\n/quit\n")
    assert result.exit_code == 0, result.output
    out = result.output
    assert "bot> Hello Ana! 👋 What would you like to do?\n     [1] Football  (id football)\n" in out
    assert "(pressed 'Sign up')\nbot> What is your full name?" in out
    assert "flow: signup  step: ask_name  status: active" in out
    assert "path: welcome.to_signup → signup.ask_name" in out
    assert '"choice": "signup"' in out
    assert graph.requests == []
    with app.app_context():
        for model in (Contact, Message, FlowSession):
            assert db.session.execute(select(func.count()).select_from(model)).scalar_one() == 0


def test_chat_actions_use_the_database_but_leave_nothing_behind(app, graph):
    import_examples(app)
    with app.app_context():
        db.session.add(Team(provider_id="141", name="Arsenal"))
        db.session.commit()
    result = app.test_cli_runner().invoke(args=["flows", "chat", "football"],
                                          input="4\narsenal\n/vars\n/reset\n/expire\n/quit\n")
    assert result.exit_code == 0, result.output
    assert "bot> Done ✅ I'll send you Arsenal's result when each match finishes." in result.output
    assert "flow: football  step: follow_done  status: ended (completed)" in result.output
    assert "bot> Your session has expired due to inactivity." in result.output  # /reset started it again
    with app.app_context():
        assert db.session.execute(select(func.count()).select_from(TeamFollow)).scalar_one() == 0
        assert db.session.execute(select(func.count()).select_from(Contact)).scalar_one() == 0


def test_chat_refuses_an_unknown_flow(app):
    result = app.test_cli_runner().invoke(args=["flows", "chat", "nope", "--flows", str(EXAMPLES)])
    assert result.exit_code == 1 and "no active flow named 'nope'" in result.output
