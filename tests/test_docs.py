"""docs/flows.md documents every field the flow models accept, each in its model's section."""

from __future__ import annotations

import re
import typing

import pytest

from flows import document as d
from tests.helpers import ROOT

DOC = (ROOT / "docs" / "flows.md").read_text()

# Each model, and the heading of the docs/flows.md section whose table lists its fields.
SECTIONS = {
    d.FlowDoc: "### The document",
    d.Triggers: "### `triggers`",
    d.FlowSettings: "### `settings`",
    d.StepBase: "### Every step",
    d.SendStep: "### `send` step",
    d.QuestionStep: "### `question` step",
    d.Option: "### Question options",
    d.SetStep: "### `set` step",
    d.RouteStep: "### `route` step",
    d.Case: "### `route` step",
    d.Condition: "### Conditions",
    d.ActionStep: "### `action` step",
    d.EnterFlowStep: "### `flow` step",
    d.HandoverStep: "### `handover` step",
    d.EndStep: "### `end` step",
    d.TextMsg: "### Messages",
    d.ButtonsMsg: "### Messages",
    d.ListMsg: "### Messages",
    d.Row: "### Messages",
    d.MediaMsg: "### Messages",
    d.TemplateMsg: "### Messages",
    d.LocationMsg: "### Messages",
    d.ContactsMsg: "### Messages",
}


def section(heading: str) -> str:
    """The text under ``heading`` up to the next heading of the same or a higher level."""
    level = heading.split(" ")[0]
    lines = DOC.splitlines()
    assert heading in lines, f"docs/flows.md has no heading {heading!r}"
    start = lines.index(heading) + 1
    end = next((i for i in range(start, len(lines))
                if lines[i].startswith("#") and len(lines[i].split(" ")[0]) <= len(level)), len(lines))
    return "\n".join(lines[start:end])


def table_fields(text: str) -> set[str]:
    return set(re.findall(r"^\| `([^`]+)` \|", text, re.MULTILINE))


def documented_fields(model) -> set[str]:
    """The names a document uses for a model's fields (aliases: ``is``), minus what another
    section covers: a step's ``id`` and ``type`` (Every step), a message's ``type``."""
    names = {field.alias or name for name, field in model.model_fields.items()}
    if issubclass(model, d.StepBase) and model is not d.StepBase:
        names -= {"id", "type"}
    if "### Messages" == SECTIONS[model]:
        names -= {"type"}
    return names


def all_models() -> set[type]:
    found, todo = set(), [d.Strict]
    while todo:
        for sub in todo.pop().__subclasses__():
            if sub.__module__ == d.__name__ and sub not in found:
                found.add(sub)
                todo.append(sub)
    return found


def test_every_model_has_a_section():
    assert all_models() == set(SECTIONS)


@pytest.mark.parametrize("model", sorted(SECTIONS, key=lambda m: m.__name__), ids=lambda m: m.__name__)
def test_every_field_is_in_its_models_table(model):
    missing = documented_fields(model) - table_fields(section(SECTIONS[model]))
    assert not missing, f"docs/flows.md section {SECTIONS[model]!r} does not list {sorted(missing)}"


def test_the_docs_list_no_field_the_models_do_not_have():
    known = set().union(*(documented_fields(m) for m in SECTIONS)) | {"id", "type"}
    expect_values = set(typing.get_args(d.Expect))
    listed = table_fields(section("## Reference")) - expect_values
    assert listed - known == set()


def test_every_expect_value_and_step_type_is_described():
    question = section("### `question` step")
    for value in typing.get_args(d.Expect):
        assert f"| `{value}` |" in question, value
    every_step = section("### Every step")
    for tag in d._tags(d.Step):
        assert f"`{tag}`" in every_step, tag
        assert f"### `{tag}` step" in DOC, tag


def test_the_example_document_is_valid():
    from flows.document import parse_flow

    example = re.search(r"```yaml\n(.*?)```", DOC, re.DOTALL).group(1)
    loaded = parse_flow(example, "docs/flows.md")
    assert {"min", "max"} <= {name for step in loaded.doc.steps for name in step.model_fields_set}
