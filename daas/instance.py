"""A worker instance's consuming processes (issue 19): every core works.

`python -m daas worker` on an instance runs DAAS_WORKER_PROCESSES solo workers (0, the default:
PROCESSES_PER_CORE per vCPU), each started as `python -m daas worker --processes 1` and kept here:

- each child is a whole worker: its own node name (`<stack>-worker-<pid>@<instance>`), heartbeat
  record, watchdog and retirement (daas.lifecycle);
- a child that fails (a crash, a stall: exit 75, a kill) is started again, at most RESTARTS times in
  RESTART_WINDOW seconds; then this process exits 1 and systemd's own limit takes over;
- a child that retires (idle, or past its lifetime: exit 0) is not started again; when the last has
  retired, this process runs DAAS_POWEROFF_COMMAND, once. Children never do: one idle child must not
  power off the instance under its busy siblings;
- SIGTERM (systemd stopping the unit) is passed on to every child, each shuts down warm, and this
  process waits for them;
- systemd hears from this process only (READY=1 once the children are started, WATCHDOG=1 while it
  supervises); the children's own stalls end them, and they are restarted.

Why 4 per core: the bench's solo workers wait on S3 and SQS for part of each task; 3 and 4 per core
were fastest and within the noise of each other (README, Performance: workers per core), and a
process costs about 160 MB at rest on OpenVINO (a c7i.large, 2 vCPUs and 4 GiB, runs 8).
Why 1 per core where the model runs on a GPU: there a process is bound by decoding on its core
(`python -m daas bench gpu` on an H200 with 16 cores: 70-105 images/s a process, rising in step
from 1 to 15 processes with the GPU a tenth busy), and each holds torch (579 MB resident measured
on CPU) and a CUDA context: four times as many would add memory, not images.
"""
from __future__ import annotations

import logging
import os
import shlex
import signal
import subprocess
import sys
import time

from daas import config, runtimes
from daas.watchdog import notify

log = logging.getLogger(__name__)
PROCESSES_PER_CORE = 4
PROCESSES_PER_CORE_ON_GPU = 1
RESTARTS, RESTART_WINDOW = 5, 600.0  # as the unit's StartLimitBurst / StartLimitIntervalSec


def processes(cfg: config.Settings) -> int:
    """How many consuming processes this machine runs."""
    if cfg.worker_processes:
        return cfg.worker_processes
    per_core = PROCESSES_PER_CORE_ON_GPU if runtimes.resolve(cfg)[1] == "cuda" else PROCESSES_PER_CORE
    return per_core * (os.cpu_count() or 1)


class Instance:
    def __init__(self, cfg: config.Settings, count: int):
        self.cfg, self.count = cfg, count
        self.children: dict[int, subprocess.Popen] = {}  # slot: process
        self.retired: set[int] = set()
        self.restarts: list[float] = []
        self.stopping = False
        # The children must not power off, nor talk to systemd: both are this process's.
        self.env = {**os.environ, "DAAS_POWEROFF_COMMAND": ""}
        self.env.pop("NOTIFY_SOCKET", None)

    def start(self, slot: int) -> None:
        self.children[slot] = subprocess.Popen([sys.executable, "-m", "daas", "worker", "--processes", "1"],
                                               env=self.env)
        log.info("worker process %d of %d started (pid %d)", slot + 1, self.count, self.children[slot].pid)

    def stop(self, *_) -> None:
        self.stopping = True
        for child in self.children.values():
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)

    def check(self) -> int | None:
        """Restart failed children, note retired ones; the exit code once this process is done."""
        for slot, child in list(self.children.items()):
            code = child.poll()
            if code is None or slot in self.retired:
                continue
            if code == 0 or self.stopping:
                self.retired.add(slot)
                log.info("worker process %d (pid %d) ended (exit %d)", slot + 1, child.pid, code)
                continue
            now = time.monotonic()
            self.restarts = [at for at in self.restarts if now - at < RESTART_WINDOW] + [now]
            if len(self.restarts) > RESTARTS:
                log.error("worker processes failed %d times within %.0f s: giving up", len(self.restarts),
                          RESTART_WINDOW)
                self.stop()
                return 1
            log.warning("worker process %d (pid %d) failed (exit %d): starting it again", slot + 1, child.pid, code)
            self.start(slot)
        return 0 if len(self.retired) == self.count else None

    def run(self) -> int:
        signal.signal(signal.SIGTERM, self.stop)
        signal.signal(signal.SIGINT, self.stop)
        for slot in range(self.count):
            self.start(slot)
        notify("READY=1")
        code = None
        while code is None:
            time.sleep(0.5)
            notify("WATCHDOG=1")
            code = self.check()
        for child in self.children.values():
            child.wait()
        if code == 0 and not self.stopping and self.cfg.poweroff_command:
            log.info("every worker process retired: powering off: %s", self.cfg.poweroff_command)
            subprocess.run(shlex.split(self.cfg.poweroff_command), check=False)
        return code


def run(cfg: config.Settings, count: int) -> int:
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s: %(levelname)s/instance %(process)d] %(message)s")
    log.info("running %d worker processes (DAAS_WORKER_PROCESSES=%d, %d cores)", count, cfg.worker_processes,
             os.cpu_count() or 1)
    return Instance(cfg, count).run()
