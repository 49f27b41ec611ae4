"""The rate limit of the web tier (DAAS_RATE_LIMIT images per minute per client): token buckets.

One bucket per client (an API key, or the client's address when the service is open), holding at
most a minute's worth of images and refilled continuously. The buckets live in a SQLite file in
the state folder, so that every web process of the host (gunicorn runs several) spends from the
same one; each check is one short transaction.
"""
from __future__ import annotations

import hashlib
import math
import sqlite3
import threading
import time
from pathlib import Path


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
        name = hashlib.sha256(client.encode()).hexdigest()[:32]  # keys are never stored
        db = self._db()
        db.execute("BEGIN IMMEDIATE")
        try:
            row = db.execute("SELECT tokens, at FROM buckets WHERE client = ?", (name,)).fetchone()
            tokens = refill(*row, now, self.per_minute) if row else float(self.per_minute)
            tokens, wait = decide(tokens, images, self.per_minute)
            db.execute("INSERT OR REPLACE INTO buckets VALUES (?, ?, ?)", (name, tokens, now))
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        return wait
