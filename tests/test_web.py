"""The web tier in process (Flask's test client) against the local AWS endpoint: API keys, the rate
limit, the status served from the autoscaler's tick, and the error messages of each route."""
import hashlib
import io
import re
import time

import pytest
import requests
from PIL import Image

from daas import aws, health, storage
from tests.conftest import make_settings, send_from_this_process
from web import create_app

KEY = "k3y-for-tests"


def jpeg() -> bytes:
    buffer = io.BytesIO()
    Image.effect_noise((64, 64), 60).convert("RGB").save(buffer, format="JPEG")
    return buffer.getvalue()


@pytest.fixture
def keyed(local_aws, tmp_path):
    """The web app of a fresh stack with API keys on and a limit of 5 images a minute."""
    settings = send_from_this_process(make_settings(local_aws, tmp_path, api_keys=f"other, {KEY}", rate_limit=5))
    return create_app(settings).test_client()


def bearer(key: str = KEY) -> dict:
    return {"Authorization": f"Bearer {key}"}


def test_without_a_key_every_upload_job_and_ops_route_answers_401_with_a_message(keyed):
    requests = [("post", "/api/jobs", {"data": {"images": (io.BytesIO(jpeg()), "a.jpg")}}),
                ("get", "/api/jobs/" + "0" * 32, {}), ("post", "/classify", {"data": {"myfile": (io.BytesIO(jpeg()), "a.jpg")}}),
                ("post", "/", {"data": {"myfile": (io.BytesIO(jpeg()), "a.jpg")}}),
                ("get", "/api/status", {}), ("get", "/ops/timeline.png", {})]
    for method, path, kwargs in requests:
        response = getattr(keyed, method)(path, **kwargs)
        assert response.status_code == 401, path
        assert "Authorization: Bearer" in response.get_data(as_text=True), path
        assert response.headers["WWW-Authenticate"].startswith("Bearer")
    wrong = keyed.post("/api/jobs", data={"images": (io.BytesIO(jpeg()), "a.jpg")}, headers=bearer("guess"))
    assert wrong.status_code == 401 and "not valid" in wrong.get_json()["error"]
    assert keyed.get("/api/jobs/" + "0" * 32, headers={"Authorization": KEY}).status_code == 401  # no scheme


def test_every_route_but_the_open_pages_wants_the_key(keyed):
    """Default deny: a route added later is protected without being listed anywhere."""
    import re

    from web.auth import OPEN

    rules = [rule for rule in keyed.application.url_map.iter_rules() if rule.endpoint not in OPEN]
    assert {rule.endpoint for rule in rules} >= {"service.create_job", "service.classify_sync", "ops.status"}
    for rule in rules:
        method = sorted(rule.methods - {"HEAD", "OPTIONS"})[0]
        assert keyed.open(re.sub(r"<[^>]+>", "x", rule.rule), method=method).status_code == 401, rule.rule


def test_a_job_is_readable_only_with_the_key_that_created_it(keyed):
    """Issue 16: any key read any job. The manifest records the creator by a hash of its key."""
    job = keyed.post("/api/jobs", data={"images": (io.BytesIO(jpeg()), "mine.jpg")}, headers=bearer()).get_json()
    path = f"/api/jobs/{job['job_id']}"
    assert keyed.get(path, headers=bearer()).get_json()["images"][0]["name"] == "mine.jpg"
    unknown = keyed.get("/api/jobs/" + "f" * 32, headers=bearer("other")).get_json()["error"]
    for route in (path, f"{path}/images/{job['images'][0]['id']}"):
        other = keyed.get(route, headers=bearer("other"))
        assert other.status_code == 404  # with the words an unknown job gets: nothing tells them apart
        assert other.get_json()["error"] == unknown.replace("f" * 32, job["job_id"])
    settings = keyed.application.config["DAAS_SETTINGS"]
    manifest = aws.client("s3", settings).get_object(Bucket=settings.output_bucket,
                                                     Key=storage.manifest_key(job["job_id"]))["Body"].read()
    assert KEY.encode() not in manifest and hashlib.sha256(KEY.encode()).hexdigest().encode() in manifest


def test_the_image_route_answers_with_that_image_only(keyed):
    job = keyed.post("/api/jobs", data={"images": [(io.BytesIO(jpeg()), "a.jpg"), (io.BytesIO(jpeg()), "b.jpg")]},
                     headers=bearer()).get_json()
    first, second = job["images"]
    response = keyed.get(f"/api/jobs/{job['job_id']}/images/{first['id']}", headers=bearer())
    assert response.status_code == 200
    assert {k: response.get_json()[k] for k in ("id", "name", "status")} == {**first, "status": "queued"}
    assert second["id"] not in response.get_data(as_text=True) and "b.jpg" not in response.get_data(as_text=True)
    missing = keyed.get(f"/api/jobs/{job['job_id']}/images/{'0' * 32}", headers=bearer())
    assert missing.status_code == 404 and "no image with id" in missing.get_json()["error"]


def test_a_classify_that_times_out_names_its_images_url_and_not_the_whole_job(local_aws, tmp_path):
    """Where the service is open, strangers behind one address share jobs: the 504 hands out the
    image's own route (readable with the key that sent it, when keys are on)."""
    settings = send_from_this_process(make_settings(local_aws, tmp_path, api_keys=f"other, {KEY}", result_timeout=3))
    app = create_app(settings).test_client()
    response = app.post("/classify", data={"myfile": (io.BytesIO(jpeg()), "late.jpg")}, headers=bearer())
    assert response.status_code == 504 and "stays queued" in response.get_data(as_text=True)
    [url] = re.findall(r"/api/jobs/[0-9a-f]{32}/images/[0-9a-f]{32}", response.get_data(as_text=True))
    image = app.get(url, headers=bearer()).get_json()
    assert image["name"] == "late.jpg" and image["status"] == "queued" and url.endswith(image["id"])
    assert app.get(url, headers=bearer("other")).status_code == 404


def test_a_cross_site_form_post_cannot_spend_compute(keyed):
    """A browser posting a form from another site sends cookies at most, never an Authorization header."""
    response = keyed.post("/classify", data={"myfile": (io.BytesIO(jpeg()), "a.jpg")},
                          headers={"Origin": "https://evil.example", "Cookie": "session=x"})
    assert response.status_code == 401
    assert "Access-Control-Allow-Origin" not in response.headers


def test_pages_and_health_stay_open_and_the_form_asks_for_the_key(keyed):
    page = keyed.get("/")
    assert page.status_code == 200 and 'id="api-key"' in page.get_data(as_text=True)
    assert keyed.get("/ops/timeline").status_code == 200
    assert keyed.get("/healthz").status_code == 200  # open: the load balancer asks it without a key


def test_with_a_key_uploads_are_accepted_and_the_rate_limit_answers_429_with_retry_after(local_aws, tmp_path):
    """Against a running web tier (gunicorn, two processes: they share one rate limit)."""
    from daas.stack import Stack

    settings = make_settings(local_aws, tmp_path, api_keys=f"other, {KEY}", rate_limit=5)
    with Stack(settings, log_dir=tmp_path / "logs") as stack:
        url, http = stack.start_web(), requests.Session()
        accepted = http.post(f"{url}/api/jobs", files=[("images", (f"{i}.jpg", jpeg())) for i in range(4)],
                             headers=bearer())
        assert accepted.status_code == 202 and len(accepted.json()["images"]) == 4
        assert http.get(url + accepted.headers["Location"], headers=bearer()).status_code == 200
        over = http.post(f"{url}/api/jobs", files=[("images", (f"{i}.jpg", jpeg())) for i in range(2)],
                         headers=bearer())
        assert over.status_code == 429 and "5 images per minute" in over.json()["error"]
        assert 1 <= int(over.headers["Retry-After"]) <= 12  # one image refills in 12 s
        # Another key has its own allowance; a request larger than a minute's allowance says so.
        other = http.post(f"{url}/api/jobs", files=[("images", (f"{i}.jpg", jpeg())) for i in range(6)],
                          headers=bearer("other"))
        assert other.status_code == 429 and "send fewer per request" in other.json()["error"]
        assert "Retry-After" not in other.headers
        sync = http.post(f"{url}/classify", files={"myfile": ("a.jpg", jpeg())})
        assert sync.status_code == 401 and sync.text.startswith("this service needs an API key")


def test_behind_a_trusted_proxy_each_client_address_has_its_own_allowance(local_aws, tmp_path):
    """An open service limits per address: behind a load balancer, the one in X-Forwarded-For."""
    from daas.stack import Stack

    settings = make_settings(local_aws, tmp_path, rate_limit=5, trusted_proxies=1)
    with Stack(settings, log_dir=tmp_path / "logs") as stack:
        url = stack.start_web()

        def upload(address: str, count: int) -> int:
            files = [("images", (f"{i}.jpg", jpeg())) for i in range(count)]
            return requests.post(f"{url}/api/jobs", files=files, headers={"X-Forwarded-For": address},
                                 timeout=30).status_code

        assert upload("203.0.113.7", 5) == 202
        assert upload("203.0.113.7", 1) == 429
        assert upload("198.51.100.2", 5) == 202  # another client behind the same balancer


def test_an_open_service_shows_no_key_field(local_aws, tmp_path):
    app = create_app(make_settings(local_aws, tmp_path)).test_client()
    assert 'id="api-key"' not in app.get("/").get_data(as_text=True)


def test_status_serves_the_latest_tick_without_asking_aws(local_aws, tmp_path):
    settings = make_settings(local_aws, tmp_path)
    app = create_app(settings).test_client()
    assert app.get("/api/status").status_code == 503  # no tick yet: says so
    tick = {"t": time.time(), "interval": 5, "queue": {"visible": 7, "in_flight": 2},
            "workers": {"running": 1, "starting": 3}, "provider": "local", "launched": 3}
    health.record(settings, health.TICK, tick)
    health.record(settings, health.BEAT, {"t": time.time()})
    # A second web host (another app, another state folder) reads the same records.
    other = create_app(settings.with_(state_dir=tmp_path / "other-host")).test_client()
    status = other.get("/api/status").get_json()
    assert status["queue"] == {"visible": 7, "in_flight": 2} and status["workers"] == {"running": 1, "starting": 3}
    assert status["measured_at"] == tick["t"] and status["control_plane"] == "ok"


def test_a_stalled_control_plane_is_reported_and_never_fails_the_balancers_check(local_aws, tmp_path):
    """/healthz judges this web host only (issue 17): a stalled controller or beat, or EC2 refusing a
    launch, must not take every web host out of the load balancer. /api/status names the fault."""
    settings = make_settings(local_aws, tmp_path, scale_interval=5)
    app = create_app(settings).test_client()
    now = time.time()
    health.record(settings, health.BEAT, {"t": now})
    health.record(settings, health.TICK, {"t": now - 16, "queue": {}, "workers": {}, "provider": "ec2",
                                          "refused": "ClientError: InsufficientInstanceCapacity"})
    assert app.get("/healthz").status_code == 200
    status = app.get("/api/status").get_json()
    assert "controller is down or stalled" in status["control_plane"]
    assert status["launch_refused"] == "ClientError: InsufficientInstanceCapacity"
    health.record(settings, health.BEAT, {"t": now - 20})
    assert "beat has sent no tick for 20 s" in app.get("/api/status").get_json()["control_plane"]


def test_the_api_answers_its_errors_in_json_with_their_own_words(local_aws, tmp_path):
    app = create_app(make_settings(local_aws, tmp_path, max_image_bytes=1000)).test_client()
    big = app.post("/api/jobs", data={"images": (io.BytesIO(b"\xff\xd8" + b"\0" * 2000), "big.jpg")})
    assert big.status_code == 413 and "big.jpg" in big.get_json()["error"]
    assert app.get("/api/nothing-here").get_json()["error"].startswith("no job or resource")
    wrong = app.delete("/api/jobs/" + "0" * 32)
    assert wrong.status_code == 405 and wrong.headers["Allow"] == "GET, HEAD, OPTIONS"
    assert wrong.get_json()["error"] == f"DELETE is not allowed on /api/jobs/{'0' * 32}; allowed: GET, HEAD, OPTIONS"
    assert app.get("/nothing-here").status_code == 404  # the page's routes keep Flask's own


def web_memory(stack) -> int:
    """Resident bytes of the web tier: gunicorn's arbiter and its worker processes."""
    import os

    arbiter = stack.processes["web"].pid
    pids = [arbiter] + [int(p) for p in os.listdir("/proc") if p.isdigit() and _parent(int(p)) == arbiter]
    return sum(_rss(pid) for pid in pids)


def _parent(pid: int) -> int:
    try:
        return int(open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return -1


def _rss(pid: int) -> int:
    try:
        return int(open(f"/proc/{pid}/statm").read().split()[1]) * 4096
    except OSError:
        return 0


def test_twenty_concurrent_50_mb_requests_leave_the_web_tiers_memory_bounded(local_aws, tmp_path):
    """Requests are spooled to disk by the form parser and each file is checked from its header:
    the web tier never holds a request in memory (a refused 100 MB upload took the old one from 90
    to 191 MB)."""
    from concurrent.futures import ThreadPoolExecutor

    from daas.stack import Stack

    settings = make_settings(local_aws, tmp_path)
    with Stack(settings, log_dir=tmp_path / "logs") as stack:
        url = stack.start_web()
        requests.get(f"{url}/", timeout=10)
        before, peak, done = web_memory(stack), 0, []
        big = b"\xff\xd8\xff\xe0" + bytes(settings.max_image_bytes)  # each file is over the 10 MB limit

        def post(i: int) -> int:
            files = [("images", (f"{i}-{n}.jpg", big)) for n in range(5)]  # 50 MB
            return requests.post(f"{url}/api/jobs", files=files, timeout=120).status_code

        with ThreadPoolExecutor(20) as pool:
            futures = [pool.submit(post, i) for i in range(20)]
            while not all(f.done() for f in futures):
                peak = max(peak, web_memory(stack))
                time.sleep(0.05)
            done = [f.result() for f in futures]
    assert done == [413] * 20
    assert peak - before < 100 * 1024 * 1024, f"the web tier grew by {(peak - before) >> 20} MB"


def test_the_web_tiers_worker_processes_end_with_their_arbiter(local_aws, tmp_path):
    """Killed arbiter, no orphans (as systemd's cgroup kill on AWS): an orphaned worker kept a
    listening socket whose queued connections were reset when it exited, up to 70 s later
    (daas.serving.die_with_arbiter)."""
    import os
    import signal

    from daas.stack import Stack
    from tests.conftest import wait_for

    settings = make_settings(local_aws, tmp_path)
    with Stack(settings, log_dir=tmp_path / "logs") as stack:
        stack.start_web()
        arbiter = stack.processes["web"].pid
        workers = wait_for(lambda: [int(p) for p in os.listdir("/proc") if p.isdigit() and _parent(int(p)) == arbiter],
                           30, "the web tier's worker processes")
        os.kill(arbiter, signal.SIGKILL)
        stack.processes["web"].wait()
        killed = time.monotonic()
        wait_for(lambda: not [pid for pid in workers if _alive(pid)], 10, "the workers to end")
        # At once: an orphan would notice its parent gone only at its next loop, and then finish
        # its requests first (up to the graceful timeout).
        assert time.monotonic() - killed < 0.9


def test_a_second_quit_signal_does_not_re_enter_the_quick_stop():
    """A terminal's Ctrl-C reaches a gunicorn worker and its arbiter, which then sends the worker
    SIGQUIT: gunicorn's handler, entered again while it held its thread pool's lock, deadlocked
    the worker (daas.serving.quit_once)."""
    import os
    import signal

    from daas.serving import quit_once

    handled = []

    def handle_quit(signum, frame) -> None:  # gunicorn's, with the arbiter's SIGQUIT arriving inside
        handled.append(signum)
        if len(handled) == 1:
            os.kill(os.getpid(), signal.SIGQUIT)
            time.sleep(0.05)

    saved = {signum: signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGQUIT)}
    try:
        for signum in saved:
            signal.signal(signum, quit_once(handle_quit))
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.05)
    finally:
        for signum, handler in saved.items():
            signal.signal(signum, handler)
    assert handled == [signal.SIGINT]


def _alive(pid: int) -> bool:
    """Running, not a zombie waiting to be reaped."""
    try:
        return open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False
