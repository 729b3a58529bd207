"""Flows: list, get, upload (the CLI's validation), activate, deactivate."""

from __future__ import annotations

from flask import jsonify, request
from sqlalchemy import select

from crm.app.api import ApiError, bp, require_admin, stamp
from crm.base.extensions import db
from crm.base.operators import audit
from flows.document import MAX_FLOW_BYTES, FlowDoc, FlowError, check_library, parse_flow
from flows.models import Flow
from flows.store import bump_generation, import_flows


def flow_dict(flow: Flow, full: bool = False) -> dict:
    doc = flow.document or {}
    out = {"name": flow.name, "version": flow.version, "active": flow.active,
           "description": doc.get("description"), "steps": len(doc.get("steps") or []),
           "format": flow.source_format, "updated_at": stamp(flow.updated_at)}
    if full:
        out.update(document=doc, source=flow.source)
    return out


def get_flow(name: str) -> Flow:
    flow = db.session.execute(select(Flow).where(Flow.name == name)).scalar_one_or_none()
    if flow is None:
        raise ApiError(404, f"no flow named {name!r}")
    return flow


@bp.get("/flows")
def list_flows():
    rows = db.session.execute(select(Flow).order_by(Flow.name)).scalars()
    return jsonify(items=[flow_dict(f) for f in rows])


@bp.get("/flows/<name>")
def get_flow_detail(name: str):
    return jsonify(flow_dict(get_flow(name), full=True))


@bp.post("/flows")
def upload_flow():
    """The body is the flow file itself (YAML or JSON), validated exactly like ``flask flows import``."""
    require_admin()
    raw = request.get_data(cache=False)
    name, version, outcome, warnings = upload_flow_source(raw, request.args.get("filename") or "upload")
    body = {"name": name, "version": version, "outcome": outcome, **({"warnings": warnings} if warnings else {})}
    return jsonify(body), 201 if outcome == "created" else 200


def upload_flow_source(raw: bytes, filename: str) -> tuple[str, int, str, list[str]]:
    """Validate and import one flow file (upsert by name); returns (name, version, outcome, warnings).

    Raises ApiError with the CLI's validation messages (``filename:line: problem``) as details.
    """
    if not raw.strip():
        raise ApiError(400, "the request body must be a flow document (YAML or JSON)")
    if len(raw) > MAX_FLOW_BYTES:
        raise ApiError(413, f"a flow document may be at most {MAX_FLOW_BYTES // 1024} KiB")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ApiError(400, "the flow document must be UTF-8") from None
    warnings: list[str] = []
    try:
        (name, version, outcome), = import_flows([parse_flow(text, filename)], warnings)
    except FlowError as exc:
        db.session.rollback()
        raise ApiError(422, f"the flow is invalid ({len(exc.problems)} problem(s))", exc.problems) from None
    audit("flow_upload", target=name, detail={"version": version, "outcome": outcome})
    db.session.commit()
    return name, version, outcome, warnings


def set_flow_active(name: str, active: bool) -> Flow:
    """Activate or deactivate a flow, refused when the active flows would then clash."""
    flow = get_flow(name)
    if flow.active != active:
        others = [FlowDoc.model_validate(f.document) for f in
                  db.session.execute(select(Flow).where(Flow.active.is_(True), Flow.name != name)).scalars()]
        problems = check_library(others + ([FlowDoc.model_validate(flow.document)] if active else []))
        if problems:
            reason = "activating this flow" if active else "deactivating this flow"
            raise ApiError(409, f"{reason} would leave the active flows inconsistent", problems)
        flow.active = active
        audit("flow_activate" if active else "flow_deactivate", target=name)
        db.session.commit()
        bump_generation()
    return flow


@bp.post("/flows/<name>/activate")
def activate_flow(name: str):
    require_admin()
    return jsonify(flow_dict(set_flow_active(name, True)))


@bp.post("/flows/<name>/deactivate")
def deactivate_flow(name: str):
    require_admin()
    return jsonify(flow_dict(set_flow_active(name, False)))
