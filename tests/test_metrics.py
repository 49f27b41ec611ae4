"""`GET /metrics` of a running web tier (two gunicorn processes): parsed by prometheus_client's own
parser, with its counters moving as images flow through a worker (issue 20)."""
from __future__ import annotations

import io
import subprocess
import sys

import requests
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

from daas.stack import Stack, child_env
from tests.conftest import make_settings, skimage_photo, wait_for


def scrape(url: str, **kwargs) -> dict[tuple, float]:
    """{(sample name, sorted labels): value} of one scrape."""
    response = requests.get(f"{url}/metrics", timeout=10, **kwargs)
    assert response.status_code == 200, response.text
    assert response.headers["Content-Type"].startswith("text/plain")
    return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(response.text) for sample in family.samples}


def moved(before: dict, after: dict, name: str, **labels) -> float:
    key = (name, tuple(sorted(labels.items())))
    return after.get(key, 0.0) - before.get(key, 0.0)


def damaged_jpeg() -> bytes:
    buffer = io.BytesIO()
    Image.effect_noise((400, 400), 60).convert("RGB").save(buffer, format="JPEG")
    return buffer.getvalue()[:1500]  # a readable header, then nothing: the worker's decode fails


def test_metrics_count_requests_images_and_stages_across_the_web_processes(local_aws, tmp_path):
    settings = make_settings(local_aws, tmp_path, web_workers=2, scale_interval=1.0, scale_max=1)
    with Stack(settings, log_dir=tmp_path / "logs") as stack:
        url = stack.start_web()
        stack.start_worker()
        stack.start_controller()
        before = scrape(url)
        files = [("images", (f"coffee{i}.png", skimage_photo("coffee.png"))) for i in range(5)]
        files.append(("images", ("cut.jpg", damaged_jpeg())))
        job = requests.post(f"{url}/api/jobs", files=files, timeout=60).json()
        assert job["queued"] == 6

        def counted() -> dict | None:
            after = scrape(url)
            return after if moved(before, after, "daas_images_classified_total", outcome="error") == 1 and \
                moved(before, after, "daas_images_classified_total", outcome="done") == 5 else None

        after = wait_for(counted, 120, "the six results counted in /metrics")
        assert moved(before, after, "daas_images_accepted_total") == 6
        # The five labelled images' timings, from upload to label.
        for stage in ("queue", "fetch", "decode", "forward", "store"):
            assert moved(before, after, "daas_image_stage_seconds_count", stage=stage) == 5
            assert moved(before, after, "daas_image_stage_seconds_sum", stage=stage) > 0
        assert moved(before, after, "daas_http_requests_total", route="/api/jobs", method="POST", status="202") == 1
        assert moved(before, after, "daas_http_requests_total", route="/metrics", method="GET", status="200") >= 1

        # The autoscaler's latest tick (read at most every 5 s): the worker it counts, the queue drained
        def drained() -> dict | None:
            scraped = scrape(url)
            return scraped if (scraped.get(("daas_workers", (("state", "running"),))) == 1
                               and scraped.get(("daas_queue_messages", (("state", "visible"),))) == 0) else None

        ticked = wait_for(drained, 60, "the tick's gauges")
        assert ticked[("daas_launch_refused", ())] == 0
        # The controller's counters are the controller's alone: not zeros in the web tier's answer.
        assert not {name for name, _ in ticked if name.startswith(("daas_workers_launched", "daas_callbacks"))}
        assert 0 <= ticked[("daas_autoscaler_tick_age_seconds", ())] < 60

        # The controller's own: nothing launched (its one worker was started by hand), nothing given up.
        controller = wait_for(lambda: (c := scrape(f"http://127.0.0.1:{settings.controller_metrics_port}")).get(
            ("daas_workers", (("state", "running"),))) == 1 and c, 30, "the controller's metrics with its tick")
        for counter in ("daas_workers_launched_total", "daas_workers_retired_total", "daas_launch_refusals_total",
                        "daas_dead_letter_images_total"):
            assert controller[(counter, ())] == 0

        # A second web tier from the same folder and port is refused in one line, and the running
        # one keeps its counters (it would have emptied their folder, and shared the port).
        second = subprocess.run([sys.executable, "-m", "daas", "web"], env=child_env(settings), capture_output=True,
                                text=True, timeout=60)
        assert second.returncode == 1 and second.stderr.strip().splitlines() == [
            f"daas web: a web tier from {settings.state_dir} already serves port {settings.web_port} (a `make run` "
            "still running?); stop it, or set DAAS_WEB_PORT to another port"], second.stderr
        assert scrape(url)[("daas_images_accepted_total", ())] == 6
