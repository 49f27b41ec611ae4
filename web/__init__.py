"""The web tier: a Flask app factory (upload form, REST API, the original synchronous contract)."""
from __future__ import annotations

from flask import Flask, jsonify, request
from werkzeug.middleware.proxy_fix import ProxyFix

from daas import config


def create_app(settings: config.Settings | None = None) -> Flask:
    app = Flask(__name__)
    settings = settings or config.load()
    if settings.trusted_proxies:  # behind a load balancer: the client's address, not the balancer's
        n = settings.trusted_proxies
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=n, x_proto=n, x_host=n)
    app.config["DAAS_SETTINGS"] = settings
    # Whole-request cap; each image is held to max_image_bytes separately, with its own message.
    app.config["MAX_CONTENT_LENGTH"] = settings.max_image_bytes * 50
    app.config["MAX_FORM_MEMORY_SIZE"] = 1024 * 1024

    from web import auth, ops, views

    auth.init_app(app)
    app.register_blueprint(views.bp)
    app.register_blueprint(ops.bp)

    @app.errorhandler(413)
    def too_large(_error):
        limit = app.config["MAX_CONTENT_LENGTH"] // (1024 * 1024)
        return jsonify(error=f"the upload is over {limit} MB in total; send fewer or smaller images "
                             f"per request (at most {settings.max_image_bytes // (1024 * 1024)} MB each)"), 413

    @app.errorhandler(404)
    def not_found(error):
        if request.path.startswith("/api/"):
            return jsonify(error=f"no job or resource at {request.path}"), 404
        return error

    return app


def warm_up(settings: config.Settings) -> None:
    """Make a web worker process ready before its first request: its reply queue and listener,
    its AWS clients (botocore parses their service models then) and its broker connection.
    Measured: the first upload of a fresh process took 5 s on the bench machine without this."""
    from daas import aws, replies
    from daas.celery_app import app as celery

    replies.for_settings(settings).queue_url()
    for service in ("s3", "sqs"):
        aws.client(service, settings)
    with celery.producer_or_acquire() as producer:
        producer.channel.sqs()  # kombu's own SQS client and its queue cache
