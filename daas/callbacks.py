"""Completion callbacks: a job's or batch's summary POSTed to the `callback_url` its creator gave.

The body is the summary as JSON (the job's or batch's status document, as GET returns it); the
header `X-Daas-Signature: sha256=<hex>` is HMAC-SHA256 over the body's bytes with the creator's
signing secret, `signing_secret(api key)` (so a receiver can check a callback without holding the
API key itself; where the service has no keys, DAAS_CALLBACK_SECRET takes the key's place). A
callback that fails (no answer, a non-2xx) is tried again with doubling waits (1, 2, 4 ... 60 s)
for up to DAAS_CALLBACK_TIMEOUT seconds of waiting; the outcome is recorded, and GET of the job or batch shows
it under `callback`.

A URL must be http(s) and resolve only to public addresses: loopback, link-local (the instance
metadata service at 169.254.169.254), private and reserved ranges are refused when the request
arrives and again before each attempt (a name may resolve elsewhere later), unless
DAAS_CALLBACK_ALLOW_PRIVATE is set. Redirects are not followed.

State, in the output bucket: `callbacks/pending/<kind>-<id>.json` until an outcome is known (the
controller's batch tick delivers it once its job or batch has finished, on its own threads, and a
restarted controller picks up what is still pending), then `callbacks/outcome/<kind>-<id>.json`.
"""
from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
import logging
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlsplit

import requests

from daas import storage
from daas.aws import client
from daas.config import CALLBACK_ATTEMPT_TIMEOUT, CALLBACK_FIRST_WAIT, CALLBACK_LONGEST_WAIT, Settings

log = logging.getLogger(__name__)

SIGNATURE_HEADER = "X-Daas-Signature"
PENDING, OUTCOME = "callbacks/pending/", "callbacks/outcome/"


class Refused(ValueError):
    """A callback URL the service will not call; the message says why."""


def signing_secret(key: str) -> str:
    """The secret that signs the callbacks of an API key (or of DAAS_CALLBACK_SECRET): derived
    from it, so the receiver holds no credential that spends compute."""
    return hmac.new(key.encode(), b"daas-callback-v1", hashlib.sha256).hexdigest()


def signature(secret: str, body: bytes) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def secret_for(settings: Settings, api_key: str) -> str:
    """The signing secret of a request's callbacks; Refused where there is nothing to sign with."""
    key = api_key or settings.callback_secret
    if not key:
        raise Refused("callbacks are signed with the API key's secret, and this service has no API keys: "
                      "set DAAS_CALLBACK_SECRET (or DAAS_API_KEYS) to use callback_url")
    return signing_secret(key)


def check_url(settings: Settings, url: object) -> str:
    """`url` if the service may call it; Refused (with why) otherwise."""
    parts = urlsplit(url) if isinstance(url, str) and len(url) <= 2000 else None
    if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
        raise Refused(f"callback_url must be an http:// or https:// URL, got {str(url)[:200]!r}")
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
        addresses = {info[4][0] for info in socket.getaddrinfo(parts.hostname, port, proto=socket.IPPROTO_TCP)}
    except (OSError, ValueError) as exc:
        raise Refused(f"callback_url's host {parts.hostname!r} does not resolve: {exc}") from None
    if not settings.callback_allow_private:
        for address in sorted(addresses):
            ip = ipaddress.ip_address(address.split("%")[0])
            if not ip.is_global:
                raise Refused(f"callback_url's host {parts.hostname!r} resolves to {address}, a loopback, "
                              "link-local or private address: the service calls only public addresses "
                              "(DAAS_CALLBACK_ALLOW_PRIVATE allows others)")
    return url


def register(settings: Settings, kind: str, item_id: str, url: str, secret: str, owner: str) -> None:
    """Remember to call `url` once the job or batch `item_id` has finished."""
    storage.put_json(settings, f"{PENDING}{kind}-{item_id}.json",
         {"kind": kind, "id": item_id, "url": url, "secret": secret, "owner": owner, "created": time.time()})


def outcome(settings: Settings, kind: str, item_id: str) -> dict:
    """What became of a callback: its outcome once known, else {"status": "pending"}."""
    return storage.get_json(settings, f"{OUTCOME}{kind}-{item_id}.json") or {"status": "pending"}


def deliver(settings: Settings, url: str, secret: str, summary: dict, sleep=time.sleep) -> dict:
    """POST `summary` until a 2xx answers, waiting between attempts up to DAAS_CALLBACK_TIMEOUT
    seconds in all (each attempt itself at most CALLBACK_ATTEMPT_TIMEOUT): the outcome."""
    body = json.dumps(summary).encode()
    headers = {"Content-Type": "application/json", SIGNATURE_HEADER: signature(secret, body),
               "User-Agent": "daas-callback/1"}
    waited, wait, attempts, error = 0.0, CALLBACK_FIRST_WAIT, 0, ""
    while True:
        attempts += 1
        try:
            check_url(settings, url)  # again: the name may point elsewhere by now
            answer = requests.post(url, data=body, headers=headers, timeout=CALLBACK_ATTEMPT_TIMEOUT, allow_redirects=False)
            if 200 <= answer.status_code < 300:
                return {"status": "delivered", "url": url, "attempts": attempts, "at": time.time(),
                        "http_status": answer.status_code}
            error = f"the receiver answered {answer.status_code}"
        except (Refused, requests.RequestException) as exc:
            error = str(exc)[:300]
        if waited + wait > settings.callback_timeout:
            return {"status": "failed", "url": url, "attempts": attempts, "at": time.time(), "error": error}
        sleep(wait)
        waited += wait
        wait = min(wait * 2, CALLBACK_LONGEST_WAIT)


_delivering: set[str] = set()
_lock = threading.Lock()
_senders = ThreadPoolExecutor(max_workers=8, thread_name_prefix="daas-callback")


def tick(settings: Settings) -> dict[str, str]:
    """Start delivering the pending callbacks whose job or batch has finished (each on a thread of
    its own: a slow receiver never holds up the controller's tick). Returns {key: what it did}."""
    started = {}
    paginator = client("s3", settings).get_paginator("list_objects_v2")
    for page in paginator.paginate(Bucket=settings.output_bucket, Prefix=PENDING):
        for obj in page.get("Contents", []):
            key = obj["Key"]
            with _lock:
                if key in _delivering:
                    continue
            record = storage.get_json(settings, key)
            summary = record and finished_summary(settings, record)
            if summary:
                with _lock:
                    _delivering.add(key)
                _senders.submit(_deliver_and_record, settings, key, record, summary)
                started[key] = "delivering"
    return started


def finished_summary(settings: Settings, record: dict) -> dict | None:
    """The summary of the record's job or batch once it has finished; None while it runs."""
    from daas import batches, jobs

    if record["kind"] == "job":
        job = jobs.status(settings, record["id"], record["owner"])
        return job if job and job["status"] == "done" else None
    batch = batches.find(settings, record["id"], record["owner"])
    return batches.progress(settings, batch) if batch and batch["finished"] else None


def _deliver_and_record(settings: Settings, key: str, record: dict, summary: dict) -> None:
    try:
        result = deliver(settings, record["url"], record["secret"], summary)
        storage.put_json(settings, f"{OUTCOME}{record['kind']}-{record['id']}.json", result)
        client("s3", settings).delete_object(Bucket=settings.output_bucket, Key=key)
        from daas import metrics

        metrics.callbacks_sent.labels(outcome=result["status"]).inc()
        log.info("callback of %s %s: %s after %d attempts", record["kind"], record["id"], result["status"],
                 result["attempts"])
    except Exception as exc:  # storage down: still pending, the next tick tries again
        log.warning("callback of %s %s: could not record its outcome: %r", record["kind"], record["id"], exc)
    finally:
        with _lock:
            _delivering.discard(key)
