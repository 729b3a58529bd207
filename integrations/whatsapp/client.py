"""The Graph API client: one keep-alive ``requests.Session`` per process.

The client sends one request and classifies the answer. It never retries by
itself: whether a resend is safe is decided by the delivery code, which knows
whether Meta may already have accepted the message.
"""

from __future__ import annotations

import logging
import os
import threading
import urllib.request
from dataclasses import dataclass
from typing import Any

import requests

from integrations.whatsapp import messages as wa

log = logging.getLogger(__name__)

# Meta's throttling / temporary codes (https://developers.facebook.com/docs/whatsapp/cloud-api/support/error-codes)
RETRYABLE_CODES = {1, 2, 4, 80007, 130429, 131048, 131056, 133016}


@dataclass(frozen=True)
class SendResult:
    ok: bool
    wa_message_id: str | None = None
    http_status: int | None = None
    error_code: int | None = None
    error_title: str | None = None
    error_details: str | None = None
    retryable: bool = False
    # True when the request may have reached Meta but we never saw the answer
    # (read timeout): a resend could duplicate the message.
    outcome_unknown: bool = False


_local = threading.local()


def _session() -> requests.Session:
    """One session per process (and per thread): re-created after a fork."""
    pid = os.getpid()
    session = getattr(_local, "session", None)
    if session is None or getattr(_local, "pid", None) != pid:
        session = requests.Session()
        # requests reads proxies, CA bundle and .netrc from the environment on every call
        # (~5 % of a reply worker's CPU). Read the CA bundle once; keep the per-call lookup
        # only when a proxy is configured (requests applies no_proxy per URL).
        session.verify = os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE") or True
        session.trust_env = bool(urllib.request.getproxies())
        adapter = requests.adapters.HTTPAdapter(pool_connections=4, pool_maxsize=16, max_retries=0)
        session.mount("http://", adapter)
        session.mount("https://", adapter)
        _local.session, _local.pid = session, pid
    return session


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def classify_error(http_status: int, body: Any) -> SendResult:
    """A failed answer as a SendResult; ``body`` is the decoded JSON, whatever its shape (or None)."""
    error = body.get("error") if isinstance(body, dict) else None
    error = error if isinstance(error, dict) else {}
    code = error.get("code")
    try:
        code = int(code) if code is not None else None
    except (TypeError, ValueError):
        code = None
    error_data = error.get("error_data")
    message = _str(error.get("message"))
    details = _str(error_data.get("details") if isinstance(error_data, dict) else None) or message
    title = _str(error.get("title")) or message or f"HTTP {http_status}"
    retryable = http_status == 429 or http_status >= 500 or code in RETRYABLE_CODES
    return SendResult(ok=False, http_status=http_status, error_code=code, error_title=title[:512],
                      error_details=details, retryable=retryable)


class WhatsAppClient:
    def __init__(self, settings):
        self.base = f"{settings.whatsapp_api_url}/{settings.whatsapp_api_version}"
        self.token = settings.whatsapp_access_token
        self.timeout = (settings.whatsapp_connect_timeout, settings.whatsapp_read_timeout)
        self.default_phone_number_id = settings.whatsapp_phone_number_id

    def _post(self, phone_number_id: str, body: dict) -> SendResult:
        url = f"{self.base}/{phone_number_id or self.default_phone_number_id}/messages"
        headers = {"Authorization": f"Bearer {self.token}"}
        try:
            response = _session().post(url, json=body, headers=headers, timeout=self.timeout)
        except requests.ConnectTimeout:
            return SendResult(ok=False, error_title="connect timeout", retryable=True)
        except requests.ConnectionError as exc:
            # The request may have been written before the connection broke.
            unknown = "RemoteDisconnected" in str(exc) or "Connection aborted" in str(exc)
            return SendResult(ok=False, error_title="connection error", retryable=True,
                              outcome_unknown=unknown)
        except requests.Timeout:
            return SendResult(ok=False, error_title="read timeout", retryable=True, outcome_unknown=True)
        try:
            data = response.json()
        except ValueError:
            data = None
        if response.status_code == 200:
            messages = (data or {}).get("messages") or [{}]
            return SendResult(ok=True, http_status=200, wa_message_id=messages[0].get("id"))
        return classify_error(response.status_code, data)

    def send(self, phone_number_id: str, to: str | None, message: dict,
             callback_id: str | None = None, user_id: str | None = None) -> SendResult:
        """Send to the phone number ``to``, or (without one) to the business-scoped ``user_id``."""
        try:
            address = wa.recipient(to, user_id)
        except wa.MessageLimitError as exc:  # a contact always has one; fail the row rather than the job
            return SendResult(ok=False, error_title=str(exc))
        body = {"messaging_product": "whatsapp", "recipient_type": "individual", **address, **message}
        if callback_id:
            # Meta echoes this in status webhooks: it tells us a message was
            # accepted even when its HTTP answer was lost.
            body["biz_opaque_callback_data"] = callback_id
        return self._post(phone_number_id, body)

    def mark_read(self, phone_number_id: str, wa_message_id: str, typing: bool = True) -> SendResult:
        return self._post(phone_number_id, wa.mark_read(wa_message_id, typing))
