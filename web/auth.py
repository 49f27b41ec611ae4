"""Who may spend compute: API keys (DAAS_API_KEYS) and the rate limit (DAAS_RATE_LIMIT).

With keys set, every upload, job and ops route wants `Authorization: Bearer <key>`; no key or a
wrong one gets 401 with a message. The upload form asks for the key once and keeps it in the
browser (localStorage), sending it as that header; the Content-Security-Policy of every response
(web/__init__.py) lets no script but ours run on the page. A cross-site form post cannot set the
header (and no CORS header allows a script to), so it cannot spend compute. The key check and the
rate limit's first check (`admit`) both answer before a request's body is read. Pages themselves
(the form, the timeline's page) and /healthz stay open: they show nothing and classify nothing.
"""
from __future__ import annotations

import hashlib
import hmac
import math

from flask import Flask, Response, current_app, g, jsonify, request

from daas.ratelimit import RateLimiter

# Open: pages that show and classify nothing. Every other route wants the key, a route added later too.
OPEN = {"service.index", "service.healthz", "ops.timeline_page", "static", None}  # None: no such route (404)


class RateLimited(Exception):
    def __init__(self, retry_after: float, per_minute: int, images: int):
        self.retry_after, self.per_minute, self.images = retry_after, per_minute, images
        super().__init__(self.message())

    def message(self) -> str:
        if math.isinf(self.retry_after):
            return (f"{self.images} images in one request is more than this service's limit of "
                    f"{self.per_minute} images per minute: send fewer per request")
        return (f"rate limit of {self.per_minute} images per minute reached: retry in "
                f"{math.ceil(self.retry_after)} s")


def init_app(app: Flask) -> None:
    settings = app.config["DAAS_SETTINGS"]
    app.extensions["daas_api_keys"] = settings.api_key_set
    if settings.rate_limit > 0:
        app.extensions["daas_rate_limiter"] = RateLimiter(settings, settings.rate_limit)
    app.before_request(check_key)
    app.register_error_handler(RateLimited, too_many)


def error(message: str, status: int, **headers) -> Response:
    """JSON for the API, plain text for the original /classify contract."""
    if request.path.startswith("/api/") or request.path.startswith("/ops/"):
        response = jsonify(error=message)
    else:
        response = Response(message + "\n", mimetype="text/plain")
    response.status_code = status
    response.headers.update(headers)
    return response


def check_key() -> Response | None:
    keys = current_app.extensions["daas_api_keys"]
    if not keys or request.endpoint in OPEN:
        return None
    scheme, _, key = request.headers.get("Authorization", "").partition(" ")
    challenge = {"WWW-Authenticate": 'Bearer realm="daas"'}
    if scheme.lower() != "bearer" or not key.strip():
        return error("this service needs an API key: send it as the header 'Authorization: Bearer <key>'",
                     401, **challenge)
    if not any(hmac.compare_digest(key.strip().encode(), known.encode()) for known in keys):
        return error("that API key is not valid for this service", 401, **challenge)
    g.api_key = key.strip()
    return None


def client_id() -> str:
    """Who is calling: the API key, or the client's address where the service is open."""
    return getattr(g, "api_key", None) or f"address:{request.remote_addr}"


def api_key() -> str:
    """The API key the request presented ("" where the service is open): its callbacks' secret."""
    return getattr(g, "api_key", None) or ""


def owner() -> str:
    """Who owns the jobs this request creates, and may read them: the sha256 of its API key (a
    manifest in the bucket never holds a key); "" where the service is open."""
    key = getattr(g, "api_key", None)
    return hashlib.sha256(key.encode()).hexdigest() if key else ""


def admit() -> None:
    """Before a request's body is read: a caller whose bucket cannot hold even one image is refused
    (429) at once, so that a caller over its limit never gets its upload parsed and spooled to disk.
    (The key check, a before_request hook, comes earlier still.)"""
    limiter = current_app.extensions.get("daas_rate_limiter")
    if limiter is None:
        return
    wait = limiter.wait(client_id(), 1)
    if wait:
        raise RateLimited(wait, limiter.per_minute, 1)


def spend(images: int) -> None:
    """Count `images` against the caller's rate limit; raises RateLimited when over it."""
    limiter = current_app.extensions.get("daas_rate_limiter")
    if limiter is None or images == 0:
        return
    wait = limiter.take(client_id(), images)
    if wait:
        raise RateLimited(wait, limiter.per_minute, images)


def too_many(exc: RateLimited) -> Response:
    retry = {} if math.isinf(exc.retry_after) else {"Retry-After": str(math.ceil(exc.retry_after))}
    return error(exc.message(), 429, **retry)
