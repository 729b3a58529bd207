"""``GET /api/openapi.json``: the OpenAPI 3.1 description of the operator API.

A test checks that every ``/api`` route is described here and nothing else is.
"""

from __future__ import annotations

from flask import jsonify

from crm.app.api import bp

ERROR = {"$ref": "#/components/responses/Error"}
CONTACT_ID = {"name": "contact_id", "in": "path", "required": True, "schema": {"type": "integer"}}
FLOW_NAME = {"name": "name", "in": "path", "required": True, "schema": {"type": "string"}}
PAGE = [{"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 200}},
        {"name": "cursor", "in": "query", "schema": {"type": "integer"},
         "description": "next_cursor of the previous page"}]
JSON_OBJECT = {"type": "object", "additionalProperties": True}


def op(summary: str, tag: str, params: list | None = None, body: dict | None = None, ok: str = "200",
       errors: tuple[str, ...] = ("401",), body_type: str = "application/json") -> dict:
    out = {"summary": summary, "tags": [tag], "parameters": params or [],
           "responses": {ok: {"description": "OK", "content": {"application/json": {"schema": JSON_OBJECT}}},
                         **{code: ERROR for code in errors}}}
    if body is not None:
        out["requestBody"] = {"required": True, "content": {body_type: {"schema": body}}}
    return out


def obj(**props) -> dict:
    return {"type": "object", "properties": props}


STRING, INTEGER, BOOLEAN = {"type": "string"}, {"type": "integer"}, {"type": "boolean"}
SEND = {"type": "object", "required": ["type"], "properties": {
    "type": {"enum": ["text", "template", "image", "audio", "video", "document", "sticker", "buttons", "list"]},
    "text": STRING, "preview_url": BOOLEAN, "name": STRING, "language": STRING,
    "components": {"type": "array", "items": JSON_OBJECT}, "media_id": STRING, "link": STRING, "caption": STRING,
    "filename": STRING, "header": STRING, "footer": STRING, "button": STRING,
    "buttons": {"type": "array", "items": obj(id=STRING, title=STRING)},
    "sections": {"type": "array", "items": JSON_OBJECT}}}


def document() -> dict:
    b = lambda name: {"name": name, "in": "query", "schema": {"type": "boolean"}}
    return {
        "openapi": "3.1.0",
        "info": {"title": "WhatsApp CRM operator API", "version": "1.0.0",
                 "description": "Bearer tokens: one of OPERATOR_API_TOKENS (full access, logged as operator-N) or "
                                "an operator's personal token (crm_..., acts as that operator and role; flow "
                                "changes need an admin). Errors: {error: {status, message}}."},
        "servers": [{"url": "/"}],
        "security": [{"bearer": []}],
        "paths": {
            "/api/openapi.json": {"get": {**op("This document", "meta", errors=()), "security": []}},
            "/api/failed-messages": {"get": op("Inbound messages set aside after repeated failures", "messages",
                                               PAGE, errors=("400", "401"))},
            "/api/messages/{message_id}/retry": {"post": op(
                "Retry a set-aside message", "messages",
                [{"name": "message_id", "in": "path", "required": True, "schema": INTEGER}], ok="202",
                errors=("401", "404"))},
            "/api/contacts": {"get": op("List and search contacts", "contacts", [
                {"name": "q", "in": "query", "schema": STRING, "description": "name or WhatsApp id contains"},
                b("handover"), b("opted_out"), b("blocked"),
                {**b("test"), "description": "true: the flow simulator's test contacts (left out otherwise)"},
                {"name": "seen_since", "in": "query", "schema": {"type": "string", "format": "date-time"}},
                *PAGE], errors=("400", "401"))},
            "/api/contacts/{contact_id}": {
                "get": op("A contact with its fields and open session", "contacts", [CONTACT_ID],
                          errors=("401", "404")),
                "patch": op("Update name and custom fields (null removes a field)", "contacts", [CONTACT_ID],
                            obj(name=STRING, fields=JSON_OBJECT), errors=("400", "401", "404", "422"))},
            "/api/contacts/{contact_id}/block": {"post": op("Block: no bot replies, messages still stored",
                                                            "contacts", [CONTACT_ID], errors=("401", "404"))},
            "/api/contacts/{contact_id}/unblock": {"post": op("Unblock", "contacts", [CONTACT_ID],
                                                              errors=("401", "404"))},
            "/api/contacts/{contact_id}/messages": {
                "get": op("The conversation, newest first, with status history and errors", "conversation",
                          [CONTACT_ID, *PAGE], errors=("400", "401", "404")),
                "post": op("Send through the ordered delivery path; free text outside 24 h, or a conversation "
                           "another operator holds, is 409; a template must be approved and get the parameters "
                           "it expects (422 otherwise)", "conversation",
                           [CONTACT_ID], SEND, ok="202", errors=("400", "401", "404", "409", "422"))},
            "/api/contacts/{contact_id}/session": {
                "get": op("The open flow session (flow, step, variables, idle time)", "sessions", [CONTACT_ID],
                          errors=("401", "404")),
                "delete": op("Reset (end) the open session", "sessions", [CONTACT_ID], errors=("401", "404", "409")),
                "post": op("Start a flow for the contact", "sessions", [CONTACT_ID], obj(flow=STRING), ok="201",
                           errors=("400", "401", "404", "409", "422"))},
            "/api/handovers": {"get": op("Contacts waiting for or talking to a human", "handover",
                                         [b("claimed")], errors=("400", "401"))},
            "/api/contacts/{contact_id}/handover": {"post": op(
                "Claim the handover (or take the conversation over from the bot)", "handover", [CONTACT_ID],
                errors=("401", "404", "409"))},
            "/api/contacts/{contact_id}/handover/resolve": {"post": op(
                "Resolve: the bot answers the next message", "handover", [CONTACT_ID],
                errors=("401", "404", "409"))},
            "/api/flows": {
                "get": op("List flows", "flows"),
                "post": op("Upload a flow file (YAML or JSON), validated like the CLI", "flows",
                           [{"name": "filename", "in": "query", "schema": STRING}], {"type": "string"}, ok="201",
                           errors=("400", "401", "403", "413", "422"), body_type="application/yaml")},
            "/api/flows/{name}": {"get": op("A flow with its document and source", "flows", [FLOW_NAME],
                                            errors=("401", "404"))},
            "/api/flows/{name}/activate": {"post": op("Activate", "flows", [FLOW_NAME],
                                                      errors=("401", "403", "404", "409"))},
            "/api/flows/{name}/deactivate": {"post": op("Deactivate", "flows", [FLOW_NAME],
                                                        errors=("401", "403", "404", "409"))},
            "/api/templates": {"get": op(
                "Message templates as last synced (status, language, category, parameter counts, components); "
                "template sends must name an approved one", "templates",
                [{"name": "status", "in": "query", "schema": STRING, "description": "e.g. APPROVED"},
                 {"name": "q", "in": "query", "schema": STRING, "description": "name contains"}],
                errors=("400", "401"))},
            "/api/stats": {"get": op("Counts per day, reply latency percentiles, sessions, failed sends", "stats",
                                     [{"name": "days", "in": "query",
                                       "schema": {"type": "integer", "minimum": 1, "maximum": 90}}],
                                     errors=("400", "401"))},
        },
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "responses": {"Error": {"description": "Error", "content": {"application/json": {"schema": obj(
                error=obj(status=INTEGER, message=STRING, details={"type": "array", "items": STRING}))}}}},
        },
    }


@bp.get("/openapi.json")
def openapi():
    return jsonify(document())
