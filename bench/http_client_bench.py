"""CPU per Graph-style POST: one requests.Session (what integrations.whatsapp.client uses, with
trust_env off) against urllib3's pool directly, both to a local keep-alive HTTP server.

    .venv/bin/python bench/http_client_bench.py [calls]

Prints the calling thread's CPU time per call (server threads excluded). A reply costs two
such calls (the send and the read receipt).
"""

from __future__ import annotations

import json
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import requests
import urllib3

ANSWER = b'{"messaging_product":"whatsapp","messages":[{"id":"wamid.x"}]}'
BODY = {"messaging_product": "whatsapp", "to": "263770000001", "type": "text", "text": {"body": "hello"}}


class Graph(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

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

    for name, call in (("requests.Session", with_requests), ("urllib3 pool", with_urllib3)):
        for _ in range(200):
            call()
        started = time.thread_time()
        for _ in range(calls):
            call()
        print(f"{name:17s} {(time.thread_time() - started) / calls * 1e6:7.0f} us CPU per call")
    server.shutdown()


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 2000)
