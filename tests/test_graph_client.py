"""The Graph client on urllib3: answers and transport failures classified as before."""

from __future__ import annotations

import json
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import SimpleNamespace

import pytest
from werkzeug import Response

from integrations.whatsapp.client import WhatsAppClient


def settings(url: str, read_timeout: float = 1.0):
    return SimpleNamespace(whatsapp_api_url=url, whatsapp_api_version="v23.0", whatsapp_access_token="tok-123",
                           whatsapp_connect_timeout=1.0, whatsapp_read_timeout=read_timeout,
                           whatsapp_phone_number_id="555")


def test_send_and_mark_read(httpserver):
    seen = []

    def handle(request):
        seen.append((request.path, request.headers.get("Authorization"), json.loads(request.data)))
        return Response(json.dumps({"messages": [{"id": "wamid.OK"}]}), content_type="application/json")

    httpserver.expect_request("/v23.0/555/messages", method="POST").respond_with_handler(handle)
    httpserver.expect_request("/v23.0/777/messages", method="POST").respond_with_handler(handle)
    client = WhatsAppClient(settings(httpserver.url_for("").rstrip("/")))
    result = client.send("", "263770000001", {"type": "text", "text": {"body": "héllo"}}, callback_id="cb-1")
    assert (result.ok, result.wa_message_id, result.http_status) == (True, "wamid.OK", 200)
    assert client.mark_read("777", "wamid.IN").ok
    (path, auth, body), (path2, _auth, receipt) = seen
    assert path == "/v23.0/555/messages" and auth == "Bearer tok-123"
    assert body == {"messaging_product": "whatsapp", "recipient_type": "individual", "to": "263770000001",
                    "type": "text", "text": {"body": "héllo"}, "biz_opaque_callback_data": "cb-1"}
    assert path2 == "/v23.0/777/messages" and receipt["status"] == "read" and receipt["message_id"] == "wamid.IN"


@pytest.mark.parametrize(("status", "body", "retryable", "code"), [
    (400, {"error": {"code": 131026, "message": "Message undeliverable"}}, False, 131026),
    (400, {"error": {"code": 130429, "message": "Rate limit hit"}}, True, 130429),
    (429, {}, True, None),
    (502, None, True, None),  # not JSON
])
def test_errors_are_classified(httpserver, status, body, retryable, code):
    text = json.dumps(body) if body is not None else "<html>Bad gateway</html>"
    httpserver.expect_request("/v23.0/555/messages").respond_with_data(text, status=status)
    result = WhatsAppClient(settings(httpserver.url_for("").rstrip("/"))).send("555", "1", {"type": "text"})
    assert (result.ok, result.http_status, result.retryable, result.error_code) == (False, status, retryable, code)
    assert not result.outcome_unknown


def _listener(behaviour):
    """A TCP server on a free port that runs ``behaviour(conn)`` for each connection."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)

    def loop():
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            threading.Thread(target=behaviour, args=(conn,), daemon=True).start()

    threading.Thread(target=loop, daemon=True).start()
    return server, f"http://127.0.0.1:{server.getsockname()[1]}"


def _read_request_then_close(conn):
    conn.recv(65536)
    conn.close()


def _read_request_then_wait(conn):
    conn.recv(65536)
    threading.Event().wait(3)
    conn.close()


def test_connection_refused_is_retryable_and_nothing_was_sent():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nobody listens
    result = WhatsAppClient(settings(f"http://127.0.0.1:{port}")).send("555", "1", {"type": "text"})
    assert (result.ok, result.retryable, result.outcome_unknown, result.error_title) == (
        False, True, False, "connection error")


@pytest.mark.parametrize(("behaviour", "title"), [
    (_read_request_then_close, "connection error"),  # the request went out, the answer never came
    (_read_request_then_wait, "read timeout"),
])
def test_lost_answers_leave_the_outcome_unknown(behaviour, title):
    server, url = _listener(behaviour)
    try:
        result = WhatsAppClient(settings(url, read_timeout=0.5)).send("555", "1", {"type": "text"})
    finally:
        server.close()
    assert (result.ok, result.retryable, result.outcome_unknown, result.error_title) == (False, True, True, title)


def test_proxy_from_the_environment(monkeypatch):
    seen = []

    class Proxy(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802 - http.server's naming
            self.rfile.read(int(self.headers["Content-Length"]))
            seen.append(self.path)
            answer = b'{"messages":[{"id":"wamid.P"}]}'
            self.send_response(200)
            self.send_header("Content-Length", str(len(answer)))
            self.end_headers()
            self.wfile.write(answer)

        def log_message(self, *_args):
            pass

    proxy = ThreadingHTTPServer(("127.0.0.1", 0), Proxy)
    threading.Thread(target=proxy.serve_forever, daemon=True).start()
    for name in ("no_proxy", "NO_PROXY", "all_proxy", "ALL_PROXY", "HTTPS_PROXY", "https_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("http_proxy", f"http://127.0.0.1:{proxy.server_address[1]}")
    monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{proxy.server_address[1]}")
    try:
        result = WhatsAppClient(settings("http://graph.example.invalid")).send("555", "1", {"type": "text"})
    finally:
        proxy.shutdown()
    assert result.ok and result.wa_message_id == "wamid.P"
    assert seen == ["http://graph.example.invalid/v23.0/555/messages"]


def _answer_once_then_close(conn):
    """Answers one request on the connection as if keeping it alive, then closes it (a server's
    idle timeout)."""
    conn.recv(65536)
    answer = b'{"messages":[{"id":"wamid.K"}]}'
    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
                 % (len(answer), answer))
    threading.Event().wait(0.1)
    conn.close()


def test_a_kept_connection_the_server_closed_is_not_written_to():
    """The next send opens a new connection instead of writing into the closed one (which could
    only end in 'outcome unknown')."""
    server, url = _listener(_answer_once_then_close)
    client = WhatsAppClient(settings(url))
    try:
        first = client.send("555", "1", {"type": "text"})
        threading.Event().wait(0.4)  # the server has closed the kept connection meanwhile
        second = client.send("555", "1", {"type": "text"})
    finally:
        server.close()
    assert first.ok and second.ok and second.wa_message_id == "wamid.K"


def test_each_thread_sends_on_its_own_connection(httpserver):
    """Reply threads share one client: their calls never mix on one connection."""
    seen = []

    def handle(request):
        seen.append(json.loads(request.data)["to"])
        return Response(json.dumps({"messages": [{"id": f"wamid.{seen[-1]}"}]}), content_type="application/json")

    httpserver.expect_request("/v23.0/555/messages", method="POST").respond_with_handler(handle)
    client = WhatsAppClient(settings(httpserver.url_for("").rstrip("/")))
    results: dict[str, list] = {}

    def sender(to: str) -> None:
        results[to] = [client.send("555", to, {"type": "text"}) for _ in range(20)]

    threads = [threading.Thread(target=sender, args=(str(n),)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for to, answers in results.items():
        assert [r.wa_message_id for r in answers] == [f"wamid.{to}"] * 20
    assert len(seen) == 80


def test_a_request_lost_on_a_kept_connection_is_not_sent_again_by_the_client():
    """The connection dies after the request went out and before any answer: Meta may have the
    message, so the call reports the outcome unknown (delivery waits for the status webhook)
    and the client itself sends nothing more (libcurl would resend on a new connection)."""
    requests: list[bytes] = []

    def answer_then_drop(conn):
        answer = b'{"messages":[{"id":"wamid.1"}]}'
        first = True
        while True:
            data = conn.recv(65536)
            if not data:
                break
            requests.append(data)
            if not first:  # the second request on this connection: read, then gone
                conn.close()
                return
            first = False
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
                         % (len(answer), answer))

    server, url = _listener(answer_then_drop)
    client = WhatsAppClient(settings(url))
    try:
        first = client.send("555", "1", {"type": "text"})
        second = client.send("555", "1", {"type": "text"})
        threading.Event().wait(0.3)
    finally:
        server.close()
    assert first.ok
    assert (second.ok, second.retryable, second.outcome_unknown) == (False, True, True)
    assert len(requests) == 2
