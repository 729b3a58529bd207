"""CPU per Graph-style POST: a requests.Session (trust_env off), urllib3's pool, and the
project's own client (``integrations.whatsapp.client``, on libcurl), each to a local
keep-alive HTTP server (a thread of this process; its CPU is not counted).

    .venv/bin/python bench/http_client_bench.py [calls]

Prints the calling thread's CPU time per call, three rounds. A reply costs two such calls
(the send and the read receipt).
"""

from __future__ import annotations

import json
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import SimpleNamespace

import requests
import urllib3

ANSWER = b'{"messaging_product":"whatsapp","messages":[{"id":"wamid.x"}]}'
BODY = {"messaging_product": "whatsapp", "to": "263770000001", "type": "text", "text": {"body": "hello"}}


class Graph(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # headers and body are two writes: with Nagle on, a write could wait for the client's
    # delayed ACK (40 ms), stalling whole rounds now and then
    disable_nagle_algorithm = True

    def log_message(self, *_args):
        pass

    def do_POST(self):  # http.server's naming
        self.rfile.read(int(self.headers["Content-Length"]))
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(ANSWER)))
        self.end_headers()
        self.wfile.write(ANSWER)


def main(calls: int) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from integrations.whatsapp.client import WhatsAppClient

    server = ThreadingHTTPServer(("127.0.0.1", 0), Graph)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    port = server.server_address[1]
    session = requests.Session()
    session.trust_env = False
    pool = urllib3.HTTPConnectionPool("127.0.0.1", port, maxsize=4)
    headers = {"Authorization": "Bearer token", "Content-Type": "application/json"}

    def with_requests():
        session.post(f"http://127.0.0.1:{port}/v23.0/1/messages", json=BODY, headers=headers,
                     timeout=(3, 10)).json()

    def with_urllib3():
        json.loads(pool.request("POST", "/v23.0/1/messages", body=json.dumps(BODY).encode(), headers=headers,
                                timeout=urllib3.Timeout(connect=3, read=10)).data)

    ours = WhatsAppClient(SimpleNamespace(
        whatsapp_api_url=f"http://127.0.0.1:{port}", whatsapp_api_version="v23.0", whatsapp_access_token="token",
        whatsapp_connect_timeout=3.0, whatsapp_read_timeout=10.0, whatsapp_phone_number_id="1"))

    def with_ours():
        assert ours.send("1", "263770000001", {"type": "text", "text": {"body": "hello"}}).ok

    for _round in range(3):
        for name, call in (("requests.Session", with_requests), ("urllib3 pool", with_urllib3),
                           ("WhatsAppClient", with_ours)):
            for _ in range(200):
                call()
            started = time.thread_time()
            for _ in range(calls):
                call()
            print(f"{name:19s} {(time.thread_time() - started) / calls * 1e6:7.0f} us CPU per call")
    server.shutdown()


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 2000)
