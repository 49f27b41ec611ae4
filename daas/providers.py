"""Where workers run: local OS processes (the embedded default) or EC2 instances. One interface."""
from __future__ import annotations

import logging
import math
import os
import signal
import socket
import string
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Protocol

from botocore.exceptions import ClientError

from daas import aws, config, ec2fleet, state
from daas.fleet import Worker

log = logging.getLogger(__name__)
WORKER_AMI = Path(__file__).resolve().parent.parent / "worker_ami"
ROLE_TAG, STACK_TAG = "daas:role", "daas:stack"


class Provider(Protocol):
    def counts(self) -> tuple[int, int]:
        """(running, starting) workers of this stack."""

    def launch(self, count: int) -> None:
        """Start `count` more workers."""

    def workers(self) -> list[Worker]:
        """The workers of this stack that are starting or running."""

    def terminate(self, ids: list[str]) -> None:
        """End these workers now (no warm shutdown: they are broken or too old)."""

    def worker_id(self, pid: int, host: str) -> str | None:
        """The id of the worker a heartbeat's node (pid, host) belongs to; None if not one of ours."""


class LocalProvider:
    """Each worker is a `python -m daas worker` process on this machine.

    A worker is tracked by a file `<state>/workers/<pid>`; it counts as starting until its
    `<pid>.ready` file exists (written once it consumes). Any process on the host (the
    controller, the web tier) can count from the files.
    """

    def __init__(self, settings: config.Settings):
        self.settings = settings
        self.folder = settings.state_dir / "workers"
        self.children: dict[int, subprocess.Popen] = {}

        self.host = settings.worker_host or socket.gethostname()

    def _markers(self) -> dict[int, tuple[bool, float]]:
        """{pid: (ready, launched)} of the live workers; markers of dead ones are removed."""
        for pid, child in list(self.children.items()):
            if child.poll() is not None:  # reap it, so that it is not counted as a zombie
                del self.children[pid]
        live = {}
        for marker in self.folder.glob("[0-9]*"):
            if marker.suffix:
                continue
            pid = int(marker.name)
            try:
                launched = marker.stat().st_mtime
            except FileNotFoundError:  # removed meanwhile by another process counting
                continue
            if _alive(pid):
                live[pid] = (marker.with_suffix(".ready").exists(), launched)
            else:
                marker.unlink(missing_ok=True)
                marker.with_suffix(".ready").unlink(missing_ok=True)
        return live

    def counts(self) -> tuple[int, int]:
        ready = [is_ready for is_ready, _ in self._markers().values()]
        return sum(ready), len(ready) - sum(ready)

    def workers(self) -> list[Worker]:
        return [Worker(str(pid), launched) for pid, (_, launched) in self._markers().items()]

    def terminate(self, ids: list[str]) -> None:
        for pid in map(int, ids):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self._markers()  # reaps and unregisters them

    def worker_id(self, pid: int, host: str) -> str | None:
        return str(pid) if host == self.host else None

    def launch(self, count: int) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        logs = self.settings.state_dir / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        for _ in range(count):
            log = open(logs / "workers.log", "ab")
            child = subprocess.Popen([sys.executable, "-m", "daas", "worker", "--processes", "1",
                                      "--register-in", str(self.folder)],
                                     stdout=log, stderr=subprocess.STDOUT, env=os.environ.copy())
            log.close()
            (self.folder / str(child.pid)).touch()  # counted as starting from now on
            self.children[child.pid] = child


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie has exited; only its parent has not reaped it yet
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] != "Z"
    except (FileNotFoundError, IndexError):
        return True


LIVE_STATES = ("pending", "running")


def instance_states(described: dict[str, tuple[str, float]], remembered: dict[str, float],
                    now: float) -> dict[str, tuple[str, float]]:
    """{instance id: (state, launched)} of the live instances: those DescribeInstances lists as
    pending or running, and launches of the last REMEMBER_LAUNCHES seconds (daas.config) it does not
    list yet, counted as pending: EC2's API is eventually consistent, and a describe right after
    RunInstances may miss the new instances."""
    live = {iid: (state, at) for iid, (state, at) in described.items() if state in LIVE_STATES}
    for iid, at in remembered.items():
        if iid not in described and now - at < config.REMEMBER_LAUNCHES:
            live[iid] = ("pending", at)
    return live


THROTTLED = ("RequestLimitExceeded", "Throttling", "ThrottlingException")


class EC2Provider:
    """Workers are EC2 instances booted from the worker AMI, found again by their tags.

    DescribeInstances is asked at most once a scaling tick (the decision, housekeeping and the
    status share the answer): EC2 throttles an account's describes as a whole, and a controller
    that described on every nudge could starve its own launches. While EC2 throttles it anyway,
    the workers are counted from the last answer (and the launches since, see `instance_states`)."""

    def __init__(self, settings: config.Settings):
        self.settings = settings
        self.ec2 = aws.client("ec2", settings)
        # Recent launches, kept on disk so that a restarted controller remembers them too.
        self.launches_file = settings.state_dir / "ec2-launches.json"
        self.answer: tuple[float, dict[str, tuple[str, float]]] | None = None  # (monotonic, described)
        self.lock = threading.Lock()

    def _described(self) -> dict[str, tuple[str, float]]:
        """{instance id: (state, launched)} of every instance of this stack DescribeInstances lists."""
        with self.lock:
            if self.answer and time.monotonic() - self.answer[0] < self.settings.scale_interval:
                return self.answer[1]
        filters = [{"Name": f"tag:{ROLE_TAG}", "Values": ["worker"]},
                   {"Name": f"tag:{STACK_TAG}", "Values": [self.settings.stack]}]
        try:
            described = {instance["InstanceId"]: (instance["State"]["Name"], instance["LaunchTime"].timestamp())
                         for page in self.ec2.get_paginator("describe_instances").paginate(Filters=filters)
                         for reservation in page["Reservations"] for instance in reservation["Instances"]}
        except ClientError as exc:
            if exc.response["Error"].get("Code") not in THROTTLED or self.answer is None:
                raise
            log.warning("EC2 throttled DescribeInstances: counting workers from its answer of %.0f s ago",
                        time.monotonic() - self.answer[0])
            return self.answer[1]
        with self.lock:
            self.answer = (time.monotonic(), described)
        return described

    def _forget_answer(self) -> None:
        """After a launch or a termination: the next count asks again (the last answer stays the
        fallback while EC2 throttles)."""
        with self.lock:
            if self.answer:
                self.answer = (-float("inf"), self.answer[1])

    def _remembered(self) -> dict[str, float]:
        return state.read_json(self.launches_file, {})

    def _remember(self, ids: list[str]) -> None:
        now = time.time()
        recent = {iid: at for iid, at in self._remembered().items() if now - at < config.REMEMBER_LAUNCHES}
        state.write_json(self.launches_file, {**recent, **dict.fromkeys(ids, now)})

    def _live(self) -> dict[str, tuple[str, float]]:
        return instance_states(self._described(), self._remembered(), time.time())

    def counts(self) -> tuple[int, int]:
        states = [state for state, _ in self._live().values()]
        return states.count("running"), states.count("pending")

    def workers(self) -> list[Worker]:
        return [Worker(iid, launched) for iid, (_, launched) in self._live().items()]

    def terminate(self, ids: list[str]) -> None:
        if ids:
            self.ec2.terminate_instances(InstanceIds=ids)
            self._forget_answer()

    def worker_id(self, pid: int, host: str) -> str | None:
        return host if host.startswith("i-") else None

    def launch(self, count: int) -> None:
        """Launch up to `count` workers with EC2 Fleet over every pool, spot first as
        DAAS_EC2_CAPACITY says (daas.ec2fleet); LaunchRefused if EC2 launched none."""
        s = self.settings
        tags = worker_tags(s)
        template = ec2fleet.template_version(self.ec2, *self.template(), render_user_data(s), tags)
        ec2fleet.launch(self.ec2, count, s.ec2_capacity, template, ec2fleet.pools(s.subnets, s.instance_types),
                        tags, remember=lambda ids: (self._remember(ids), self._forget_answer()))

    def template(self) -> tuple[str, dict | None]:
        """(the workers' launch template, the instance settings of a new version: None to take the
        template's own). A deployed stack's template (daas/cloudformation.yaml) holds the AMI, role
        and security group; without one, the settings do, and the template is made here."""
        s = self.settings
        if s.ec2_launch_template:
            return s.ec2_launch_template, None
        missing = [name for name, value in (("DAAS_EC2_AMI", s.ec2_ami), ("DAAS_EC2_SECURITY_GROUP", s.ec2_security_group),
                   ("DAAS_EC2_INSTANCE_PROFILE", s.ec2_instance_profile)) if not value]
        if missing:
            raise ValueError(f"the ec2 provider needs DAAS_EC2_LAUNCH_TEMPLATE or {', '.join(missing)}")
        data = {"ImageId": s.ec2_ami, "InstanceType": s.instance_types[0], "SecurityGroupIds": [s.ec2_security_group],
                "IamInstanceProfile": {"Name": s.ec2_instance_profile}}
        name = f"{s.stack}-worker"
        ec2fleet.ensure_template(self.ec2, name, data)
        return name, data


def worker_tags(settings: config.Settings) -> list[dict]:
    """The tags by which the controller finds its workers again (and IAM lets it end only those)."""
    return [{"Key": ROLE_TAG, "Value": "worker"}, {"Key": STACK_TAG, "Value": settings.stack},
            {"Key": "Name", "Value": f"{settings.stack}-worker"}]


# Settings a worker instance needs; everything else keeps its default there.
WORKER_ENV = ("AWS_REGION", "DAAS_STACK", "DAAS_INPUT_BUCKET", "DAAS_OUTPUT_BUCKET", "DAAS_QUEUE",
              "DAAS_MODEL", "DAAS_MODEL_WEIGHTS", "DAAS_RUNTIME", "DAAS_PRECISION", "DAAS_MAX_IMAGE_PIXELS", "DAAS_IDLE_TIMEOUT",
              "DAAS_WORKER_CONCURRENCY", "DAAS_WORKER_PROCESSES", "DAAS_INFERENCE_THREADS", "DAAS_PREFETCH_MULTIPLIER", "DAAS_EVENTS",
              "DAAS_VISIBILITY_TIMEOUT", "DAAS_TASK_TIME_LIMIT", "DAAS_HEARTBEAT_INTERVAL",
              "DAAS_STALL_TIMEOUT", "DAAS_MAX_LIFETIME", "DAAS_IMDS_ENDPOINT")
IMDS = "http://169.254.169.254"


def render_user_data(settings: config.Settings) -> str:
    """The cloud-init user data (worker_ami/user-data.sh) with this stack's settings filled in."""
    env = {**config.to_env(settings), "DAAS_IMDS_ENDPOINT": settings.imds_endpoint or IMDS}
    env_file = "".join(f"{name}={env[name]}\n" for name in WORKER_ENV)
    template = string.Template((WORKER_AMI / "user-data.sh").read_text())
    # The worker retires at DAAS_MAX_LIFETIME; the controller ends it a join timeout later; the
    # instance itself powers off a join timeout after that, whatever else happens.
    minutes = math.ceil((settings.max_lifetime + 2 * settings.ec2_join_timeout) / 60) if settings.max_lifetime else 0
    return template.substitute(WORKER_ENV_FILE=env_file.rstrip("\n"), POWEROFF_AFTER_MINUTES=minutes)


def make_provider(settings: config.Settings) -> Provider:
    """The settings' provider (config.PROVIDERS; Settings.check refuses others)."""
    return {"local": LocalProvider, "ec2": EC2Provider}[settings.provider](settings)
