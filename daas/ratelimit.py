"""The rate limit of the web tier (DAAS_RATE_LIMIT images per minute per client): token buckets.

One bucket per client (an API key, or the client's address when the service is open), holding at
most a minute's worth of images and refilled continuously. The buckets live in a SQLite file in
the state folder, so that every web process of the host (gunicorn runs several) spends from the
same one; each check is one short transaction. A full bucket is the same as no bucket, so rows
that have refilled completely are deleted (at most every PRUNE_EVERY seconds per process): the
file holds the clients of the last minute or so, not every client ever seen.
"""
from __future__ import annotations

import hashlib
import math
import sqlite3
import threading
import time
from pathlib import Path

PRUNE_EVERY = 60.0  # seconds between deletions of full buckets, per process: one table scan a minute


def refill(tokens: float, at: float, now: float, per_minute: int) -> float:
    """The bucket's tokens at `now`, `at` being when it held `tokens`."""
    return min(float(per_minute), tokens + (now - at) * per_minute / 60)


def decide(tokens: float, images: int, per_minute: int) -> tuple[float, float]:
    """(tokens left, seconds to wait): spend `images` tokens if there are enough, else wait 0 < s."""
    if images <= tokens:
        return tokens - images, 0.0
    if images > per_minute:
        return tokens, math.inf  # never fits in a minute's allowance
    return tokens, (images - tokens) * 60 / per_minute


class RateLimiter:
    def __init__(self, path: Path, per_minute: int):
        self.path, self.per_minute, self.local = path, per_minute, threading.local()
        self.pruned_at = -math.inf

    def _db(self) -> sqlite3.Connection:
        if getattr(self.local, "db", None) is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(self.path, timeout=10, isolation_level=None)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("CREATE TABLE IF NOT EXISTS buckets (client TEXT PRIMARY KEY, tokens REAL, at REAL)")
            self.local.db = db
        return self.local.db

    def take(self, client: str, images: int, now: float | None = None) -> float:
        """Spend `images` from the client's bucket: 0 if allowed, else the seconds until they fit
        (math.inf if they never do)."""
        now = time.time() if now is None else now
        name = _name(client)
        db = self._db()
        db.execute("BEGIN IMMEDIATE")
        try:
            tokens, wait = decide(self._tokens(db, name, now), images, self.per_minute)
            db.execute("INSERT OR REPLACE INTO buckets VALUES (?, ?, ?)", (name, tokens, now))
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        if now - self.pruned_at >= PRUNE_EVERY:
            self.prune(now)
        return wait

    def wait(self, client: str, images: int = 1, now: float | None = None) -> float:
        """Seconds until `images` would fit in the client's bucket (0: now), spending nothing: the web
        tier asks this before it reads an upload, so a caller over its limit costs no disk."""
        now = time.time() if now is None else now
        return decide(self._tokens(self._db(), _name(client), now), images, self.per_minute)[1]

    def prune(self, now: float) -> int:
        """Delete the buckets that have refilled completely (no row means a full bucket); returns
        how many. Cost: one scan of the table, which holds the clients of about the last minute."""
        self.pruned_at = now
        return self._db().execute("DELETE FROM buckets WHERE tokens + (? - at) * ? / 60.0 >= ?",
                                  (now, self.per_minute, self.per_minute)).rowcount

    def _tokens(self, db: sqlite3.Connection, name: str, now: float) -> float:
        row = db.execute("SELECT tokens, at FROM buckets WHERE client = ?", (name,)).fetchone()
        return refill(*row, now, self.per_minute) if row else float(self.per_minute)


def _name(client: str) -> str:
    return hashlib.sha256(client.encode()).hexdigest()[:32]  # keys are never stored
