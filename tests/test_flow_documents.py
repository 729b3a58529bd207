"""Flow documents: validation messages, and the flows CLI (import, export, validate, list)."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from crm.base.extensions import db
from flows.document import FlowError, parse_flow
from flows.models import Flow
from tests.helpers import ROOT

EXAMPLES = ROOT / "flows" / "examples"


@pytest.mark.parametrize("text, expected", [
    ("name: x\nsteps:\n  - {id: a, type: send, messages: [hi], next: nowhere}\n",
     "<f>:3: step 'a' field 'next': unknown step 'nowhere'"),
    ("name: x\nsteps:\n  - {id: a, type: end}\n  - {id: b, type: end}\n",
     "<f>:4: step 'b' field 'id': step 'b' is unreachable from 'a'"),
    ("name: x\nsteps:\n  - {id: a, type: send, messages: [hi]}\n  - {id: a, type: end}\n",
     "<f>:4: step 'a' field 'id': duplicate step id 'a'"),
    ("name: x\nsteps:\n  - id: a\n    type: route\n    cases:\n      - when: {regex: '(['}\n        next: a\n"
     "    default: a\n", "<f>:6: step 'a' field 'cases[0].when.regex': bad regex"),
    ("name: x\nsteps:\n  - id: a\n    type: question\n    text: pick\n    expect: choice\n    options:\n"
     "      - {id: o, title: This option title is far too long}\n",
     "<f>:8: step 'a' field 'options[0].title': option title is 33 characters; the limit is 24"),
    ("name: x\nsteps:\n  - id: a\n    type: send\n    messages:\n      - type: buttons\n        text: t\n"
     "        buttons: [{id: '1', title: a}, {id: '2', title: b}, {id: '3', title: c}, {id: '4', title: d}]\n",
     "<f>:6: step 'a' field 'messages[0]': reply buttons: 4 given; 1 to 3 allowed"),
    ("name: x\nsteps:\n  - {id: a, type: sendd}\n",
     "<f>:3: step 'a' field 'type': unknown step type 'sendd' (one of: send, question, set, route, action, flow, "
     "handover, end)"),
    ("name: x\nsteps:\n  - id: a\n    text: hi\n",
     "<f>:3: step 'a': step needs a `type` (one of: send, question, set, route, action, flow, handover, end)"),
    ("name: x\nsteps:\n  - id: a\n    type: send\n    messages:\n      - {link: x}\n",
     "<f>:6: step 'a' field 'messages[0]': message needs a `type` (one of: text, buttons, list, image, audio, "
     "video, document, sticker, template, location, contacts, or a plain string for a text message)"),
    ("name: x\nsteps:\n  - {id: a, type: end, txt: hi}\n", "<f>:3: step 'a' field 'txt': unknown field"),
    ("name: Bad Name\nsteps:\n  - {id: a, type: end}\n", "<f>:1: field 'name': String should match pattern"),
    ("name: x\nsteps: [\n", "<f>:3: not valid YAML"),
    # an unclosed quote is reported where it opens, not at the end of the file
    ('name: x\nsteps:\n  - id: a\n    type: end\n    text: "Hello\n  - id: b\n    type: end\n',
     "<f>:5: not valid YAML at column 11: the quoted text that starts here is not closed (found unexpected end "
     "of stream at line 8, column 1)"),
    ("name: x\nsteps:\n  - id: a\n   type: end\n", "<f>:4: not valid YAML at column 4: expected <block end>"),
])
def test_invalid_documents_name_line_step_and_field(text, expected):
    with pytest.raises(FlowError) as err:
        parse_flow(text, "<f>")
    assert any(p.startswith(expected) for p in err.value.problems), err.value.problems


def test_json_documents_and_errors():
    ok = parse_flow('{"name": "j", "steps": [{"id": "a", "type": "end", "text": "hi"}]}', "f.json")
    assert ok.source_format == "json"
    with pytest.raises(FlowError) as err:
        parse_flow('{"name": "j",\n "steps": [{"id": "a", "type": "end", "text": 5}]}', "f.json")
    assert err.value.problems[0].startswith("f.json:2: step 'a' field 'text'")
    with pytest.raises(FlowError) as err:
        parse_flow('{"name": "j",\n "steps": [}', "f.json")
    assert err.value.problems == ["f.json:2: not valid JSON at column 12: Expecting value"]


def test_examples_import_export_reimport_unchanged(app):
    runner = app.test_cli_runner()
    first = runner.invoke(args=["flows", "import", str(EXAMPLES)])
    assert first.exit_code == 0, first.output
    assert first.output.count("created") == 4
    for path in sorted(p for p in EXAMPLES.glob("*.yaml") if not p.name.endswith(".test.yaml")):
        name = path.stem
        exported = runner.invoke(args=["flows", "export", name])
        assert exported.exit_code == 0
        assert exported.output == path.read_text()
    again = runner.invoke(args=["flows", "import", str(EXAMPLES)])
    assert again.output.count("unchanged") == 4
    listed = runner.invoke(args=["flows", "list"])
    assert "welcome" in listed.output and "v1" in listed.output


def test_reimport_of_a_changed_file_bumps_the_version(app, tmp_path):
    runner = app.test_cli_runner()
    path = tmp_path / "one.yaml"
    path.write_text("name: one\nsteps:\n  - {id: a, type: end, text: v1}\n")
    runner.invoke(args=["flows", "import", str(path)])
    path.write_text("name: one\nsteps:\n  - {id: a, type: end, text: v2}\n")
    result = runner.invoke(args=["flows", "import", str(path)])
    assert "updated" in result.output and "v2" in result.output


def test_import_is_all_or_nothing(app, tmp_path):
    (tmp_path / "good.yaml").write_text("name: good\nsteps:\n  - {id: a, type: end}\n")
    (tmp_path / "bad.yaml").write_text("name: bad\nsteps:\n  - {id: a, type: flow, flow: missing}\n")
    result = app.test_cli_runner().invoke(args=["flows", "import", str(tmp_path)])
    assert result.exit_code != 0
    assert "unknown flow 'missing'" in result.output and "nothing imported" in result.output
    with app.app_context():
        assert db.session.execute(select(Flow)).first() is None


def test_validate_command(app, tmp_path):
    runner = app.test_cli_runner()
    assert runner.invoke(args=["flows", "validate", str(EXAMPLES)]).exit_code == 0
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: bad\nsteps:\n  - {id: a, type: send, messages: [x], next: zz}\n")
    result = runner.invoke(args=["flows", "validate", str(bad)])
    assert result.exit_code == 1 and f"{bad}:3: step 'a' field 'next': unknown step 'zz'" in result.output


def test_two_catch_all_flows_refused(app, tmp_path):
    for n in ("a", "b"):
        doc = f"name: {n}\ntriggers: {{catch_all: true}}\nsteps: [{{id: s, type: end}}]\n"
        (tmp_path / f"{n}.yaml").write_text(doc)
    result = app.test_cli_runner().invoke(args=["flows", "import", str(tmp_path)])
    assert result.exit_code != 0 and "more than one catch-all" in result.output
