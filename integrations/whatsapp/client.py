"""The Graph API client: one keep-alive connection per thread, on the standard library's
http.client.

The client sends one request and classifies the answer. It never retries by
itself: whether a resend is safe is decided by the delivery code, which knows
whether Meta may already have accepted the message.

Why http.client here and requests elsewhere: every reply makes two Graph calls (the send and
the read receipt), and each layer above the socket costs CPU on that path. Measured with
``bench/http_client_bench.py`` (one keep-alive POST to a local server in another process, CPU
of the calling thread, 2 cores, medians of 3):

    requests.Session   1018 us CPU per call
    urllib3 pool        602 us CPU per call
    http.client         398 us CPU per call     (-0.4 ms CPU per reply against urllib3)
    (pycurl             288 us, but libcurl resends a request on a reused connection that died
                        before answering: a message sent twice; http.client never resends)

The rest is what urllib3 gave us, kept here: the CA bundle from REQUESTS_CA_BUNDLE /
CURL_CA_BUNDLE (else certifi's, as requests does), a proxy from the environment unless
NO_PROXY excludes the Graph host (HTTPS through a CONNECT tunnel), separate connect and read
timeouts, and a kept connection that the server has closed is never written to (checked before
each request, as urllib3 does), so a failure after the request went out always means "Meta
may have it".
"""

from __future__ import annotations

import base64
import http.client
import json
import logging
import os
import select
import ssl
import threading
import urllib.request
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit

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


def _dropped(conn: http.client.HTTPConnection) -> bool:
    """Whether the server closed (or wrote to) the kept connection: readable while idle."""
    sock = conn.sock
    if sock is None:
        return True
    try:
        return bool(select.select([sock], [], [], 0)[0])
    except (OSError, ValueError):
        return True


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
        self.connect_timeout = settings.whatsapp_connect_timeout
        self.read_timeout = settings.whatsapp_read_timeout
        self.default_phone_number_id = settings.whatsapp_phone_number_id
        self.headers = {"Authorization": f"Bearer {self.token}", "Content-Type": "application/json",
                        "Accept": "application/json", "User-Agent": "crm-whatsapp/1"}
        self._local = threading.local()  # each thread its own connection (a forked child too)
        parts = urlsplit(self.base)
        self._https = parts.scheme == "https"
        self._host, self._port = parts.hostname or "", parts.port or (443 if self._https else 80)
        self._proxy = _proxy_for(self.base)
        # through a plain HTTP proxy the request line carries the whole URL
        self._prefix = self.base if self._proxy and not self._https else parts.path.rstrip("/")
        self._tls: ssl.SSLContext | None = None

    def _connection(self) -> http.client.HTTPConnection:
        """This thread's connection, opened (connect timeout) when there is none or the server
        closed the kept one. Raises OSError when it cannot connect: nothing was sent."""
        conn = getattr(self._local, "conn", None)
        if conn is not None and (self._local.pid != os.getpid() or _dropped(conn)):
            conn.close()
            conn = None
        if conn is None:
            conn = self._open()
            try:
                conn.connect()  # with the connect timeout (and the CONNECT tunnel, TLS handshake)
            except BaseException:
                conn.close()
                raise
            conn.sock.settimeout(self.read_timeout)
            self._local.conn, self._local.pid = conn, os.getpid()
        return conn

    def _open(self) -> http.client.HTTPConnection:
        timeout = self.connect_timeout
        if self._proxy:
            proxy = urlsplit(self._proxy)
            host, port = proxy.hostname or "", proxy.port or 80
        else:
            host, port = self._host, self._port
        if not self._https:
            return http.client.HTTPConnection(host, port, timeout=timeout)
        if self._tls is None:
            self._tls = ssl.create_default_context(cafile=_ca_bundle())
        conn = http.client.HTTPSConnection(host, port, timeout=timeout, context=self._tls)
        if self._proxy:
            proxy, headers = urlsplit(self._proxy), {}
            if proxy.username:
                secret = f"{unquote(proxy.username)}:{unquote(proxy.password or '')}".encode()
                headers["Proxy-Authorization"] = "Basic " + base64.b64encode(secret).decode()
            conn.set_tunnel(self._host, self._port, headers=headers)
        return conn

    def _drop(self) -> None:
        conn = getattr(self._local, "conn", None)
        self._local.conn = None
        if conn is not None:
            conn.close()

    def _post(self, phone_number_id: str, body: dict) -> SendResult:
        path = f"{self._prefix}/{phone_number_id or self.default_phone_number_id}/messages"
        data = json.dumps(body).encode()
        try:
            conn = self._connection()
        except TimeoutError:
            return SendResult(ok=False, error_title="connect timeout", retryable=True)
        except OSError:  # refused, unreachable, name not resolved, TLS, proxy: nothing was sent
            return SendResult(ok=False, error_title="connection error", retryable=True)
        try:
            conn.request("POST", path, body=data, headers=self.headers)
            response = conn.getresponse()
            answer = response.read()
        except TimeoutError:
            self._drop()
            return SendResult(ok=False, error_title="read timeout", retryable=True, outcome_unknown=True)
        except (OSError, http.client.HTTPException):
            # The connection broke after the request was (maybe) written: Meta may have it.
            self._drop()
            return SendResult(ok=False, error_title="connection error", retryable=True, outcome_unknown=True)
        if response.will_close:
            self._drop()
        try:
            data = json.loads(answer)
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
