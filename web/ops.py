"""The operations view: queue, workers and throughput for the status panel; the scaling timeline."""
from __future__ import annotations

import io
import time

import requests
from flask import Blueprint, Response, current_app, jsonify, render_template, request

from daas import health, timeline

bp = Blueprint("ops", __name__)


def _settings():
    return current_app.config["DAAS_SETTINGS"]


def flower_url() -> str:
    """Flower on the host the browser used to reach us (the web tier and Flower run side by side)."""
    return f"{request.scheme}://{request.host.rsplit(':', 1)[0]}:{_settings().flower_port}"


def images_per_minute(minutes: int = 5) -> list[int] | None:
    """Classified images per minute over the last minutes (oldest first), from Flower's task
    events; None when Flower does not answer (not running, or events turned off)."""
    s = _settings()
    try:
        response = requests.get(f"http://127.0.0.1:{s.flower_port}/api/tasks",
                                params={"taskname": "daas.classify", "state": "SUCCESS", "limit": 20000},
                                auth=(s.flower_user, s.flower_password), timeout=2)
        response.raise_for_status()
        tasks = response.json().values()
    except (requests.RequestException, ValueError):
        return None
    now, counts = time.time(), [0] * minutes
    for task in tasks:
        age = now - (task.get("succeeded") or 0)
        if 0 <= age < minutes * 60:
            # A task classifies a chunk and returns its image count; tasks of older workers, one image.
            result = str(task.get("result") or "")
            counts[minutes - 1 - int(age // 60)] += int(result) if result.isdigit() else 1
    return counts


@bp.get("/api/status")
def status():
    """Queue depth and worker counts as the autoscaler measured them at its latest tick (its record
    in the output bucket, daas.health), whether the control plane works, and throughput."""
    settings = _settings()
    tick = health.read(settings, health.TICK)
    if tick is None:
        return jsonify(error="no autoscaler tick recorded yet: is the controller running?"), 503
    fault = health.diagnose(tick, health.read(settings, health.BEAT), settings.scale_interval, time.time())
    return jsonify({"queue": tick["queue"], "workers": tick["workers"], "provider": tick["provider"],
                    "measured_at": tick["t"], "launch_refused": tick.get("refused") or None,
                    "control_plane": fault[1] if fault else "ok",
                    "images_per_minute": images_per_minute(), "flower_url": flower_url()})


@bp.get("/ops/timeline")
def timeline_page():
    return render_template("timeline.html", minutes=request.args.get("minutes", 10, type=int))


@bp.get("/ops/timeline.png")
def timeline_png():
    minutes = request.args.get("minutes", 10, type=int)
    records = timeline.read(_settings().state_dir, since=time.time() - minutes * 60)
    if not records:
        return Response("no scaling decisions recorded yet: is the controller running?", 404, mimetype="text/plain")
    buffer = io.BytesIO()
    timeline.plot(records, buffer, title=f"daas autoscaling, last {minutes} minutes")
    return Response(buffer.getvalue(), mimetype="image/png", headers={"Cache-Control": "no-store"})
