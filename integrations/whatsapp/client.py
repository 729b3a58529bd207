"""The Graph API client: one urllib3 connection pool per process.

The client sends one request and classifies the answer. It never retries by
itself: whether a resend is safe is decided by the delivery code, which knows
whether Meta may already have accepted the message.

Why urllib3 here and requests elsewhere: every reply makes two Graph calls (the send and
the read receipt), and requests spends most of its time per call on work this client does
not need (hooks, cookies, redirect handling, environment merging, response wrapping). Measured
with ``bench/http_client_bench.py`` (one keep-alive POST to a local server, CPU of the calling
thread, 2 cores, load average ~3.9 from other work):

    requests.Session   1327 us CPU per call
    urllib3 pool        717 us CPU per call     (-1.2 ms CPU per reply)

The standard library's http.client under it, with a kept connection per thread, was measured
too (the same bench, 2026-12-07, three rounds: urllib3 265 us, http.client 186 us per call),
but the whole stack showed no difference (``bash bench/cpu_split.sh sqlite``, alternated, two
each: 5.65 and 6.08 ms CPU per reply with urllib3, 5.85 and 7.25 ms with http.client), so the
library stays.

requests is urllib3's own user, so this is the same transport with the same TLS and proxy
rules kept here: the CA bundle from REQUESTS_CA_BUNDLE / CURL_CA_BUNDLE (else certifi's, as
requests does), and a proxy from the environment unless NO_PROXY excludes the Graph host.
"""

from __future__ import annotations

import json
import logging
import os
import urllib.request
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import urllib3
from urllib3.exceptions import (
    ConnectTimeoutError,
    HTTPError,
    NewConnectionError,
    ProtocolError,
    ReadTimeoutError,
)

from integrations.whatsapp import messages as wa

log = logging.getLogger(__name__)

# Meta's throttling / temporary codes (https://developers.facebook.com/docs/whatsapp/cloud-api/support/error-codes)
RETRYABLE_CODES = {1, 2, 4, 80007, 130429, 131048, 131056, 133016}
POOL_SIZE = 16  # connections kept per process (one per thread sending at once)


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


def _ca_bundle() -> str | None:
    bundle = os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE")
    if bundle:
        return bundle
    try:
        import certifi
    except ImportError:  # the system's store
        return None
    return certifi.where()


def _proxy_for(url: str) -> str | None:
    """The proxy the environment sets for ``url`` (HTTPS_PROXY, HTTP_PROXY, ALL_PROXY, NO_PROXY)."""
    proxies = urllib.request.getproxies()
    if not proxies:
        return None
    parts = urlsplit(url)
    if urllib.request.proxy_bypass(parts.hostname or ""):
        return None
    return proxies.get(parts.scheme) or proxies.get("all")


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
        self.timeout = urllib3.Timeout(connect=settings.whatsapp_connect_timeout,
                                       read=settings.whatsapp_read_timeout)
        self.default_phone_number_id = settings.whatsapp_phone_number_id
        self.headers = {"Authorization": f"Bearer {self.token}", "Content-Type": "application/json",
                        "Accept": "application/json", "User-Agent": "crm-whatsapp/1"}
        self._pid: int | None = None

    def _open(self) -> None:
        """Connections of this process (a forked child opens its own)."""
        proxy = _proxy_for(self.base)
        options = {"maxsize": POOL_SIZE, "ca_certs": _ca_bundle(), "cert_reqs": "CERT_REQUIRED"}
        if proxy:  # rare: every call goes through the manager with the full URL
            manager = urllib3.ProxyManager(proxy, num_pools=2, **options)
            self._urlopen, self._prefix = manager.urlopen, self.base
        else:  # one host: its pool directly, no URL parsing or pool lookup per call
            parts = urlsplit(self.base)
            pool = urllib3.PoolManager(num_pools=2, **options).connection_from_url(self.base)
            self._urlopen, self._prefix = pool.urlopen, parts.path.rstrip("/")
        self._pid = os.getpid()

    def _post(self, phone_number_id: str, body: dict) -> SendResult:
        if self._pid != os.getpid():
            self._open()
        path = f"{self._prefix}/{phone_number_id or self.default_phone_number_id}/messages"
        try:
            response = self._urlopen("POST", path, body=json.dumps(body).encode(), headers=self.headers,
                                     timeout=self.timeout, retries=False, redirect=False)
        except ReadTimeoutError:
            return SendResult(ok=False, error_title="read timeout", retryable=True, outcome_unknown=True)
        except NewConnectionError:  # refused, unreachable, name not resolved: nothing was sent
            return SendResult(ok=False, error_title="connection error", retryable=True)
        except ConnectTimeoutError:
            return SendResult(ok=False, error_title="connect timeout", retryable=True)
        except ProtocolError:
            # The connection broke after the request was (maybe) written: Meta may have it.
            return SendResult(ok=False, error_title="connection error", retryable=True, outcome_unknown=True)
        except HTTPError:  # TLS, proxy: before the request reached Meta
            return SendResult(ok=False, error_title="connection error", retryable=True)
        try:
            data = json.loads(response.data)
        except ValueError:
            data = None
        if response.status == 200:
            messages = (data or {}).get("messages") or [{}]
            return SendResult(ok=True, http_status=200, wa_message_id=messages[0].get("id"))
        return classify_error(response.status, data)

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
