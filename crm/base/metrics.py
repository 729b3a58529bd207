"""Prometheus metrics, served at /metrics (crm.app.monitoring).

Every process (web workers, RQ workers) writes its samples to
PROMETHEUS_MULTIPROC_DIR when it is set, and /metrics adds them up; without it
/metrics shows the web process's own samples only. Queue depths are read from
Redis at scrape time.
"""

from __future__ import annotations

from prometheus_client import Counter, Histogram

WEBHOOK_REQUESTS = Counter("crm_webhook_requests_total", "Webhook POSTs by outcome", ["outcome"])
WEBHOOK_EVENTS = Counter("crm_webhook_events_total", "Webhook events by kind and outcome",
                         ["kind", "outcome"])
REPLY_LATENCY = Histogram(
    "crm_reply_latency_seconds", "Time from webhook arrival to the first send of the reply",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
SENDS = Counter("crm_sends_total", "Graph API sends by outcome and Meta error code",
                ["outcome", "error_code"])
HANDOVERS = Counter("crm_handovers_total", "Conversations handed to a person by a flow")
TURNS_FAILED = Counter("crm_turns_failed_total", "Inbound messages whose turn failed, by outcome", ["outcome"])
SESSIONS_EXPIRED = Counter("crm_sessions_expired_total", "Flow sessions expired for inactivity")


def webhook_processed(messages: int, new: int, statuses: int, templates: int = 0) -> None:
    if new:
        WEBHOOK_EVENTS.labels("message", "stored").inc(new)
    if messages - new:
        WEBHOOK_EVENTS.labels("message", "duplicate").inc(messages - new)
    if statuses:
        WEBHOOK_EVENTS.labels("status", "stored").inc(statuses)
    if templates:
        WEBHOOK_EVENTS.labels("template", "stored").inc(templates)
FOOTBALL_SYNC_SECONDS = Histogram(
    "crm_football_sync_seconds", "Football sync stage durations", ["stage"],
    buckets=(0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 900),
)
FOOTBALL_API_CALLS = Counter("crm_football_api_calls_total", "APIFootball requests by action and outcome",
                             ["action", "outcome"])
