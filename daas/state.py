"""Files in the state folder (DAAS_STATE_DIR): small JSON records, replaced atomically.

The processes of one host share them (the autoscaler's tick, beat's wake-ups, recent EC2 launches,
the processes `up` started): a reader sees the previous record or the new one, whole, never a
half-written file.
"""
from __future__ import annotations

import json
import os
import threading
from pathlib import Path


def write_json(path: Path, document) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}")  # threads write too
    temporary.write_text(json.dumps(document))
    temporary.replace(path)


def read_json(path: Path, default=None):
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, ValueError):
        return default
