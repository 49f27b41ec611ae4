"""What hostile or careless callers can cost and learn (issue 16): the key check, the rate limit and
the whole-request cap answer before the body is read; /healthz tells the cause, not AWS's message;
every response carries the Content-Security-Policy and the usual security headers."""
import io
import logging
import re
import socket
import time

import pytest
from PIL import Image

from tests.conftest import make_settings
from web import SECURITY_HEADERS, create_app, views

KEY = "k3y-for-tests"
BOUNDARY = "daas-test-boundary"


def jpeg(size: int = 64) -> bytes:
    buffer = io.BytesIO()
    Image.effect_noise((size, size), 60).convert("RGB").save(buffer, format="JPEG")
    return buffer.getvalue()


def multipart(field: str, files: list[tuple[str, bytes]]) -> bytes:
    """The bytes a client sends for `files` in one form field."""
    parts = [f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="{field}"; filename="{name}"\r\n'
             f"Content-Type: image/jpeg\r\n\r\n".encode() + data + b"\r\n" for name, data in files]
    return b"".join(parts) + f"--{BOUNDARY}--\r\n".encode()


def post_body(client, path: str, body: bytes, **headers) -> tuple[int, dict | str, io.BytesIO, dict]:
    """POST `body` as a stream; returns (status, JSON or text, the stream: its position is how much
    of the body the app read, the response's headers)."""
    stream = io.BytesIO(body)
    response = client.post(path, input_stream=stream, content_length=len(body), headers=headers,
                           content_type=f"multipart/form-data; boundary={BOUNDARY}")
    payload = response.get_json(silent=True) or response.get_data(as_text=True)
    return response.status_code, payload, stream, response.headers


@pytest.fixture
def keyed(local_aws, tmp_path):
    settings = make_settings(local_aws, tmp_path, api_keys=KEY, rate_limit=5)
    return create_app(settings).test_client()


# -- before the body is read ---------------------------------------------------------------------------
def test_without_a_key_a_large_upload_is_refused_before_a_byte_of_it_is_read(keyed):
    body = multipart("images", [("big.jpg", b"\xff\xd8" + bytes(12 * 1024 * 1024))])
    for path in ("/api/jobs", "/classify"):
        status, _, stream, _ = post_body(keyed, path, body)
        assert status == 401 and stream.tell() == 0, path  # nothing parsed, nothing spooled


def test_the_running_web_tier_answers_401_to_a_1_gb_upload_after_its_headers(local_aws, tmp_path):
    """gunicorn hands the request to the app after its headers: the 401 comes back while the client
    has sent 64 KB of the gigabyte it announced."""
    from daas.stack import Stack

    settings = make_settings(local_aws, tmp_path, api_keys=KEY)
    with Stack(settings, log_dir=tmp_path / "logs") as stack:
        url = stack.start_web()
        with socket.create_connection((settings.host, settings.web_port), timeout=10) as sock:
            start = time.monotonic()
            sock.sendall(f"POST /api/jobs HTTP/1.1\r\nHost: {url[7:]}\r\nContent-Length: {1 << 30}\r\n"
                         f"Content-Type: multipart/form-data; boundary={BOUNDARY}\r\n\r\n".encode())
            sock.sendall(multipart("images", [("a.jpg", bytes(64 * 1024))])[:64 * 1024])
            answer = ""
            while "needs an API key" not in answer and time.monotonic() - start < 10:
                answer += sock.recv(4096).decode(errors="replace")  # headers and body may come apart
            elapsed = time.monotonic() - start
    assert answer.startswith("HTTP/1.1 401") and "needs an API key" in answer, answer
    assert elapsed < 5


def test_a_caller_over_its_rate_limit_is_refused_before_its_upload_is_read(keyed):
    auth = {"Authorization": f"Bearer {KEY}"}
    assert keyed.application.extensions["daas_rate_limiter"].take(KEY, 5) == 0  # the minute's allowance, spent
    for path, field in (("/api/jobs", "images"), ("/classify", "myfile")):
        status, answer, stream, headers = post_body(keyed, path, multipart(field, [("a.jpg", jpeg())]), **auth)
        assert status == 429 and stream.tell() == 0, path
        assert "5 images per minute" in str(answer) and 1 <= int(headers["Retry-After"]) <= 12


def test_the_request_cap_is_max_files_images_of_max_image_bytes_and_is_checked_before_reading(local_aws, tmp_path):
    settings = make_settings(local_aws, tmp_path, max_files=2, max_image_bytes=1000)
    app = create_app(settings).test_client()
    # The most a client may send, two files of 1000 bytes with long names, passes the cap: the
    # form is parsed and each file gets its own verdict (here: not an image).
    full = bytes(1000)
    names = [f"{c * 196}.jpg" for c in "ab"]  # 200 characters: the longest name a job keeps
    status, answer, _, _ = post_body(app, "/api/jobs", multipart("images", [(n, full) for n in names]))
    assert status != 413 and all(f"{name}: " in answer["error"] for name in names), answer
    # Six are over the cap: refused from their Content-Length, unread, with the limits.
    body = multipart("images", [(f"{i}.jpg", full) for i in range(6)])
    status, answer, stream, _ = post_body(app, "/api/jobs", body)
    assert status == 413 and stream.tell() == 0
    assert answer["error"] == (f"the request is {len(body) / 1024:.1f} KB; the limit is 6.0 KB per request "
                               "(2 images of at most 1.0 KB each, with their form headers): "
                               "send fewer or smaller images per request")


# -- /healthz ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("missing, cause", [("input_bucket", "the input bucket does not answer"),
                                            ("output_bucket", "the output bucket does not answer"),
                                            ("queue", "the classify queue does not answer")])
def test_healthz_names_the_cause_in_plain_words_and_logs_the_details(local_aws, tmp_path, monkeypatch, caplog,
                                                                     missing, cause):
    settings = make_settings(local_aws, tmp_path)
    settings = settings.with_(**{missing: f"{settings.stack}-gone"})  # never created
    monkeypatch.setattr(views, "_healthy_until", 0.0)  # another test's app may have been healthy just now
    with caplog.at_level(logging.WARNING):
        response = create_app(settings).test_client().get("/healthz")
    assert response.status_code == 503 and response.get_json() == {"error": f"not ready: {cause}"}
    assert cause in caplog.text and "An error occurred" in caplog.text  # botocore's own words, in the log only


# -- headers -------------------------------------------------------------------------------------------------
def assert_secured(response, what: str) -> None:
    for name, value in SECURITY_HEADERS.items():
        assert response.headers.get(name) == value, f"{what}: {name}"


def test_every_route_answers_with_the_csp_and_security_headers(keyed):
    csp = SECURITY_HEADERS["Content-Security-Policy"]
    for directive in ("default-src 'self'", "object-src 'none'", "base-uri 'none'", "frame-ancestors 'none'",
                      "form-action 'self'"):
        assert directive in csp
    assert "unsafe-inline" not in csp and "unsafe-eval" not in csp
    rules = list(keyed.application.url_map.iter_rules())
    assert {rule.endpoint for rule in rules} >= {"service.index", "service.healthz", "service.create_job",
                                                 "ops.status", "ops.timeline_page", "static"}
    for rule in rules:
        path = re.sub(r"<[^>]+>", "style.css" if rule.endpoint == "static" else "x", rule.rule)
        for method in rule.methods - {"HEAD", "OPTIONS"}:
            for headers in ({}, {"Authorization": f"Bearer {KEY}"}):  # refused (401) and served
                response = keyed.open(path, method=method, headers=headers)
                assert_secured(response, f"{method} {path} -> {response.status_code}")
    # Errors raised by Flask itself: no such route, wrong method, a request over the cap.
    assert_secured(keyed.get("/no/such/page"), "404")
    assert_secured(keyed.delete("/healthz"), "405")
    assert_secured(keyed.post("/api/jobs", headers={"Authorization": f"Bearer {KEY}", "Content-Length": str(1 << 40)},
                              content_type=f"multipart/form-data; boundary={BOUNDARY}"), "413")


def test_the_pages_have_no_inline_script_or_style_for_the_csp_to_block(keyed):
    for page in ("/", "/ops/timeline"):
        html = keyed.get(page).get_data(as_text=True)
        assert re.findall(r"<script(?![^>]*\bsrc=)[^>]*>", html) == [], page
        assert not re.search(r"<style|\sstyle=|\son[a-z]+=|javascript:", html, re.I), page
    assert keyed.get("/static/timeline.js").status_code == 200
