"""An instance metadata service (IMDSv2) on loopback, for tests of daas.interruption: a session token
by PUT, then the spot interruption and rebalance documents, 404 until a test posts a notice."""
from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

SPOT, REBALANCE = "/latest/meta-data/spot/instance-action", "/latest/meta-data/events/recommendations/rebalance"
TOKEN = "imds-token-for-tests"


class Imds:
    """`with Imds() as imds:` give `imds.url` to the worker; `imds.post(SPOT, {...})` to interrupt."""

    def __init__(self) -> None:
        self.documents: dict[str, str] = {}
        self.asked = 0  # document requests with a valid token
        handler = type("Handler", (_Handler,), {"imds": self})
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.thread = threading.Thread(target=self.server.serve_forever, name="imds", daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def post(self, path: str, document: dict) -> None:
        self.documents[path] = json.dumps(document)

    def __enter__(self) -> "Imds":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()


class _Handler(BaseHTTPRequestHandler):
    imds: Imds

    def do_PUT(self) -> None:
        if self.path == "/latest/api/token" and self.headers.get("X-aws-ec2-metadata-token-ttl-seconds"):
            self.answer(200, TOKEN)
        else:
            self.answer(400, "")

    def do_GET(self) -> None:
        if self.headers.get("X-aws-ec2-metadata-token") != TOKEN:
            self.answer(401, "")  # IMDSv2 only, as the workers' launch template requires
            return
        self.imds.asked += 1
        document = self.imds.documents.get(self.path)
        self.answer(200, document) if document is not None else self.answer(404, "")

    def answer(self, status: int, body: str) -> None:
        data = body.encode()
        self.send_response(status)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args) -> None:
        pass
