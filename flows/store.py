"""Flows in the database: import (all or nothing), export, and the cached library."""

from __future__ import annotations

import threading
import time

from sqlalchemy import select

from crm.base import keys
from crm.base.extensions import db, get_redis
from crm.base.models import utcnow
from crm.base.templates import SYNC_COMMAND, TemplateRefused, require_approved, store_is_empty
from flows.document import (
    MAX_FLOW_BYTES,
    FlowDoc,
    FlowError,
    LoadedFlow,
    SendStep,
    TemplateMsg,
    check_library,
    flow_files,
    parse_flow,
)
from flows.engine import Library
from flows.models import Flow

GENERATION_KEY = keys.FLOWS_GENERATION
CACHE_SECONDS = 30.0  # upper bound on staleness even if the Redis bump was missed
CHECK_SECONDS = 1.0  # how often a process asks Redis whether the flows changed (not on every turn)


def load_files(paths: list[str]) -> list[LoadedFlow]:
    """Parse every file; raise FlowError with the problems of all files at once."""
    loaded, problems = [], []
    files = flow_files(paths)
    if not files:
        raise FlowError([f"no .yaml, .yml or .json flow files in {', '.join(paths)}"])
    for path in files:
        try:
            if path.stat().st_size > MAX_FLOW_BYTES:  # not read at all
                problems.append(f"{path}:1: the file is {path.stat().st_size} bytes; a flow may be at most "
                                f"{MAX_FLOW_BYTES // 1024} KiB")
                continue
            loaded.append(parse_flow(path.read_text(encoding="utf-8"), str(path)))
        except FlowError as exc:
            problems += exc.problems
        except UnicodeDecodeError:
            problems.append(f"{path}:1: not UTF-8 text")
        except OSError as exc:
            problems.append(f"{path}: cannot read: {exc.strerror}")
    names: dict[str, str] = {}
    for item in loaded:
        if item.doc.name in names:
            problems.append(f"{item.path}: flow name {item.doc.name!r} is also used by {names[item.doc.name]}")
        names[item.doc.name] = item.path
    if problems:
        raise FlowError(problems)
    return loaded


def template_problems(loaded: list[LoadedFlow], warnings: list[str] | None = None) -> list[str]:
    """Template messages must name an approved template and give it its parameters.

    A template that is known and not approved, or unknown while templates have been synced, is a
    problem. With no template synced at all (a fresh install) nothing can be told: a warning.
    """
    uses = [(item, step, i, msg) for item in loaded for step in item.doc.steps if isinstance(step, SendStep)
            for i, msg in enumerate(step.messages) if isinstance(msg, TemplateMsg)]
    if not uses:
        return []
    if store_is_empty():
        if warnings is not None:
            warnings.append(f"{len(uses)} template message(s) not checked: no templates are synced yet "
                            f"(set WHATSAPP_BUSINESS_ACCOUNT_ID and run `{SYNC_COMMAND}`)")
        return []
    problems = []
    for item, step, i, msg in uses:
        try:
            require_approved(msg.name, msg.language, msg.components or None)
        except TemplateRefused as exc:
            problems.append(f"{item.path}: step {step.id!r} field 'messages[{i}]': {exc}")
    return problems


def import_flows(loaded: list[LoadedFlow], warnings: list[str] | None = None) -> list[tuple[str, int, str]]:
    """Upsert by name in one transaction. Returns (name, version, 'created'|'updated'|'unchanged').

    ``warnings`` (when given) collects what did not stop the import (templates not checkable yet).
    """
    existing = {f.name: f for f in db.session.execute(select(Flow)).scalars()}
    incoming = {item.doc.name: item.doc for item in loaded}
    library = [FlowDoc.model_validate(f.document) for n, f in existing.items() if n not in incoming and f.active]
    problems = check_library(library + list(incoming.values())) + template_problems(loaded, warnings)
    if problems:
        raise FlowError(problems)
    results = []
    now = utcnow()
    for item in loaded:
        doc = item.doc.model_dump(mode="json", by_alias=True, exclude_unset=True)
        row = existing.get(item.doc.name)
        if row is None:
            db.session.add(Flow(name=item.doc.name, version=1, active=True, document=doc, source=item.source,
                                source_format=item.source_format, created_at=now, updated_at=now))
            results.append((item.doc.name, 1, "created"))
        elif row.source == item.source and row.active:
            results.append((row.name, row.version, "unchanged"))
        else:
            if row.source != item.source:
                row.version += 1
            row.document, row.source, row.source_format = doc, item.source, item.source_format
            row.active, row.updated_at = True, now
            results.append((row.name, row.version, "updated"))
    db.session.commit()
    bump_generation()
    return results


def bump_generation() -> None:
    library_cache.clear()  # this process sees its own change at once, the others within CHECK_SECONDS
    try:
        get_redis().incr(GENERATION_KEY)
    except Exception:  # the cache also expires by time
        pass


class LibraryCache:
    """Parsed active flows, per process. Reloaded when the generation counter moves."""

    def __init__(self):
        self._lock = threading.Lock()
        self._library: Library | None = None
        self._generation: bytes | None = None
        self._loaded_at = self._checked_at = 0.0

    def get(self) -> Library:
        now = time.monotonic()
        if self._library is not None and now - self._checked_at < CHECK_SECONDS:
            return self._library
        try:
            generation = get_redis().get(GENERATION_KEY)
        except Exception:
            generation = self._generation
        self._checked_at = now
        fresh = now - self._loaded_at < CACHE_SECONDS
        if self._library is not None and generation == self._generation and fresh:
            return self._library
        with self._lock:
            rows = db.session.execute(select(Flow).where(Flow.active.is_(True))).scalars().all()
            docs = [FlowDoc.model_validate(r.document) for r in rows]
            self._library = Library(docs, {r.name: r.version for r in rows})
            self._generation, self._loaded_at = generation, time.monotonic()
            return self._library

    def clear(self) -> None:
        self._library = None


library_cache = LibraryCache()
