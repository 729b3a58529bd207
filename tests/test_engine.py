"""The engine, table-driven, with no database at all."""

from __future__ import annotations

import pytest

from flows import engine as e
from flows.document import parse_flow

CONTACT = {"id": 1, "wa_id": "27820000001", "name": "Ana", "fields": {}, "opted_out": False}


def lib(*docs: str) -> e.Library:
    return e.Library([parse_flow(d, f"<{i}>").doc for i, d in enumerate(docs)])


WELCOME = """
name: welcome
triggers: {keywords: [hi, hello, menu], reply_ids: [main_menu]}
steps:
  - id: menu
    type: question
    text: "Hi {{ contact.name }}! Pick one"
    expect: choice
    save_as: choice
    options:
      - {id: a, title: Alpha, next: alpha}
      - {id: b, title: Beta, next: beta}
  - {id: alpha, type: end, text: "You chose alpha"}
  - {id: beta, type: handover, text: "A person will answer"}
"""
ASK = """
name: ask
triggers: {keywords: [ask]}
settings: {idle_minutes: 5, expired_message: null}
steps:
  - {id: n, type: question, text: "Number 1-10?", expect: number, min: 1, max: 10, save_as: n,
     retry_text: "Not 1-10.", max_attempts: 2, on_invalid: bad}
  - id: r
    type: route
    cases:
      - {when: {var: n, gte: 5}, next: big}
    default: small
  - {id: big, type: end, text: "big {{ n }}"}
  - {id: small, type: end, text: "small {{ n }}"}
  - {id: bad, type: end, text: "giving up"}
"""
CATCH = """
name: fallback
triggers: {catch_all: true}
steps:
  - {id: s, type: send, messages: ["echo {{ message.text }}"]}
"""


def texts(turn: e.Turn) -> list[str]:
    out = []
    for m in turn.messages:
        out.append(m["text"]["body"] if m["type"] == "text" else m["interactive"]["body"]["text"])
    return out


def run(library, inputs, session=None, contact=None, actions=None):
    session = session or e.Session()
    contact = contact or CONTACT
    turns = []
    for item in inputs:
        inbound = item if isinstance(item, e.Inbound) else e.Inbound(text=item)
        turn = e.handle(library, session, inbound, contact, e.EngineSettings(), actions or {})
        session = turn.session
        turns.append(turn)
    return turns


@pytest.mark.parametrize("text, starts", [("hi", True), ("Hi!", True), ("  HELLO ", True), ("this", False),
                                          ("hi there", False), ("whistle", False)])
def test_keyword_triggers_match_whole_message(text, starts):
    (turn,) = run(lib(WELCOME), [text])
    assert (turn.session.flow == "welcome") is starts


def test_catch_all_and_priority():
    low = "name: low\ntriggers: {keywords: [go]}\nsteps: [{id: s, type: end, text: low}]"
    high = "name: high\ntriggers: {keywords: [go], priority: 5}\nsteps: [{id: s, type: end, text: high}]"
    library = lib(low, high, CATCH)
    assert texts(run(library, ["go"])[0]) == ["high"]
    assert texts(run(library, ["what?"])[0]) == ["echo what?"]


def test_buttons_then_choice_by_id_title_and_number():
    library = lib(WELCOME)
    first = run(library, ["hi"])[0]
    msg = first.messages[0]
    assert msg["interactive"]["type"] == "button"
    assert [b["reply"]["id"] for b in msg["interactive"]["action"]["buttons"]] == ["a", "b"]
    for answer in (e.Inbound(type="button_reply", text="Alpha", reply_id="a"), e.Inbound(text="alpha"),
                   e.Inbound(text="1")):
        turn = e.handle(library, first.session, answer, CONTACT)
        assert texts(turn) == ["You chose alpha"]
        assert turn.session.status == "ended"
        assert turn.session.vars["choice"] == "a" and turn.session.vars["choice_title"] == "Alpha"


def test_handover_silences_the_bot():
    turns = run(lib(WELCOME), ["hi", e.Inbound(type="button_reply", text="Beta", reply_id="b"), "hello?", "hi"])
    assert texts(turns[1]) == ["A person will answer"]
    assert turns[1].session.status == "handover" and turns[1].effect("handover")
    assert turns[2].messages == [] and turns[3].messages == []


def test_whatsapps_system_notice_answers_no_question_and_starts_nothing():
    notice = e.Inbound(type="system", text="User Ana changed from 1 to 2")
    turns = run(lib(WELCOME), [notice, "hi", notice])
    assert turns[0].messages == [] and turns[0].events == [] and turns[0].session.status != "active"
    assert turns[2].messages == [] and turns[2].events == []
    assert (turns[2].session.flow, turns[2].session.step) == (turns[1].session.flow, turns[1].session.step)


def test_cancel_with_nothing_running_still_answers():
    turns = run(lib(WELCOME), ["cancel", "hi", "cancel", "cancel"])
    assert texts(turns[0]) == [e.EngineSettings.nothing_to_cancel_message] and turns[0].session.status != "active"
    assert texts(turns[2]) == ["OK, stopped. Send 'menu' whenever you want to start again."]
    assert texts(turns[3]) == [e.EngineSettings.nothing_to_cancel_message]


@pytest.mark.parametrize("word, status, said", [
    ("menu", "active", "Hi Ana! Pick one"),
    ("cancel", "ended", "OK, stopped. Send 'menu' whenever you want to start again."),
    ("STOP", "ended", "You will not get any more messages from us. Send 'start' to subscribe again."),
])
def test_the_user_can_leave_a_handover(word, status, said):
    turns = run(lib(WELCOME), ["hi", e.Inbound(type="button_reply", text="Beta", reply_id="b"), word])
    assert turns[2].session.status == status and texts(turns[2])[0] == said


def test_a_flow_can_keep_the_user_in_its_handover_but_stop_still_works():
    kept = WELCOME.replace('text: "A person will answer"}', 'text: "A person will answer", exit_keywords: false}')
    turns = run(lib(kept), ["hi", e.Inbound(type="button_reply", text="Beta", reply_id="b"), "menu", "cancel", "stop"])
    assert turns[2].messages == [] and turns[3].messages == [] and turns[3].session.status == "handover"
    assert turns[4].effect("opt_out") and turns[4].session.status == "ended"


@pytest.mark.parametrize("inbound", [
    e.Inbound(type="button_reply", text="Stop", reply_id="stop"),
    e.Inbound(type="list_reply", text="STOP", reply_id="row-9"),
    e.Inbound(type="button", text="Stop promotions", reply_id="STOP"),
    e.Inbound(text="  sToP! "),
], ids=["button reply", "list reply", "template quick reply", "typed, any case"])
def test_stop_opts_out_however_it_is_sent(inbound):
    turns = run(lib(WELCOME), ["hi", inbound])
    assert turns[1].effect("opt_out") and turns[1].session.status == "ended"


@pytest.mark.parametrize("answers, last", [
    (["5"], "big 5"), (["3"], "small 3"), (["7,0"], "big 7"),
    (["abc", "4"], "small 4"), (["abc", "99"], "giving up"),
])
def test_number_question_reprompts_then_invalid_branch(answers, last):
    turns = run(lib(ASK), ["ask"] + answers)
    assert texts(turns[-1])[-1] == last
    if len(answers) > 1:
        assert texts(turns[1])[0].startswith("Not 1-10.")


@pytest.mark.parametrize("expect, good, bad, saved", [
    ("email", "Ana@Example.com", "ana@", "ana@example.com"),
    ("phone", "+27 82 000 0001", "12", "+27820000001"),
    ("date", "21/04/1990", "someday", "1990-04-21"),
    ("text", "anything", None, "anything"),
])
def test_typed_questions(expect, good, bad, saved):
    doc = f"""
name: q
triggers: {{keywords: [q]}}
steps:
  - {{id: a, type: question, text: "?", expect: {expect}, save_as: v}}
  - {{id: e, type: end, text: "got {{{{ v }}}}"}}
"""
    library = lib(doc)
    start = run(library, ["q"])[0]
    if bad is not None:
        turn = e.handle(library, start.session, e.Inbound(text=bad), CONTACT)
        assert turn.session.status == "active" and turn.session.waiting["attempts"] == 1
    turn = e.handle(library, start.session, e.Inbound(text=good), CONTACT)
    assert texts(turn) == [f"got {saved}"]


def test_media_and_location_questions():
    doc = """
name: m
triggers: {keywords: [m]}
steps:
  - {id: a, type: question, text: "photo?", expect: media, save_as: photo}
  - {id: b, type: question, text: "where?", expect: location, save_as: place}
  - {id: e, type: end, text: "{{ photo.type }} {{ place.latitude }}"}
"""
    library = lib(doc)
    turns = run(library, ["m", "no photo",
                          e.Inbound(type="image", payload={"image": {"id": "MEDIA1", "mime_type": "image/jpeg"}}),
                          e.Inbound(type="location", payload={"location": {"latitude": 1.5, "longitude": 2}})])
    assert turns[1].session.waiting["attempts"] == 1
    assert texts(turns[-1]) == ["image 1.5"]


def test_conditions():
    doc = """
name: c
triggers: {keywords: [c]}
steps:
  - {id: a, type: question, text: "?", expect: any, save_as: said}
  - id: r
    type: route
    cases:
      - {when: {contains: refund}, next: refund}
      - {when: {regex: "[0-9]{4}"}, next: pin}
      - {when: {is: email}, next: email}
      - {when: {field: vip, equals: "yes"}, next: vip}
      - {when: {var: said, exists: true, type: text}, next: other}
    default: other
  - {id: refund, type: end, text: refund}
  - {id: pin, type: end, text: pin}
  - {id: email, type: end, text: email}
  - {id: vip, type: end, text: vip}
  - {id: other, type: end, text: other}
"""
    library = lib(doc)
    cases = {"I want a REFUND now": "refund", "refunds": "other", "1234": "pin", "12345": "other",
             "a@b.co": "email", "hello": "other"}
    for said, expected in cases.items():
        assert texts(run(library, ["c", said])[-1]) == [expected], said
    vip = {**CONTACT, "fields": {"vip": "Yes"}}
    assert texts(run(library, ["c", "hello"], contact=vip)[-1]) == ["vip"]


def test_set_variables_contact_fields_and_templates_render_once():
    doc = """
name: s
triggers: {keywords: [s]}
steps:
  - {id: a, type: question, text: "name?", expect: text, save_as: name}
  - {id: b, type: set, variables: {greeting: "Hello {{ name }}"}, contact_fields: {nick: "{{ name }}"}}
  - {id: c, type: end, text: "{{ greeting }} / {{ contact.fields.nick }}"}
"""
    turns = run(lib(doc), ["s", "{{ 7*7 }}"])
    assert texts(turns[-1]) == ["Hello {{ 7*7 }} / {{ 7*7 }}"]  # user text is data, never a template
    assert any(x.kind == "set_contact_field" and x.data == {"name": "nick", "value": "{{ 7*7 }}"}
               for x in turns[-1].effects)


def test_sandbox_blocks_unsafe_templates():
    doc = """
name: x
triggers: {keywords: [x]}
steps:
  - {id: a, type: end, text: "{{ contact.__class__.__mro__ }}ok"}
"""
    (turn,) = run(lib(doc), ["x"])
    assert texts(turn) == ["ok"]  # an unsandboxed Jinja2 would print "(<class 'dict'>, <class 'object'>)ok"
    doc2 = doc.replace("contact.__class__.__mro__", "range(10**9) | list | length")
    (turn,) = run(lib(doc2), ["x"])
    assert turn.effect("error") is not None  # the sandbox refuses huge ranges


def test_actions_results_and_errors():
    doc = """
name: act
triggers: {keywords: [act]}
steps:
  - {id: a, type: action, action: double, params: {x: 21}, save_as: r, on_error: oops}
  - {id: b, type: end, text: "r={{ r }}"}
  - {id: oops, type: end, text: "failed"}
"""
    library = lib(doc)
    ok = run(library, ["act"], actions={"double": lambda p, ctx: p["x"] * 2})[0]
    assert texts(ok) == ["r=42"]

    def boom(p, ctx):
        raise RuntimeError("down")

    assert texts(run(library, ["act"], actions={"double": boom})[0]) == ["failed"]
    assert texts(run(library, ["act"])[0]) == ["failed"]  # unknown action


def test_enter_another_flow_keeps_messages_of_the_turn():
    first = "name: one\ntriggers: {keywords: [one]}\nsteps:\n  - {id: a, type: send, messages: [from one]}\n" \
            "  - {id: b, type: flow, flow: two}"
    second = "name: two\nsteps:\n  - {id: a, type: end, text: from two}"
    (turn,) = run(lib(first, second), ["one"])
    assert texts(turn) == ["from one", "from two"]
    assert turn.session.flow == "two"


def test_global_keywords():
    library = lib(WELCOME, ASK)
    turns = run(library, ["ask", "cancel"])
    assert turns[1].session.status == "ended" and turns[1].effect("session_ended").data["reason"] == "cancelled"
    turns = run(library, ["ask", "menu"])
    assert turns[1].session.flow == "welcome"
    stop = run(library, ["ask", "stop"])[1]
    assert stop.effect("opt_out") and stop.session.status == "ended"
    opted_out = {**CONTACT, "opted_out": True}
    assert run(library, ["hi"], contact=opted_out)[0].messages == []
    back = run(library, ["start"], contact=opted_out)[0]
    assert back.effect("opt_in") and back.messages


def test_many_options_page_with_more():
    options = "\n".join(f"      - {{id: o{i}, title: Option {i}}}" for i in range(1, 24))
    doc = f"""
name: many
triggers: {{keywords: [many]}}
steps:
  - id: q
    type: question
    text: pick
    expect: choice
    save_as: pick
    options:
{options}
  - {{id: e, type: end, text: "got {{{{ pick }}}}"}}
"""
    library = lib(doc)
    first = run(library, ["many"])[0]
    rows = first.messages[0]["interactive"]["action"]["sections"][0]["rows"]
    assert len(rows) == 10 and rows[-1]["id"] == "__more__:1" and rows[0]["id"] == "o1"
    second = e.handle(library, first.session, e.Inbound(type="list_reply", text="More…", reply_id="__more__:1"),
                      CONTACT)
    rows = second.messages[0]["interactive"]["action"]["sections"][0]["rows"]
    assert rows[0]["id"] == "o10" and rows[-1]["id"] == "__more__:2"
    assert second.session.waiting["attempts"] == 0
    third = e.handle(library, second.session, e.Inbound(type="list_reply", text="More…", reply_id="__more__:2"),
                     CONTACT)
    rows = third.messages[0]["interactive"]["action"]["sections"][0]["rows"]
    assert [r["id"] for r in rows] == [f"o{i}" for i in range(19, 24)]
    done = e.handle(library, third.session, e.Inbound(type="list_reply", text="Option 20", reply_id="o20"), CONTACT)
    assert texts(done) == ["got o20"]


def test_four_to_ten_options_become_a_list():
    options = "\n".join(f"      - {{id: o{i}, title: Option {i}}}" for i in range(1, 5))
    doc = f"name: l\ntriggers: {{keywords: [l]}}\nsteps:\n  - id: q\n    type: question\n    text: pick\n" \
          f"    expect: choice\n    options:\n{options}\n"
    (turn,) = run(lib(doc), ["l"])
    assert turn.messages[0]["interactive"]["type"] == "list"


def test_purity_same_input_same_output():
    library = lib(WELCOME)
    session = e.Session()
    a = e.handle(library, session, e.Inbound(text="hi"), CONTACT)
    b = e.handle(library, session, e.Inbound(text="hi"), CONTACT)
    assert a.messages == b.messages and a.session == b.session
    assert session == e.Session()  # input untouched


def test_button_of_another_flow_interrupts_question():
    library = lib(WELCOME, ASK)
    turns = run(library, ["ask", e.Inbound(type="button_reply", text="Menu", reply_id="main_menu")])
    assert turns[1].session.flow == "welcome"
