"""`GET /metrics`: Prometheus' text format (daas.metrics), behind the API key when keys are on."""
from __future__ import annotations

from flask import Blueprint, Flask, Response, current_app, request

from daas import metrics

bp = Blueprint("metrics", __name__)


def init_app(app: Flask) -> None:
    app.extensions["daas_tick_collector"] = metrics.TickCollector(app.config["DAAS_SETTINGS"])
    app.after_request(count_request)
    app.register_blueprint(bp)


def count_request(response: Response) -> Response:
    # The route's rule, not the path: job ids in paths would make a series per job.
    route = request.url_rule.rule if request.url_rule else "(no route)"
    metrics.requests_total.labels(route=route, method=request.method, status=str(response.status_code)).inc()
    return response


@bp.get("/metrics")
def scrape():
    body, content_type = metrics.exposition(current_app.extensions["daas_tick_collector"])
    return Response(body, content_type=content_type)
