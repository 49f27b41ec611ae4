"""A small HTTP client of the service's API (used by the CLI and the benchmarks)."""
from __future__ import annotations

import mimetypes
import time
from pathlib import Path

import requests
from tqdm import tqdm


class ServiceClient:
    def __init__(self, url: str):
        self.url = url.rstrip("/")
        self.http = requests.Session()

    def submit(self, files: list[tuple[str, bytes]]) -> dict:
        parts = [("images", (name, data, mimetypes.guess_type(name)[0] or "application/octet-stream"))
                 for name, data in files]
        response = self.http.post(f"{self.url}/api/jobs", files=parts, timeout=300)
        if response.status_code != 202:
            raise RuntimeError(f"upload rejected ({response.status_code}): {response.json().get('error')}")
        return response.json()

    def job(self, job_id: str) -> dict:
        response = self.http.get(f"{self.url}/api/jobs/{job_id}", timeout=60)
        response.raise_for_status()
        return response.json()

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
