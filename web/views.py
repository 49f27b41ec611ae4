"""HTTP routes. The form, the JSON API and /classify all go through daas.jobs."""
from __future__ import annotations

import time
from pathlib import PurePath

from flask import Blueprint, Response, current_app, jsonify, render_template, request, url_for

from daas import aws, coalesce, jobs, metrics, replies
from web import auth
from daas.config import Settings

bp = Blueprint("service", __name__)


def settings() -> Settings:
    return current_app.config["DAAS_SETTINGS"]


def read_uploads(field: str) -> list[jobs.Upload]:
    """The request's files, counted against the caller's rate limit. Werkzeug's form parser spools
    a large request to temporary files; each is streamed on to S3 from there. A caller already over
    its limit is refused before the parser reads a byte."""
    auth.admit()
    uploads = [jobs.Upload(f.filename or "", f.stream) for f in request.files.getlist(field)]
    auth.spend(len(uploads))
    return uploads


def json_error(message: str, status: int):
    return jsonify(error=message), status


@bp.get("/")
def index():
    return render_template("index.html", max_mb=settings().max_image_bytes // (1024 * 1024),
                           keys_required=bool(settings().api_key_set))


_healthy_until = 0.0


@bp.get("/healthz")
def healthz():
    """200 while this web host can take work: its reply listener runs, its buckets and queue answer
    (checked at most every 10 s); else 503 naming the cause. The load balancer's check: it judges
    only what this host serves. The control plane's state is GET /api/status's (a stalled
    controller must not take every web host out of the balancer)."""
    global _healthy_until
    cfg = settings()
    if not replies.for_settings(cfg).listening():
        return json_error("not ready: this web process's reply listener has stopped", 503)
    if time.monotonic() < _healthy_until:
        return jsonify(ok=True)
    checks = {
        "the input bucket does not answer": lambda: aws.client("s3", cfg).head_bucket(Bucket=cfg.input_bucket),
        "the output bucket does not answer": lambda: aws.client("s3", cfg).head_bucket(Bucket=cfg.output_bucket),
        "the classify queue does not answer": lambda: aws.queue_url(cfg, cfg.queue),
    }
    for cause, check in checks.items():
        try:
            check()
        except Exception as exc:  # any failure means: not ready to take work
            # The route is open and AWS's messages carry account ids, ARNs and bucket names: the
            # caller gets the cause in plain words, the log gets the details.
            current_app.logger.warning("/healthz: %s: %s", cause, exc)
            return json_error(f"not ready: {cause}", 503)
    _healthy_until = time.monotonic() + 10
    return jsonify(ok=True)


@bp.post("/api/jobs")
def create_job():
    try:
        job = jobs.submit(settings(), read_uploads("images"), auth.owner(),
                          callback_url=request.form.get("callback_url", ""), api_key=auth.api_key())
    except jobs.Rejected as exc:
        return json_error(str(exc), exc.status)
    metrics.images_accepted.inc(job["queued"])
    response = jsonify(job)
    response.headers["Location"] = url_for("service.get_job", job_id=job["job_id"])
    return response, 202


@bp.get("/api/jobs/<job_id>")
def get_job(job_id: str):
    """A job, for the API key that created it; to every other caller, as if there were none."""
    job = jobs.status(settings(), job_id, auth.owner())
    if job is None:
        return no_job(job_id)
    return jsonify(job)


@bp.get("/api/jobs/<job_id>/images/<image_id>")
def get_image(job_id: str, image_id: str):
    """One image of a job: where a /classify that timed out sends its client. Where the service is
    open, the requests of one address share jobs (daas.coalesce): strangers behind one NAT would
    see each other's images in the whole job."""
    job = jobs.status(settings(), job_id, auth.owner())
    if job is None:
        return no_job(job_id)
    image = next((image for image in job["images"] if image["id"] == image_id), None)
    if image is None:
        return json_error(f"no image with id {image_id!r} in job {job_id!r}", 404)
    return jsonify(image)


def no_job(job_id: str):
    """An unknown job and another key's job get the same answer: nothing tells them apart."""
    return json_error(f"no job with id {job_id!r}", 404)


@bp.post("/classify")
@bp.post("/")
def classify_sync():
    """The original project's contract: one file in `myfile`, answered `<name>:<label>` as text."""
    uploads = read_uploads("myfile")
    if len(uploads) != 1:
        return text("send exactly one file in the form field 'myfile'", 400)
    try:
        job_id, image, result = coalesce.classify_one(settings(), uploads[0], auth.client_id(), auth.owner())
    except jobs.Rejected as exc:  # the edge checks' reasons name the file already
        name, reason = jobs.display_name(uploads[0].name), str(exc)
        return text(reason if reason.startswith(f"{name}: ") else f"{name}: {reason}", exc.status)
    metrics.images_accepted.inc()  # counted once answered: it was queued, or Rejected above
    stem = PurePath(image["name"]).stem
    if result is None:
        where = url_for("service.get_image", job_id=job_id, image_id=image["id"])
        return text(f"{stem}: no result within {settings().result_timeout:.0f} s; the image stays queued "
                    f"and its result will appear at {where}", 504)
    if result["status"] == "error":
        return text(f"{stem}: {result['error']}", 422)
    return text(f"{stem}:{result['label']}", 200)


def text(body: str, status: int) -> Response:
    return Response(body + ("\n" if status >= 400 else ""), status=status, mimetype="text/plain")

