"""Fixtures that run the real service on loopback: a moto server over HTTP, workers, web, controller."""
from __future__ import annotations

import os
import time
import uuid
from pathlib import Path

import pytest
import requests

from daas import aws, config, replies
from daas.stack import Stack, free_port


def skimage_photo(name: str) -> bytes:
    """A real photo shipped with scikit-image (coffee.png, chelsea.png, camera.png, ...)."""
    import skimage

    return (Path(skimage.__file__).parent / "data" / name).read_bytes()


# The session's model cache. An environment variable, not a module global: test modules import this
# file as tests.conftest, a second module beside the one pytest loaded.
MODEL_CACHE_VAR = "DAAS_TESTS_MODEL_CACHE"


@pytest.fixture(scope="session")
def local_aws(tmp_path_factory):
    """One local AWS endpoint (moto in server mode) for the session; tests isolate by stack name."""
    base = config.Settings(aws_port=free_port(), state_dir=tmp_path_factory.mktemp("aws"))
    os.environ[MODEL_CACHE_VAR] = base.model_cache
    stack = Stack(base, log_dir=base.state_dir / "logs")
    stack.start_local_aws()
    yield stack.settings.aws_endpoint
    replies.close_all()  # the reply queues of in-process web apps, while the endpoint still answers
    stack.stop()


def make_settings(local_aws: str, tmp: Path, **overrides) -> config.Settings:
    """Settings of a fresh, isolated stack (own buckets and queues) on the shared endpoint. Stacks
    share the session's model cache, as the workers of one AMI share its export: the first worker
    of the session exports the model, the others find it."""
    values = dict(aws_endpoint=local_aws, aws_port=int(local_aws.rsplit(":", 1)[1]),
                  stack=f"t{uuid.uuid4().hex[:10]}", web_port=free_port(), flower_port=free_port(),
                  state_dir=tmp, idle_timeout=0, model_cache=os.environ.get(MODEL_CACHE_VAR, ""),
                  controller_metrics_port=free_port())
    settings = config.Settings(**{**values, **overrides})
    aws.ensure_resources(settings)
    return settings


def send_from_this_process(settings: config.Settings) -> config.Settings:
    """Point this process's Celery app at the local endpoint, for an in-process app that enqueues: a
    web process reads it from its environment when celeryconfig is imported; here the settings
    come from the test."""
    from daas import broker
    from daas.celery_app import app

    app.conf.update(broker_url=broker.broker_url(settings), broker_transport_options=broker.transport_options(settings))
    return settings


class Service:
    """A running stack: `url` of its web tier, `settings`, and the Stack to start more processes."""

    def __init__(self, stack: Stack, url: str):
        self.stack, self.url, self.settings = stack, url, stack.settings
        self.http = requests.Session()

    def submit(self, files: list[tuple[str, bytes]]) -> requests.Response:
        return self.http.post(f"{self.url}/api/jobs", files=[("images", f) for f in files], timeout=60)

    def wait_job(self, job_id: str, timeout: float = 90) -> dict:
        import time

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            job = self.http.get(f"{self.url}/api/jobs/{job_id}", timeout=30).json()
            if job["status"] == "done":
                return job
            time.sleep(0.2)
        raise AssertionError(f"job {job_id} not done after {timeout} s: {job}")


@pytest.fixture(scope="module")
def service(local_aws, tmp_path_factory):
    """Web tier and one classification worker on a fresh stack; shared by a test module."""
    tmp = tmp_path_factory.mktemp("service")
    settings = make_settings(local_aws, tmp, visibility_timeout=8)
    with Stack(settings, log_dir=tmp / "logs") as stack:
        url = stack.start_web()
        stack.start_worker()
        yield Service(stack, url)


def wait_for(predicate, timeout: float, what: str):
    """Poll `predicate` until it returns something truthy (returned), or fail after `timeout` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.25)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture(autouse=True)
def _no_real_aws_credentials(monkeypatch):
    """Tests only ever talk to the local endpoint; never pick up a developer's AWS profile."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    monkeypatch.delenv("AWS_SESSION_TOKEN", raising=False)
