"""The autoscaler's decision log (JSON lines in the state folder) and its plot."""
from __future__ import annotations

import json
from pathlib import Path

FILE = "timeline.jsonl"
# One record per tick (every 5 s) is about 1.7 MB a day: past this size the file becomes
# timeline.jsonl.1 (replacing the one before), so a service running for months keeps a few days.
ROTATE_BYTES = 4 * 1024 * 1024


def append(state_dir: Path, record: dict, rotate_bytes: int = ROTATE_BYTES) -> None:
    state_dir.mkdir(parents=True, exist_ok=True)
    path = state_dir / FILE
    if path.exists() and path.stat().st_size > rotate_bytes:
        path.replace(path.with_name(FILE + ".1"))
    with open(path, "a") as handle:
        handle.write(json.dumps(record) + "\n")


def read(state_dir: Path, since: float = 0.0) -> list[dict]:
    records = []
    for path in (state_dir / (FILE + ".1"), state_dir / FILE):
        try:
            lines = path.read_text().splitlines()
        except FileNotFoundError:
            continue
        records += [record for record in map(_parse, lines) if record]
    return [r for r in records if r["t"] >= since]


def _parse(line: str) -> dict | None:
    try:  # a line being written as we read has no end yet
        return json.loads(line) if line.strip() else None
    except ValueError:
        return None


def plot(records: list[dict], path, title: str = "daas autoscaling") -> None:
    """Queue depth and workers over time, as a PNG written to `path` (a file name or a file object)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not records:
        raise ValueError("no scaling decisions recorded yet (is the controller running?)")
    t0 = records[0]["t"]
    t = [r["t"] - t0 for r in records]
    fig, queue_ax = plt.subplots(figsize=(9, 4.5))
    queue_ax.plot(t, [r["visible"] for r in records], label="waiting (visible)", color="tab:blue")
    queue_ax.plot(t, [r["in_flight"] for r in records], label="in flight", color="tab:cyan")
    queue_ax.set_xlabel("seconds")
    queue_ax.set_ylabel("messages")
    workers_ax = queue_ax.twinx()
    workers_ax.step(t, [r["running"] for r in records], where="post", label="workers running", color="tab:green")
    workers_ax.step(t, [r["running"] + r["starting"] for r in records], where="post",
                    label="running + starting", color="tab:orange", linestyle="--")
    workers_ax.set_ylabel("workers")
    workers_ax.yaxis.get_major_locator().set_params(integer=True)
    lines = queue_ax.get_legend_handles_labels()
    more = workers_ax.get_legend_handles_labels()
    queue_ax.legend(lines[0] + more[0], lines[1] + more[1], loc="upper right")
    queue_ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110, format="png")
    plt.close(fig)
