"""`python -m daas worker`: a classification worker, a Celery worker on the classify queue.

Its work is daas.pipeline (fetch, decode, classify a chunk of images); its life is daas.lifecycle
(warm-up, heartbeat, the visibility of held messages, the watchdog, retirement and power-off).
"""
from __future__ import annotations

import os
import socket

from daas import aws, config, fleet, instance, lifecycle
from daas.celery_app import app


def node(cfg: config.Settings) -> str:
    """This worker's Celery node name; on EC2 its host part is the instance id (see daas.fleet)."""
    return fleet.node_name(cfg, os.getpid(), cfg.worker_host or socket.gethostname())


def run(register_in: str | None = None, processes: int | None = None) -> int:
    """Run a classification worker until it is stopped or retires; then maybe power off. With more
    than one process (`processes`, else DAAS_WORKER_PROCESSES), run that many and keep them
    (daas.instance)."""
    cfg = config.load()
    count = processes if processes is not None else instance.processes(cfg)
    if count != 1:
        return instance.run(cfg, count)
    aws.ROLE = "worker"
    lifecycle.install(app, cfg, node(cfg), register_in)
    pool = "solo" if cfg.worker_concurrency == 1 else "prefork"
    argv = ["worker", "--queues", cfg.queue, "--pool", pool, "--concurrency", str(cfg.worker_concurrency),
            "--hostname", node(cfg), "--loglevel", "INFO", "--without-mingle", "--without-gossip"]
    argv.append("--task-events" if cfg.events else "--without-heartbeat")
    try:
        app.worker_main(argv)
    except SystemExit as exit_:
        code = exit_.code or 0
    else:
        code = 0
    lifecycle.power_off_if_retired(cfg)
    return int(code)
