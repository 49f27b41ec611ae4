"""The result document stored per image in the output bucket (also what the API returns)."""
from __future__ import annotations

from datetime import datetime, timezone


def _base(job_id: str, image_id: str, name: str, status: str) -> dict:
    return {"id": image_id, "job_id": job_id, "name": name, "status": status,
            "label": None, "score": None, "top5": [], "error": None,
            "finished_at": datetime.now(timezone.utc).isoformat(timespec="milliseconds")}


def done(job_id: str, image_id: str, name: str, prediction, model: str, worker: str,
         timings_ms: dict[str, float]) -> dict:
    return {**_base(job_id, image_id, name, "done"),
            "label": prediction.label, "score": prediction.score,
            "top5": [list(pair) for pair in prediction.top5],
            "model": model, "worker": worker,
            "timings_ms": {stage: round(ms, 2) for stage, ms in timings_ms.items()}}


def error(job_id: str, image_id: str, name: str, message: str) -> dict:
    return {**_base(job_id, image_id, name, "error"), "error": message}


def queued(image_id: str, name: str) -> dict:
    return {"id": image_id, "name": name, "status": "queued", "label": None, "score": None,
            "top5": [], "error": None}
