"""Outbound message builders, table-driven: the payload Meta expects and every WhatsApp limit.

Limits are written as Meta documents them (not read from the module), so a changed constant fails here.
"""

from __future__ import annotations

import pytest

from integrations.whatsapp import messages as wa
from integrations.whatsapp.messages import MessageLimitError

LINK = "https://example.com/a.png"
ROW = {"id": "r1", "title": "Row"}


def one_section(**row) -> list[dict]:
    return [{"title": None, "rows": [{**ROW, **row}]}]


def strings(obj):
    """Every string anywhere in a payload."""
    if isinstance(obj, str):
        yield obj
    elif isinstance(obj, dict):
        for value in obj.values():
            yield from strings(value)
    elif isinstance(obj, list):
        for value in obj:
            yield from strings(value)


@pytest.mark.parametrize("built, expected", [
    pytest.param(wa.text("hi"), {"type": "text", "text": {"body": "hi", "preview_url": False}},
                 id="a text is its body with link previews off"),
    pytest.param(wa.text("see https://x.org", preview_url=True),
                 {"type": "text", "text": {"body": "see https://x.org", "preview_url": True}},
                 id="a text can ask for a link preview"),
    pytest.param(wa.buttons("Pick", [("a", "Alpha"), ("b", "Beta")]),
                 {"type": "interactive", "interactive": {"type": "button", "body": {"text": "Pick"}, "action": {
                     "buttons": [{"type": "reply", "reply": {"id": "a", "title": "Alpha"}},
                                 {"type": "reply", "reply": {"id": "b", "title": "Beta"}}]}}},
                 id="reply buttons keep their order as type reply"),
    pytest.param(wa.buttons("Pick", [("a", "Alpha")], header="Top", footer="Bottom"),
                 {"type": "interactive", "interactive": {
                     "type": "button", "body": {"text": "Pick"}, "header": {"type": "text", "text": "Top"},
                     "footer": {"text": "Bottom"},
                     "action": {"buttons": [{"type": "reply", "reply": {"id": "a", "title": "Alpha"}}]}}},
                 id="a header is a text header and a footer is plain text"),
    pytest.param(wa.list_message("Choose", "Open", [{"title": None, "rows": [
                     {"id": "r1", "title": "One", "description": "First"}, {"id": "r2", "title": "Two"}]}]),
                 {"type": "interactive", "interactive": {"type": "list", "body": {"text": "Choose"}, "action": {
                     "button": "Open", "sections": [{"rows": [{"id": "r1", "title": "One", "description": "First"},
                                                              {"id": "r2", "title": "Two"}]}]}}},
                 id="a single list section needs no title and rows keep only what was given"),
    pytest.param(wa.list_message("Choose", "Open", [{"title": "A", "rows": [{"id": "r1", "title": "One"}]},
                                                     {"title": "B", "rows": [{"id": "r2", "title": "Two"}]}],
                                 footer="f"),
                 {"type": "interactive", "interactive": {"type": "list", "body": {"text": "Choose"}, "footer": {
                     "text": "f"}, "action": {"button": "Open", "sections": [
                         {"rows": [{"id": "r1", "title": "One"}], "title": "A"},
                         {"rows": [{"id": "r2", "title": "Two"}], "title": "B"}]}}},
                 id="several list sections each carry their title"),
    pytest.param(wa.media("image", link=LINK, caption="Look"),
                 {"type": "image", "image": {"link": LINK, "caption": "Look"}}, id="an image by link with a caption"),
    pytest.param(wa.media("audio", id="123"), {"type": "audio", "audio": {"id": "123"}},
                 id="an audio by uploaded media id"),
    pytest.param(wa.media("document", id="9", caption="Invoice", filename="inv.pdf"),
                 {"type": "document", "document": {"id": "9", "caption": "Invoice", "filename": "inv.pdf"}},
                 id="a document keeps its caption and filename"),
    pytest.param(wa.media("sticker", link=LINK), {"type": "sticker", "sticker": {"link": LINK}},
                 id="a sticker by link"),
    pytest.param(wa.media("video", link=LINK, caption=""), {"type": "video", "video": {"link": LINK}},
                 id="an empty caption is left out"),
    pytest.param(wa.template("hello_world"),
                 {"type": "template", "template": {"name": "hello_world", "language": {"code": "en_US"}}},
                 id="a template defaults to en_US and sends no empty components"),
    pytest.param(wa.template("t", "pt_BR", [{"type": "body", "parameters": [{"type": "text", "text": "x"}]}]),
                 {"type": "template", "template": {"name": "t", "language": {"code": "pt_BR"}, "components": [
                     {"type": "body", "parameters": [{"type": "text", "text": "x"}]}]}},
                 id="a template passes its language and components through"),
    pytest.param(wa.location("38.7", -9.1, name="Lisbon", address="Praça"),
                 {"type": "location", "location": {"latitude": 38.7, "longitude": -9.1, "name": "Lisbon",
                                                   "address": "Praça"}},
                 id="a location turns coordinates into numbers and keeps name and address"),
    pytest.param(wa.location(90, -180), {"type": "location", "location": {"latitude": 90.0, "longitude": -180.0}},
                 id="a location on the poles and date line is valid"),
    pytest.param(wa.contacts([{"name": {"formatted_name": "Ana"}, "phones": [{"phone": "+351"}]}]),
                 {"type": "contacts", "contacts": [{"name": {"formatted_name": "Ana"}, "phones": [{"phone": "+351"}]}]},
                 id="contact cards are a top-level array"),
    pytest.param(wa.mark_read("wamid.1"),
                 {"messaging_product": "whatsapp", "status": "read", "message_id": "wamid.1",
                  "typing_indicator": {"type": "text"}},
                 id="mark read shows the typing indicator by default"),
    pytest.param(wa.mark_read("wamid.1", typing=False),
                 {"messaging_product": "whatsapp", "status": "read", "message_id": "wamid.1"},
                 id="mark read without typing is only the receipt"),
])
def test_payload_shape(built, expected):
    assert built == expected


LIMITS = [
    pytest.param("text body", 4096, lambda s: wa.text(s), id="a text body"),
    pytest.param("button message body", 1024, lambda s: wa.buttons(s, [("a", "A")]), id="a button message body"),
    pytest.param("header text", 60, lambda s: wa.buttons("b", [("a", "A")], header=s), id="a button header"),
    pytest.param("footer text", 60, lambda s: wa.buttons("b", [("a", "A")], footer=s), id="a button footer"),
    pytest.param("button title", 20, lambda s: wa.buttons("b", [("a", s)]), id="a button title"),
    pytest.param("button id", 256, lambda s: wa.buttons("b", [(s, "A")]), id="a button id"),
    pytest.param("list message body", 4096, lambda s: wa.list_message(s, "Open", one_section()), id="a list body"),
    pytest.param("list button label", 20, lambda s: wa.list_message("b", s, one_section()), id="a list button label"),
    pytest.param("header text", 60, lambda s: wa.list_message("b", "Open", one_section(), header=s),
                 id="a list header"),
    pytest.param("footer text", 60, lambda s: wa.list_message("b", "Open", one_section(), footer=s),
                 id="a list footer"),
    pytest.param("list row title", 24, lambda s: wa.list_message("b", "Open", one_section(title=s)),
                 id="a list row title"),
    pytest.param("list row description", 72, lambda s: wa.list_message("b", "Open", one_section(description=s)),
                 id="a list row description"),
    pytest.param("list row id", 200, lambda s: wa.list_message("b", "Open", one_section(id=s)), id="a list row id"),
    pytest.param("list section title", 24,
                 lambda s: wa.list_message("b", "Open", [{"title": s, "rows": [ROW]}]), id="a list section title"),
    pytest.param("image caption", 1024, lambda s: wa.media("image", link=LINK, caption=s), id="an image caption"),
    pytest.param("video caption", 1024, lambda s: wa.media("video", link=LINK, caption=s), id="a video caption"),
    pytest.param("document caption", 1024, lambda s: wa.media("document", id="1", caption=s), id="a document caption"),
]


@pytest.mark.parametrize("extra, raises", [pytest.param(0, False, id="exactly at the limit passes"),
                                           pytest.param(1, True, id="one over the limit raises")])
@pytest.mark.parametrize("field, limit, build", LIMITS)
def test_character_limits(field, limit, build, extra, raises):
    value = "x" * (limit - 1) + "é" * (1 + extra)  # characters, not bytes: the last ones are two bytes each
    if raises:
        with pytest.raises(MessageLimitError, match=f"{field} .*limit is {limit}"):
            build(value)
    else:
        assert value in set(strings(build(value)))


def rows(n: int, prefix: str = "r") -> list[dict]:
    return [{"id": f"{prefix}{i}", "title": f"Row {prefix}{i}"} for i in range(n)]


def sections(*sizes: int) -> list[dict]:
    return [{"title": f"S{i}", "rows": rows(n, prefix=f"s{i}r")} for i, n in enumerate(sizes)]


@pytest.mark.parametrize("build, names", [
    pytest.param(lambda: wa.buttons("b", [(str(i), f"T{i}") for i in range(3)]), None, id="three buttons pass"),
    pytest.param(lambda: wa.buttons("b", [(str(i), f"T{i}") for i in range(4)]), "reply buttons: 4 given",
                 id="a fourth button raises"),
    pytest.param(lambda: wa.buttons("b", []), "reply buttons: 0 given", id="no buttons at all raises"),
    pytest.param(lambda: wa.list_message("b", "Open", sections(*[1] * 10)), None, id="ten list sections pass"),
    pytest.param(lambda: wa.list_message("b", "Open", sections(*[1] * 11)), "list sections: 11 given",
                 id="an eleventh list section raises"),
    pytest.param(lambda: wa.list_message("b", "Open", []), "list sections: 0 given",
                 id="a list with no sections raises"),
    pytest.param(lambda: wa.list_message("b", "Open", sections(10)), None, id="ten list rows pass"),
    pytest.param(lambda: wa.list_message("b", "Open", sections(5, 6)), "list rows: 11 in all",
                 id="eleven rows spread over two sections raise"),
    pytest.param(lambda: wa.list_message("b", "Open", [{"title": "S", "rows": []}]), "list rows: 0 in all",
                 id="a list whose sections have no rows raises"),
])
def test_count_limits(build, names):
    if names is None:
        assert build()["type"] == "interactive"
    else:
        with pytest.raises(MessageLimitError, match=names):
            build()


@pytest.mark.parametrize("build, names", [
    pytest.param(lambda: wa.text(""), "text body is required", id="an empty text"),
    pytest.param(lambda: wa.text(None), "text body is required", id="a text without a body"),
    pytest.param(lambda: wa.buttons("", [("a", "A")]), "button message body is required", id="buttons without a body"),
    pytest.param(lambda: wa.buttons("b", [("a", "")]), "button title is required", id="a button without a title"),
    pytest.param(lambda: wa.buttons("b", [(None, "A")]), "button id is required", id="a button without an id"),
    pytest.param(lambda: wa.buttons("b", [("", "A")]), "button id is required", id="a button with an empty id"),
    pytest.param(lambda: wa.buttons("b", [("a", "A"), ("a", "B")]), "unique", id="two buttons with one id"),
    pytest.param(lambda: wa.buttons("b", [("a", "A"), ("b", "A")]), "unique", id="two buttons with one title"),
    pytest.param(lambda: wa.list_message("", "Open", one_section()), "list message body is required",
                 id="a list without a body"),
    pytest.param(lambda: wa.list_message("b", "", one_section()), "list button label is required",
                 id="a list without a button label"),
    pytest.param(lambda: wa.list_message("b", "Open", one_section(title="")), "list row title is required",
                 id="a list row without a title"),
    pytest.param(lambda: wa.list_message("b", "Open", [{"rows": [{"title": "T"}]}]), "list row id is required",
                 id="a list row without an id"),
    pytest.param(lambda: wa.list_message("b", "Open", one_section(id="")), "list row id is required",
                 id="a list row with an empty id"),
    pytest.param(lambda: wa.list_message("b", "Open", [{"title": "A", "rows": [ROW]}, {"title": "B", "rows": [ROW]}]),
                 "list row ids must be unique", id="two list rows with one id across sections"),
    pytest.param(lambda: wa.list_message("b", "Open", [{"title": "A", "rows": rows(1)},
                                                       {"title": None, "rows": rows(1, "x")}]),
                 "need a title", id="several list sections where one has no title"),
    pytest.param(lambda: wa.media("gif", link=LINK), "media type 'gif'", id="a media type WhatsApp does not have"),
    pytest.param(lambda: wa.media("image"), "exactly one of", id="media with neither id nor link"),
    pytest.param(lambda: wa.media("image", id="1", link=LINK), "exactly one of", id="media with both id and link"),
    pytest.param(lambda: wa.media("audio", id="1", caption="c"), "audio messages cannot have a caption",
                 id="an audio with a caption"),
    pytest.param(lambda: wa.media("sticker", id="1", caption="c"), "sticker messages cannot have a caption",
                 id="a sticker with a caption"),
    pytest.param(lambda: wa.media("image", id="1", filename="a.png"), "only documents have a filename",
                 id="an image with a filename"),
    pytest.param(lambda: wa.template(""), "template name is required", id="a template without a name"),
    pytest.param(lambda: wa.location(90.01, 0), "latitude", id="a latitude past the pole"),
    pytest.param(lambda: wa.location(0, -180.5), "longitude", id="a longitude past the date line"),
    pytest.param(lambda: wa.contacts([]), "at least one contact card", id="no contact cards"),
    pytest.param(lambda: wa.contacts([{"name": {"first_name": "Ana"}}]), "name.formatted_name",
                 id="a contact card without a formatted name"),
    pytest.param(lambda: wa.contacts([{"phones": []}]), "name.formatted_name", id="a contact card without a name"),
])
def test_bad_or_missing_values_raise_naming_them(build, names):
    with pytest.raises(MessageLimitError, match=names):
        build()


def test_limit_errors_are_value_errors():
    """Callers that catch ValueError (flow loading, the API) also catch limit errors."""
    assert issubclass(MessageLimitError, ValueError)


@pytest.mark.parametrize("message, line", [
    pytest.param(wa.text("hello"), "hello", id="a text is its body"),
    pytest.param(wa.buttons("Pick one", [("a", "A")]), "Pick one", id="buttons are their body"),
    pytest.param(wa.list_message("Choose", "Open", one_section()), "Choose", id="a list is its body"),
    pytest.param(wa.media("image", link=LINK, caption="Look"), "Look", id="a captioned image is its caption"),
    pytest.param(wa.media("image", link=LINK), "[image]", id="an image without caption is its type"),
    pytest.param(wa.media("audio", id="1"), "[audio]", id="an audio is its type"),
    pytest.param(wa.template("promo"), "[template promo]", id="a template is its name"),
    pytest.param(wa.location(1, 2), "[location]", id="a location is its type"),
    pytest.param(wa.contacts([{"name": {"formatted_name": "Ana"}}]), "[contacts]", id="contacts are their type"),
    pytest.param({"type": "interactive", "interactive": {"type": "cta_url"}}, "",
                 id="an interactive message without a body is empty"),
    pytest.param({"type": "reaction", "reaction": {"emoji": "👍"}}, "[reaction]",
                 id="a type without a builder is its type"),
])
def test_summary(message, line):
    assert wa.summary(message) == line
