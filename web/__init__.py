"""The web tier: a Flask app factory (upload form, REST API, the original synchronous contract)."""
from __future__ import annotations

from flask import Flask, Response, jsonify, request
from werkzeug.exceptions import HTTPException
from werkzeug.middleware.proxy_fix import ProxyFix

from daas import config

# Multipart's own bytes per file (boundary line, part headers with the file name): the whole-request
# cap allows for them, so that max_files images of max_image_bytes each always fit.
PART_OVERHEAD = 2048

# Every response: the form keeps the API key in localStorage, so only our own scripts may run on
# the page (no inline code: it lives in web/static), nothing may frame it, and no URL leaks out in a
# Referer. blob: images are the thumbnails and the timeline's plot, fetched with the key.
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' blob:; object-src 'none'; "
                               "base-uri 'none'; frame-ancestors 'none'; form-action 'self'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
}


def max_request_bytes(settings: config.Settings) -> int:
    """The whole-request cap: max_files images of max_image_bytes each, and their multipart headers."""
    return settings.max_files * (settings.max_image_bytes + PART_OVERHEAD)


def create_app(settings: config.Settings | None = None) -> Flask:
    app = Flask(__name__)
    settings = settings or config.load()
    if settings.trusted_proxies:  # behind a load balancer: the client's address, not the balancer's
        n = settings.trusted_proxies
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=n, x_proto=n, x_host=n)
    app.config["DAAS_SETTINGS"] = settings
    # Whole-request cap, checked from Content-Length before the body is read (after the key check
    # and the rate limit's); each image is held to max_image_bytes separately, with its own message.
    app.config["MAX_CONTENT_LENGTH"] = max_request_bytes(settings)
    app.config["MAX_FORM_MEMORY_SIZE"] = 1024 * 1024

    from web import auth, batches, metrics, ops, views

    auth.init_app(app)
    app.register_blueprint(views.bp)
    app.register_blueprint(ops.bp)
    app.register_blueprint(batches.bp)
    metrics.init_app(app)

    app.after_request(add_security_headers)

    @app.errorhandler(413)
    def too_large(_error):
        limit, found = app.config["MAX_CONTENT_LENGTH"], request.content_length
        if found is not None and found <= limit:  # the form parser's own limits, not the total
            return jsonify(error=f"a form field is over {size(app.config['MAX_FORM_MEMORY_SIZE'])} or the "
                                 f"form has over {app.config['MAX_FORM_PARTS']} parts; send images as files"), 413
        found_text = "" if found is None else f"the request is {size(found)}; "  # None: sent chunked
        return jsonify(error=f"{found_text}the limit is {size(limit)} per request ({settings.max_files} images "
                             f"of at most {size(settings.max_image_bytes)} each, with their form headers): "
                             "send fewer or smaller images per request"), 413

    @app.errorhandler(HTTPException)
    def api_error(error: HTTPException):
        """The API answers its errors in JSON, as its routes do (a client parses `error`); the
        page's routes keep Flask's. The 413 above and the rate limit's 429 have their own words."""
        if not request.path.startswith("/api/"):
            return error
        allowed = ", ".join(sorted(getattr(error, "valid_methods", None) or ()))  # a 405's
        if error.code == 404:
            message = f"no job or resource at {request.path}"
        elif allowed:
            message = f"{request.method} is not allowed on {request.path}; allowed: {allowed}"
        else:
            message = error.description
        return auth.error(message, error.code, **({"Allow": allowed} if allowed else {}))

    return app


def add_security_headers(response: Response) -> Response:
    response.headers.update(SECURITY_HEADERS)
    return response


def size(n: int) -> str:
    return f"{n / config.MB:.1f} MB" if n >= config.MB else f"{n / 1024:.1f} KB"


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
