"""What `daas up` does while the stack runs: it supervises its processes as systemd does on AWS.

Every half second it restarts a process that exited (a crash loop stops `up`), and it restarts a
process that stopped making progress though it is still alive:

- the controller or beat, when the autoscaler has not ticked for 3 intervals (daas.health names
  which of the two is at fault; checked every PROBE_EVERY seconds: two GETs of the records);
- the web tier or Flower, when they have not answered an HTTP probe for PROBE_PATIENCE seconds.

Workers are not its children: each one's watchdog ends it when it stalls, and the controller ends
those that stop beating (daas.fleet). It also keeps the logs from growing without bound.
"""
from __future__ import annotations

import logging
import os
import shutil
import signal
import time
import urllib.error
import urllib.request
from pathlib import Path

from botocore.exceptions import BotoCoreError, ClientError

from daas import health
from daas.config import (LOG_CHECK_EVERY, PROBE_EVERY, PROBE_FAILURES, PROBE_PATIENCE, PROBE_TIMEOUT,
                         STARTUP_GRACE)
from daas.stack import Stack

log = logging.getLogger(__name__)
LOG_ROTATE_BYTES = 64 * 1024 * 1024


class Supervisor:
    def __init__(self, stack: Stack, probes: dict[str, str]):
        """`probes`: {process name: URL that answers while it is alive}."""
        self.stack, self.probes = stack, probes
        self.failures = dict.fromkeys(probes, 0)
        self.started = dict.fromkeys(stack.processes, time.monotonic())
        self.next_probe = self.next_log_check = 0.0

    def step(self) -> list[str]:
        """One round: what it did, as sentences (empty when all is well)."""
        restarted = self.stack.restart_exited()
        for name, _ in restarted:
            self.started[name] = time.monotonic()
        done = [f"{name} exited with code {code}; restarted it (see its log)" for name, code in restarted]
        done += self.restart_stalled()
        if time.monotonic() >= self.next_log_check:
            self.next_log_check = time.monotonic() + LOG_CHECK_EVERY
            rotate_logs(self.stack.log_dir)
        return done

    def restart_stalled(self) -> list[str]:
        stalled = []
        if time.monotonic() >= self.next_probe:
            self.next_probe = time.monotonic() + PROBE_EVERY
            fault = control_plane_fault(self.stack.settings)
            if fault and fault[0] in self.stack.processes and self.past_grace(fault[0]):
                stalled.append((fault[0], fault[1]))
            for name, url in self.probes.items():
                self.failures[name] = 0 if answers(url) else self.failures[name] + 1
                if self.failures[name] >= probe_failures(name) and self.past_grace(name):
                    stalled.append((name, f"it did not answer {url} {self.failures[name]} times in a row"))
        for name, why in stalled:
            self.kill(name)
        return [f"{name} stalled ({why}); restarting it" for name, why in stalled]

    def past_grace(self, name: str) -> bool:
        return time.monotonic() - self.started.get(name, 0.0) > STARTUP_GRACE

    def kill(self, name: str) -> None:
        """SIGKILL (a stopped or hung process takes nothing else); the next round restarts it."""
        process = self.stack.processes[name]
        try:
            os.kill(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        process.wait()
        self.failures[name] = 0
        self.started[name] = time.monotonic()


def control_plane_fault(settings) -> tuple[str, str] | None:
    """daas.health's verdict; None while the endpoint holding the records does not answer (the
    endpoint is a supervised process too: restarting the controller would not help)."""
    try:
        return health.problem(settings)
    except (BotoCoreError, ClientError) as exc:
        log.warning("could not read the control plane's records: %r", exc)
        return None


def probe_failures(name: str) -> int:
    """Failed probes in a row after which the process `name` is restarted."""
    return max(PROBE_FAILURES, round(PROBE_PATIENCE.get(name, 0.0) / PROBE_EVERY))


def answers(url: str) -> bool:
    """Whether an HTTP server answers at `url` (any status: a 503 is a live server saying no)."""
    try:
        with urllib.request.urlopen(url, timeout=PROBE_TIMEOUT):
            return True
    except urllib.error.HTTPError:
        return True
    except OSError:
        return False


def rotate_logs(log_dir: Path | None, limit: int = LOG_ROTATE_BYTES) -> None:
    """Copy a log past `limit` to `<name>.1` and empty it in place: its writers keep their open,
    append-mode file and write on at its new end."""
    for path in (log_dir.glob("*.log") if log_dir else ()):
        if path.stat().st_size > limit:
            shutil.copyfile(path, path.with_name(path.name + ".1"))
            os.truncate(path, 0)
