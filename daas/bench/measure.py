"""The shared measurement: submit images through the web API, wait for every label, time it from
the results' own clocks."""
from __future__ import annotations

import math
import queue
import threading
import time
from dataclasses import dataclass
from datetime import datetime

from daas.bench.workload import File
from daas.client import ServiceClient


BATCH = 10    # images per POST /api/jobs
POLL_S = 0.5  # how often the client polls each unfinished job, as the web page does


@dataclass
class Run:
    started: float          # time() just before the first upload
    first_label: float      # time() the first result was written
    finished: float         # time() the last result was written (its finished_at)
    latencies: list[float]  # per image: seconds from the start of its upload to its result being written
    results: list[dict]

    @property
    def seconds(self) -> float:
        return self.finished - self.started

    @property
    def images_per_s(self) -> float:
        """End to end: from the first upload to the last label."""
        return len(self.results) / self.seconds

    @property
    def steady_images_per_s(self) -> float:
        """Labels per second once the pipeline is full: from the first label to the last. Filling
        it (the first upload request, the first task) is latency, which p50/p95 report."""
        if len(self.results) < 2 or self.finished <= self.first_label:
            return self.images_per_s  # one label (or one instant) has no steady state
        return (len(self.results) - 1) / (self.finished - self.first_label)


def classify_all(url: str, files: list[File], batch: int = BATCH, poll: float = POLL_S,
                 timeout: float = 600) -> Run:
    """Upload `files` in batches (one thread) while polling every unfinished job (this thread).

    Times come from the results' own `finished_at` (ms, same clock), so the client can poll as
    gently as a browser does: a client polling at 20 Hz would steal CPU from the workers it measures.
    """
    uploaded: queue.Queue = queue.Queue()

    def upload() -> None:
        client = ServiceClient(url)
        for start in range(0, len(files), batch):
            sent = time.time()
            try:
                uploaded.put((client.submit(files[start:start + batch])["job_id"], sent))
            except Exception as exc:  # noqa: BLE001 (handed to the polling thread, which raises it)
                uploaded.put(exc)
                return

    expected_jobs = math.ceil(len(files) / batch)
    started = time.time()
    threading.Thread(target=upload, daemon=True).start()
    client, pending, jobs_seen = ServiceClient(url), {}, 0
    seen: set[str] = set()
    latencies, results, finished, first_label = [], [], started, math.inf
    deadline = started + timeout
    while jobs_seen < expected_jobs or pending:
        while not uploaded.empty():
            item = uploaded.get()
            if isinstance(item, Exception):
                raise item
            pending[item[0]], jobs_seen = item[1], jobs_seen + 1
        for job_id, sent in list(pending.items()):
            job = client.job(job_id)
            for image in job["images"]:
                if image["status"] != "queued" and image["id"] not in seen:
                    seen.add(image["id"])
                    written = datetime.fromisoformat(image["finished_at"]).timestamp()
                    latencies.append(written - sent)
                    results.append(image)
                    finished, first_label = max(finished, written), min(first_label, written)
            if job["status"] == "done":
                del pending[job_id]
        if time.time() > deadline:
            raise TimeoutError(f"{len(results)} of {len(files)} images labelled after {timeout:.0f} s")
        time.sleep(poll)
    failed = [f"{r['name']}: {r['error']}" for r in results if r["status"] != "done"]
    if failed:
        raise RuntimeError(f"{len(failed)} images failed: {'; '.join(failed[:5])}")
    return Run(started, first_label, finished, latencies, results)
