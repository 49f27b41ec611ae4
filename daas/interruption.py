"""Spot interruptions and rebalance recommendations (issue 19): a worker leaves before EC2 takes
its instance, and loses nothing.

A worker on EC2 asks its instance metadata service (IMDSv2: a session token, then the two
documents) every IMDS_POLL seconds (daas.config) whether EC2 has sent a spot interruption notice (two minutes
before it stops the instance) or a rebalance recommendation (the instance's capacity pool is at
risk). On either, the worker stops taking messages (daas.lifecycle.Retirement: it cancels its
consumer, and kombu makes a message that a poll still in flight brings back visible at once),
finishes the task in hand (a chunk takes about a second), says goodbye in its heartbeat record
(`leaving`), exits and, as after any retirement, the instance powers off. A solo worker with a
prefetch of one holds no message but the one it runs, so nothing waits for a visibility timeout:
the rest of the backlog is already with the other workers, and the controller, which no longer
counts a worker that is leaving (daas.observed), launches replacements if the backlog needs them.

DAAS_IMDS_ENDPOINT names the service: EC2 workers get http://169.254.169.254 (daas.providers);
locally it is empty (no watching), and tests serve one on loopback.
"""
from __future__ import annotations

import logging
import urllib.error
import urllib.request
from typing import Callable

from daas.config import IMDS_TOKEN_TTL

log = logging.getLogger(__name__)
DOCUMENTS = {"spot interruption notice": "/latest/meta-data/spot/instance-action",
             "rebalance recommendation": "/latest/meta-data/events/recommendations/rebalance"}


def ask(endpoint: str, timeout: float = 2.0) -> str | None:
    """Why the instance should be left now ("spot interruption notice: {...}"), or None."""
    request = urllib.request.Request(f"{endpoint}/latest/api/token", method="PUT",
                                     headers={"X-aws-ec2-metadata-token-ttl-seconds": str(IMDS_TOKEN_TTL)})
    with urllib.request.urlopen(request, timeout=timeout) as answer:
        token = answer.read().decode()
    for why, path in DOCUMENTS.items():
        request = urllib.request.Request(endpoint + path, headers={"X-aws-ec2-metadata-token": token})
        try:
            with urllib.request.urlopen(request, timeout=timeout) as answer:
                return f"{why}: {answer.read().decode()[:200]}"
        except urllib.error.HTTPError as exc:
            if exc.code != 404:  # 404: no such notice (the normal answer)
                raise
    return None


class Watcher:
    """A worker's duty (daas.watchdog runs it every round): ask `ask` whether the worker should
    leave, and remember the first reason given. Two watch a worker on EC2: the instance metadata's
    notices (`ask` here), and the controller's request to retire a worker a steady load no longer
    needs (daas.fleet.retire_request); `source` names which in a log line."""

    def __init__(self, ask: Callable[[], str | None], on_notice: Callable[[str], None], source: str):
        self.ask, self.on_notice, self.source, self.notice = ask, on_notice, source, None

    def check(self) -> None:
        if self.notice is not None:
            return
        try:
            notice = self.ask()
        except Exception as exc:  # the metadata service and S3 rarely fail: try again next round
            log.warning("could not ask %s whether to leave: %r", self.source, exc)
            return
        if notice:
            log.warning("%s: leaving (no new messages; the task in hand is finished)", notice)
            self.notice = notice
            self.on_notice(notice)
