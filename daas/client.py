"""A small HTTP client of the service's API (used by the CLI and the benchmarks)."""
from __future__ import annotations

import mimetypes
import re
import time
from dataclasses import dataclass
from pathlib import Path

import requests
from tqdm import tqdm


class ServiceError(RuntimeError):
    """The service refused a request; the message is one line, written for the person at the CLI.
    status 0: no answer at all; retry_after: the seconds a 429 asked to wait (None: retrying the
    same request cannot help)."""

    def __init__(self, message: str, status: int, retry_after: float | None = None):
        super().__init__(message)
        self.status, self.retry_after = status, retry_after


@dataclass
class Sent:
    """Files sent in one request: the job they became, or why the service refused them."""

    paths: list[Path]
    job_id: str = ""
    error: str = ""


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
        raise ServiceError(f"{what} ({response.status_code}): {reason}", response.status_code,
                           retry_after(response.headers.get("Retry-After")))

    def classify_files(self, paths: list[Path], batch: int = 50, timeout: float = 600) -> list[dict]:
        """Upload in requests of `batch` files, then follow every job to the end with a progress bar:
        each file's result in the order given, with the file's `path`. A request refused as a whole
        does not end the run (see _send), nor does a poll that fails (it is tried again); only a
        missing or wrong key or a service that does not answer do (ServiceError). Images not
        labelled within `timeout` seconds say so in their error."""
        deadline = time.monotonic() + timeout
        with tqdm(total=len(paths), unit="img", desc="classifying", disable=None) as bar:
            sent = [part for start in range(0, len(paths), batch)
                    for part in self._send(paths[start:start + batch], deadline)]
            refused = sum(len(part.paths) for part in sent if part.error)
            jobs = {part.job_id: {} for part in sent if part.job_id}  # job id: its latest state
            while time.monotonic() < deadline:
                for job_id in [job_id for job_id, job in jobs.items() if job.get("status") != "done"]:
                    jobs[job_id] = self._poll(job_id) or jobs[job_id]
                bar.n = refused + sum(job.get("finished", 0) for job in jobs.values())
                bar.refresh()
                if all(job.get("status") == "done" for job in jobs.values()):
                    break
                time.sleep(0.25)
        results = []
        for part in sent:
            images = [unfinished(image, part.job_id, timeout) for image in jobs[part.job_id].get("images", [])] \
                if part.job_id else []
            for index, path in enumerate(part.paths):
                # The service lists a job's images in the order of the files sent.
                image = images[index] if index < len(images) else {
                    "name": path.name, "status": "error",
                    "error": part.error or f"no answer about it from the service within {timeout:g} s"}
                results.append({**image, "path": str(path)})
        return results

    def _poll(self, job_id: str) -> dict | None:
        """A job's state, or None where this poll failed (a web tier restarting, say): the next one retries."""
        try:
            return self.job(job_id)
        except ServiceError as exc:
            if exc.status == 401:
                raise
            return None

    def _send(self, paths: list[Path], deadline: float) -> list[Sent]:
        """Send `paths` as one job. Where the service refuses the request as a whole, a rate limit's
        429 is sent again after its Retry-After (within the deadline); any other refusal (every file
        bad, too many files or bytes, a 503, a 429 for more images than the limit allows at once)
        sends each half on its own, down to single files, so that each bad file gets its own
        answer and the good ones their label. A file that cannot be read is a refusal of its own."""
        refusal = ""
        try:
            files = [(p.name, p.read_bytes()) for p in paths]
        except OSError as exc:  # a permission, a file gone since the scan (read first: requests' errors are OSErrors)
            refusal = f"cannot read the file: {exc.strerror or exc}"
        while not refusal:
            try:
                return [Sent(paths, job_id=self.submit(files)["job_id"])]
            except ServiceError as exc:
                if exc.status in (0, 401):  # no answer, no key: every other request would fail alike
                    raise
                if exc.retry_after is not None and time.monotonic() + exc.retry_after < deadline:
                    time.sleep(exc.retry_after)
                    continue
                refusal = str(exc)
        if len(paths) > 1:
            half = len(paths) // 2
            return self._send(paths[:half], deadline) + self._send(paths[half:], deadline)
        return [Sent(paths, error=refusal)]


def unfinished(image: dict, job_id: str, timeout: float) -> dict:
    """An image still waiting when the CLI stopped waiting: an error saying so, and where to look."""
    if image["status"] in ("done", "error"):
        return image
    return {**image, "error": f"not labelled within {timeout:g} s (still {image['status']}): raise --timeout, "
                              f"or see GET /api/jobs/{job_id}"}


def retry_after(header: str | None) -> float | None:
    """Seconds to wait from a Retry-After header (a whole second at least: "0" would resend at
    once, again and again); None where there is none or it is an HTTP date (ours sends seconds)."""
    try:
        return max(1.0, float(header)) if header else None
    except ValueError:
        return None


def unauthorized_message(key_sent: bool, url: str) -> str:
    """What to do about a 401: the service wants a key, and none or a wrong one was sent."""
    if key_sent:
        return (f"{url} refused the API key (401): check the key in DAAS_API_KEY or --key "
                "against the service's DAAS_API_KEYS")
    return (f"{url} needs an API key (401): set the environment variable DAAS_API_KEY "
            "(or pass --key KEY)")
