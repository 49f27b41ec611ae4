"""The batch API: classify every image under an S3 prefix (daas.batches)."""
from __future__ import annotations

from flask import Blueprint, current_app, jsonify, request, url_for

from daas import batches, callbacks, jobs
from daas.config import Settings
from web import auth

bp = Blueprint("batches", __name__)


def settings() -> Settings:
    return current_app.config["DAAS_SETTINGS"]


@bp.post("/api/batches")
def create_batch():
    """202 with the batch's id and where to follow it; with "dry_run": 200 with what it would take."""
    cfg, body = settings(), request.get_json(silent=True)
    try:
        batch = batches.new(cfg, body, auth.owner())
        if body.get("dry_run"):
            return jsonify(batches.dry_run(cfg, batch))
        url = body.get("callback_url") or ""
        secret = jobs.callback(cfg, url, auth.api_key()) if url else ""
        batches.create(cfg, {**batch, "callback_url": url})
    except jobs.Rejected as exc:
        return jsonify(error=str(exc)), exc.status
    except Exception as exc:  # the source's listing refused (no such bucket, no permission): say so
        code = getattr(exc, "response", {}).get("Error", {}).get("Code")
        if code in ("NoSuchBucket", "AccessDenied", "403", "404"):
            return jsonify(error=f"the source {body['source']} cannot be listed ({code})"), 400
        raise
    if url:
        callbacks.register(cfg, "batch", batch["batch_id"], url, secret, auth.owner())
    response = jsonify(batch_id=batch["batch_id"], status="listing",
                       output=f"s3://{batch['output']['bucket']}/{batch['output']['prefix']}{batch['batch_id']}/")
    response.headers["Location"] = url_for("batches.get_batch", batch_id=batch["batch_id"])
    return response, 202


def found(batch_id: str):
    return batches.find(settings(), batch_id, auth.owner())


@bp.get("/api/batches/<batch_id>")
def get_batch(batch_id: str):
    batch = found(batch_id)
    if batch is None:
        return jsonify(error=f"no batch with id {batch_id!r}"), 404
    summary = batches.progress(settings(), batch)
    if batch.get("callback_url") and batch["finished"]:
        summary["callback"] = callbacks.outcome(settings(), "batch", batch_id)
    return jsonify(summary)


@bp.delete("/api/batches/<batch_id>")
def cancel_batch(batch_id: str):
    """Cancel: chunks not yet started are skipped; what finished stays in the output."""
    batch = found(batch_id)
    if batch is None:
        return jsonify(error=f"no batch with id {batch_id!r}"), 404
    batches.cancel(settings(), batch)
    return jsonify(batches.progress(settings(), batch))
