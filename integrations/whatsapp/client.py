"""The Graph API client: libcurl (pycurl), one handle per thread, kept connections.

The client sends one request and classifies the answer. It never retries by
itself: whether a resend is safe is decided by the delivery code, which knows
whether Meta may already have accepted the message.

Why libcurl here and requests elsewhere: every reply makes two Graph calls (the send and
the read receipt), and in Python an HTTP call's own work is most of their cost. Measured with
``bench/http_client_bench.py`` (one keep-alive POST to a local server, CPU of the calling
thread, 2 cores, 2026-12-07, three rounds each):

    requests.Session      950 us CPU per call
    urllib3 pool          460 us CPU per call      (this client until 2026-12-07)
    http.client           275 us CPU per call
    pycurl (libcurl)      120 us CPU per call      (-0.7 ms CPU per reply against urllib3)

libcurl parses the answer's headers in C, where urllib3 and http.client parse them with the
standard library's email parser. It is the most used HTTP client there is, and pycurl ships
it in its wheels (with OpenSSL), so nothing is compiled or installed from Debian.

The same rules as requests keeps: the CA bundle from REQUESTS_CA_BUNDLE / CURL_CA_BUNDLE
(else certifi's), and a proxy from the environment unless NO_PROXY excludes the Graph host
(read here with the standard library, as requests does, and handed to libcurl, whose own
reading of the environment differs: it ignores an upper-case HTTP_PROXY). Each thread has
its own handle (a handle is not to be shared between threads), and a forked child opens its
own. A kept connection found closed before anything is written is not used (``_closed``); one that dies
after the request went out ends the call with the outcome unknown (libcurl would resend a
POST on a new connection by itself, but the body comes from a read function it cannot rewind),
as with urllib3: delivery then waits for Meta's status webhook before it sends again.
"""

from __future__ import annotations

import io
import json
import logging
import os
import select
import threading
import urllib.request
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import pycurl

from integrations.whatsapp import messages as wa

log = logging.getLogger(__name__)

# Meta's throttling / temporary codes (https://developers.facebook.com/docs/whatsapp/cloud-api/support/error-codes)
RETRYABLE_CODES = {1, 2, 4, 80007, 130429, 131048, 131056, 133016}
# libcurl's errors that mean no connection was made (nothing reached Meta): name or proxy
# not resolved, refused, unreachable (https://curl.se/libcurl/c/libcurl-errors.html)
_NOT_CONNECTED = {pycurl.E_COULDNT_RESOLVE_PROXY, pycurl.E_COULDNT_RESOLVE_HOST, pycurl.E_COULDNT_CONNECT}
_inherited: list = []  # handles a forked child got from its parent: kept, never used


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
    except ImportError:  # libcurl's own default store
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


def _transport_error(handle, code: int) -> SendResult:
    """A call that got no answer: whether the request may have reached Meta decides a resend.

    Bytes of the request written (REQUEST_SIZE, for the whole call): once any were, Meta may
    have the message whatever failed next (a new connection refused, say)."""
    sent = handle.getinfo(pycurl.REQUEST_SIZE) > 0
    if code in _NOT_CONNECTED:
        return SendResult(ok=False, error_title="connection error", retryable=True, outcome_unknown=sent)
    if code == pycurl.E_OPERATION_TIMEDOUT:
        return SendResult(ok=False, error_title="read timeout" if sent else "connect timeout", retryable=True,
                          outcome_unknown=sent)
    # TLS or proxy failures come before the request is written; a broken connection after it
    return SendResult(ok=False, error_title="connection error", retryable=True, outcome_unknown=sent)


def _closed(handle) -> bool:
    """Whether the handle's kept connection has something to read while idle: the server closed it."""
    fd = handle.getinfo(pycurl.ACTIVESOCKET)
    if fd < 0:
        return False
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    return bool(poller.poll(0))


class WhatsAppClient:
    def __init__(self, settings):
        self.base = f"{settings.whatsapp_api_url}/{settings.whatsapp_api_version}"
        self.token = settings.whatsapp_access_token
        self.connect_ms = round(settings.whatsapp_connect_timeout * 1000)
        # libcurl bounds a whole call, not each read (urllib3's read timeout): a Graph call is
        # one small request and its answer, so the read timeout bounds the call, and the connect
        # timeout a new connection within it (a kept one is usually reused)
        self.total_ms = round(settings.whatsapp_read_timeout * 1000)
        self.default_phone_number_id = settings.whatsapp_phone_number_id
        self.headers = [f"Authorization: Bearer {self.token}", "Content-Type: application/json",
                        "Accept: application/json", "User-Agent: crm-whatsapp/1",
                        "Expect:"]  # libcurl would wait for "100 Continue" before a body over 1 kB
        self._local = threading.local()

    def _handle(self):
        """This thread's handle (a forked child makes its own: the parent's connections are not its)."""
        local = self._local
        if getattr(local, "pid", None) != os.getpid():
            if getattr(local, "handle", None) is not None:  # the parent's: freeing it would close
                _inherited.append(local.handle)  # the parent's connection from here
            handle = pycurl.Curl()
            handle.setopt(pycurl.POST, 1)
            handle.setopt(pycurl.NOSIGNAL, 1)  # no SIGALRM for timeouts: other threads, RQ's death penalty
            handle.setopt(pycurl.CONNECTTIMEOUT_MS, self.connect_ms)
            handle.setopt(pycurl.TIMEOUT_MS, self.total_ms)
            handle.setopt(pycurl.HTTPHEADER, self.headers)
            handle.setopt(pycurl.PROXY, _proxy_for(self.base) or "")  # "": none, whatever the environment says
            handle.setopt(pycurl.FOLLOWLOCATION, 0)
            handle.setopt(pycurl.MAXCONNECTS, 1)  # one thread, one connection: a replaced one is closed
            handle.setopt(pycurl.PROTOCOLS, pycurl.PROTO_HTTP | pycurl.PROTO_HTTPS)
            bundle = _ca_bundle()
            if bundle:
                handle.setopt(pycurl.CAINFO, bundle)
            local.handle, local.pid = handle, os.getpid()
        return local.handle

    def _post(self, phone_number_id: str, body: dict) -> SendResult:
        handle = self._handle()
        # libcurl checks a kept connection only once it has been idle for a second; one the server
        # closed sooner (a restart, a drained node) would take the request and lose it: look first,
        # as urllib3 does (a readable idle connection is closed, or out of step)
        handle.setopt(pycurl.FRESH_CONNECT, 1 if _closed(handle) else 0)
        handle.setopt(pycurl.URL, f"{self.base}/{phone_number_id or self.default_phone_number_id}/messages")
        data = json.dumps(body).encode()
        handle.setopt(pycurl.POSTFIELDSIZE, len(data))
        # The body through a read function that cannot rewind: when a kept connection dies after
        # the request went out, libcurl would send it again on a new connection by itself (a
        # duplicate, should Meta have taken the first); unable to rewind, it reports the error.
        handle.setopt(pycurl.READFUNCTION, io.BytesIO(data).read)
        try:
            answer = handle.perform_rb()
        except pycurl.error as exc:
            return _transport_error(handle, exc.args[0])
        status = handle.getinfo(pycurl.RESPONSE_CODE)
        try:
            data = json.loads(answer)
        except ValueError:
            data = None
        if status == 200:
            messages = (data or {}).get("messages") or [{}]
            return SendResult(ok=True, http_status=200, wa_message_id=messages[0].get("id"))
        return classify_error(status, data)

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
