"""A small HTTP client of the service's API (used by the CLI and the benchmarks)."""
from __future__ import annotations

import mimetypes
import re
import time
from pathlib import Path

import requests
from tqdm import tqdm


class ServiceError(RuntimeError):
    """The service refused a request; the message is one line, written for the person at the CLI."""

    def __init__(self, message: str, status: int):
        super().__init__(message)
        self.status = status


class ServiceClient:
    def __init__(self, url: str, key: str = ""):
        self.url = url.rstrip("/")
        self.key = key.strip()
        self.http = requests.Session()
        if self.key:  # a service with DAAS_API_KEYS answers 401 to every upload and job request without it
            self.http.headers["Authorization"] = f"Bearer {self.key}"

    def submit(self, files: list[tuple[str, bytes]]) -> dict:
        parts = [("images", (name, data, mimetypes.guess_type(name)[0] or "application/octet-stream"))
                 for name, data in files]
        return self._call("POST", "/api/jobs", 202, "upload rejected", timeout=300, files=parts)

    def job(self, job_id: str) -> dict:
        return self._call("GET", f"/api/jobs/{job_id}", 200, f"job {job_id} unavailable")

    def create_batch(self, request: dict) -> dict:
        """A batch over an S3 prefix (202), or a dry run's count and bytes (200)."""
        return self._call("POST", "/api/batches", 200 if request.get("dry_run") else 202, "batch refused",
                          timeout=600, json=request)

    def batch(self, batch_id: str) -> dict:
        return self._call("GET", f"/api/batches/{batch_id}", 200, f"batch {batch_id} unavailable")

    def cancel_batch(self, batch_id: str) -> dict:
        return self._call("DELETE", f"/api/batches/{batch_id}", 200, f"batch {batch_id} could not be cancelled")

    def follow_batch(self, batch_id: str, every: float = 1.0) -> dict:
        """Poll a batch until it ends, with a progress bar (images finished of those enqueued so far)."""
        with tqdm(unit="img", desc="batch", disable=None) as bar:
            while True:
                batch = self.batch(batch_id)
                bar.total = batch["enqueued"] if batch["status"] != "listing" else None
                bar.n = batch["done"] + batch["errors"]
                bar.set_postfix(status=batch["status"], errors=batch["errors"], listed=batch["listed"])
                if batch["status"] in ("done", "cancelled"):
                    bar.refresh()
                    return batch
                time.sleep(every)

    def _call(self, method: str, path: str, expected: int, what: str, timeout: float = 60, **kwargs) -> dict:
        """The JSON answer of one request, or ServiceError in words: a refusal (see _check), a
        service that cannot be reached (not running, a wrong --url) or one that does not answer."""
        try:
            response = self.http.request(method, f"{self.url}{path}", timeout=timeout, **kwargs)
        except requests.ConnectionError as exc:
            cause = re.search(r"\[Errno -?\d+\] ([^'\")]+)", str(exc))
            raise ServiceError(f"cannot reach {self.url} ({cause.group(1) if cause else type(exc).__name__}): "
                               "is the service running (`make run`)? Else give its address with --url", 0) from None
        except requests.Timeout:
            raise ServiceError(f"{what}: {self.url} did not answer within {timeout:.0f} s", 0) from None
        self._check(response, expected, what)
        return response.json()

    def _check(self, response: requests.Response, expected: int, what: str) -> None:
        if response.status_code == expected:
            return
        if response.status_code == 401:
            raise ServiceError(unauthorized_message(bool(self.key), self.url), 401)
        try:
            reason = response.json().get("error")
        except ValueError:  # not our JSON: a proxy's error page, say
            reason = response.reason
        raise ServiceError(f"{what} ({response.status_code}): {reason}", response.status_code)

    def classify_files(self, paths: list[Path], batch: int = 50, timeout: float = 600) -> list[dict]:
        """Upload in batches, then follow every job to the end with a progress bar."""
        jobs = []
        with tqdm(total=len(paths), unit="img", desc="classifying", disable=None) as bar:
            for start in range(0, len(paths), batch):
                chunk = paths[start:start + batch]
                jobs.append(self.submit([(p.name, p.read_bytes()) for p in chunk])["job_id"])
            finished: dict[str, dict] = {}
            progress: dict[str, int] = {}
            deadline = time.monotonic() + timeout
            while len(finished) < len(jobs) and time.monotonic() < deadline:
                for job_id in set(jobs) - finished.keys():
                    job = self.job(job_id)
                    progress[job_id] = job["finished"]
                    if job["status"] == "done":
                        finished[job_id] = job
                bar.n = sum(progress.values())
                bar.refresh()
                if len(finished) < len(jobs):
                    time.sleep(0.25)
        return [image for job_id in jobs for image in (finished.get(job_id) or self.job(job_id))["images"]]


def unauthorized_message(key_sent: bool, url: str) -> str:
    """What to do about a 401: the service wants a key, and none or a wrong one was sent."""
    if key_sent:
        return (f"{url} refused the API key (401): check the key in DAAS_API_KEY or --key "
                "against the service's DAAS_API_KEYS")
    return (f"{url} needs an API key (401): set the environment variable DAAS_API_KEY "
            "(or pass --key KEY)")
