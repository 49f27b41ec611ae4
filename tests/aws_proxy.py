"""A forwarding HTTP proxy on loopback in front of the local AWS endpoint, for tests that need AWS to
misbehave in one precise way: hold some calls (an S3 slowdown), or answer some as S3 does where moto
does not (a GetObject of a missing key, for a caller without s3:ListBucket). Every other request
reaches moto unchanged; the processes under test only get the proxy's address as their endpoint.
"""
from __future__ import annotations

import http.client
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlsplit

_HOP_BY_HOP = {"connection", "keep-alive", "proxy-connection", "te", "trailer", "transfer-encoding", "upgrade",
               "expect", "content-length"}
THROTTLED = (b'<?xml version="1.0" encoding="UTF-8"?>\n<Response><Errors><Error><Code>RequestLimitExceeded'
             b"</Code><Message>Request limit exceeded.</Message></Error></Errors><RequestID>proxy</RequestID>"
             b"</Response>")
ACCESS_DENIED = (b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>AccessDenied</Code>'
                 b"<Message>Access Denied</Message><RequestId>proxy</RequestId></Error>")


@dataclass
class Rule:
    """Requests `method path...` (path unquoted, e.g. `/<bucket>/<key>`) that start with `prefix`."""

    method: str
    prefix: str
    hold: float = 0.0              # seconds to hold the request before forwarding it
    deny: str = ""                 # "missing": a 404 from moto becomes 403; "all": every answer is 403
    once_per_path: bool = False    # hold each path once only (one slow call, not an outage)
    action: str = ""               # only query-API calls of this Action (EC2, SQS's query form)
    throttle_until: float = 0.0    # epoch seconds: until then answer RequestLimitExceeded, as EC2 does
    body_contains: bytes = b""     # only requests whose body has this
    answer: bytes = b""            # answer 200 with this body instead of forwarding (what AWS would say)
    seen: set[str] = field(default_factory=set)
    count: int = 0                 # requests that matched

    def matches(self, method: str, path: str, body: bytes = b"") -> bool:
        return method == self.method and path.startswith(self.prefix) and not (
            self.once_per_path and path in self.seen) and (
            not self.action or f"Action={self.action}&".encode() in body + b"&") and self.body_contains in body


class AwsProxy:
    """`with AwsProxy(endpoint) as proxy:` then give `proxy.url` to the processes under test."""

    def __init__(self, upstream: str):
        self.upstream = urlsplit(upstream)
        self.rules: list[Rule] = []
        self.held: list[tuple[float, str, str]] = []  # (epoch seconds, method, path) of each held request
        self.lock = threading.Lock()
        handler = type("Handler", (_Handler,), {"proxy": self})
        self.server = _Server(("127.0.0.1", 0), handler)
        self.thread = threading.Thread(target=self.server.serve_forever, name="aws-proxy", daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def add(self, rule: Rule) -> Rule:
        with self.lock:
            self.rules.append(rule)
        return rule

    def throttles(self, method: str, path: str, body: bytes) -> bool:
        """Count the calls that match a rule of `action`; True if one of them is throttled now."""
        throttled = False
        with self.lock:
            for rule in self.rules:
                if rule.action and rule.matches(method, path, body):
                    rule.count += 1
                    throttled = throttled or time.time() < rule.throttle_until
        return throttled

    def canned(self, method: str, path: str, body: bytes) -> bytes | None:
        with self.lock:
            return next((rule.answer for rule in self.rules if rule.answer and rule.matches(method, path, body)), None)

    def hold_for(self, method: str, path: str, body: bytes = b"") -> float:
        with self.lock:
            for rule in self.rules:
                if rule.hold and rule.matches(method, path, body):
                    rule.seen.add(path)
                    self.held.append((time.time(), method, path))
                    return rule.hold
        return 0.0

    def denies(self, method: str, path: str, status: int) -> bool:
        with self.lock:
            return any(rule.deny and rule.matches(method, path) and (rule.deny == "all" or status == 404)
                       for rule in self.rules)

    def __enter__(self) -> "AwsProxy":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128  # every worker's connections at once (kombu's curl client opens several)

    def handle_error(self, request, client_address) -> None:
        pass  # a client that gave up while its request was held; anything else fails the test's assertions


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as botocore and pycurl expect
    proxy: AwsProxy

    def handle_one_request(self) -> None:
        try:
            super().handle_one_request()
        except OSError:  # the client gave up (a timeout) while the request was held: nothing to answer
            self.close_connection = True

    def relay(self) -> None:
        body, path = self.body(), unquote(urlsplit(self.path).path)
        held = self.proxy.hold_for(self.command, path, body)
        if held:
            time.sleep(held)
        canned = self.proxy.canned(self.command, path, body)
        if self.proxy.throttles(self.command, path, body):
            status, reason, headers, payload = 503, "Service Unavailable", [("Content-Type", "text/xml")], THROTTLED
        elif canned is not None:
            status, reason, headers, payload = 200, "OK", [("Content-Type", "text/xml")], canned
        else:
            status, reason, headers, payload = self.forward(body)
        if self.proxy.denies(self.command, path, status):
            status, reason, headers, payload = 403, "Forbidden", [("Content-Type", "application/xml")], ACCESS_DENIED
        self.send_response_only(status, reason)
        for name, value in headers:
            if name.lower() not in _HOP_BY_HOP:
                self.send_header(name, value)
        if self.command == "HEAD":
            self.send_header("Content-Length", dict((k.lower(), v) for k, v in headers).get("content-length", "0"))
        elif status not in (204, 304):
            self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(payload)

    do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = relay

    def body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() != "chunked":
            return self.rfile.read(int(self.headers.get("Content-Length") or 0))
        chunks = []
        while size := int(self.rfile.readline().split(b";")[0], 16):
            chunks.append(self.rfile.read(size))
            self.rfile.readline()
        while self.rfile.readline() not in (b"\r\n", b"\n", b""):  # trailers
            pass
        return b"".join(chunks)

    def forward(self, body: bytes) -> tuple[int, str, list[tuple[str, str]], bytes]:
        upstream = http.client.HTTPConnection(self.proxy.upstream.hostname, self.proxy.upstream.port, timeout=120)
        try:
            upstream.putrequest(self.command, self.path, skip_host=True, skip_accept_encoding=True)
            for name, value in self.headers.items():  # Host too: moto reads the bucket and region from it
                if name.lower() not in _HOP_BY_HOP:
                    upstream.putheader(name, value)
            upstream.putheader("Content-Length", str(len(body)))
            upstream.endheaders(body)
            response = upstream.getresponse()
            return response.status, response.reason, response.getheaders(), response.read()
        finally:
            upstream.close()

    def log_message(self, format: str, *args) -> None:  # quiet: the endpoint's own log has every call
        pass
