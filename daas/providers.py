"""Where workers run: local OS processes (the embedded default) or EC2 instances. One interface."""
from __future__ import annotations

import os
import string
import subprocess
import sys
from pathlib import Path
from typing import Protocol

from daas import aws, config

WORKER_AMI = Path(__file__).resolve().parent.parent / "worker_ami"
ROLE_TAG, STACK_TAG = "daas:role", "daas:stack"


class Provider(Protocol):
    def counts(self) -> tuple[int, int]:
        """(running, starting) workers of this stack."""

    def launch(self, count: int) -> None:
        """Start `count` more workers."""


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

    def counts(self) -> tuple[int, int]:
        for pid, child in list(self.children.items()):
            if child.poll() is not None:  # reap it, so that it is not counted as a zombie
                del self.children[pid]
        running = starting = 0
        for marker in self.folder.glob("[0-9]*"):
            if marker.suffix:
                continue
            pid = int(marker.name)
            if not _alive(pid):
                marker.unlink(missing_ok=True)
                marker.with_suffix(".ready").unlink(missing_ok=True)
            elif marker.with_suffix(".ready").exists():
                running += 1
            else:
                starting += 1
        return running, starting

    def launch(self, count: int) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        logs = self.settings.state_dir / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        for _ in range(count):
            log = open(logs / "workers.log", "ab")
            child = subprocess.Popen([sys.executable, "-m", "daas", "worker", "--register-in", str(self.folder)],
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


class EC2Provider:
    """Workers are EC2 instances booted from the worker AMI, found again by their tags."""

    def __init__(self, settings: config.Settings):
        self.settings = settings
        self.ec2 = aws.client("ec2", settings)

    def _filters(self) -> list[dict]:
        return [{"Name": f"tag:{ROLE_TAG}", "Values": ["worker"]},
                {"Name": f"tag:{STACK_TAG}", "Values": [self.settings.stack]},
                {"Name": "instance-state-name", "Values": ["pending", "running"]}]

    def counts(self) -> tuple[int, int]:
        running = starting = 0
        for page in self.ec2.get_paginator("describe_instances").paginate(Filters=self._filters()):
            for reservation in page["Reservations"]:
                for instance in reservation["Instances"]:
                    if instance["State"]["Name"] == "running":
                        running += 1
                    else:
                        starting += 1
        return running, starting

    def launch(self, count: int) -> None:
        self.ec2.run_instances(**self.launch_parameters(count))

    def launch_parameters(self, count: int) -> dict:
        s = self.settings
        tags = [{"Key": ROLE_TAG, "Value": "worker"}, {"Key": STACK_TAG, "Value": s.stack},
                {"Key": "Name", "Value": f"{s.stack}-worker"}]
        params = {
            "MinCount": count, "MaxCount": count,
            "UserData": render_user_data(s),
            "InstanceInitiatedShutdownBehavior": "terminate",  # idle power-off ends the instance
            "MetadataOptions": {"HttpTokens": "required", "HttpEndpoint": "enabled"},  # IMDSv2 only
            "TagSpecifications": [{"ResourceType": "instance", "Tags": tags},
                                  {"ResourceType": "volume", "Tags": tags}],
        }
        if s.ec2_launch_template:
            params["LaunchTemplate"] = {"LaunchTemplateName": s.ec2_launch_template, "Version": "$Latest"}
        else:
            missing = [name for name, value in (("DAAS_EC2_AMI", s.ec2_ami), ("DAAS_EC2_SUBNET", s.ec2_subnet),
                       ("DAAS_EC2_SECURITY_GROUP", s.ec2_security_group),
                       ("DAAS_EC2_INSTANCE_PROFILE", s.ec2_instance_profile)) if not value]
            if missing:
                raise ValueError(f"the ec2 provider needs DAAS_EC2_LAUNCH_TEMPLATE or {', '.join(missing)}")
            params.update(ImageId=s.ec2_ami, InstanceType=s.ec2_instance_type, SubnetId=s.ec2_subnet,
                          SecurityGroupIds=[s.ec2_security_group],
                          IamInstanceProfile={"Name": s.ec2_instance_profile})
        return params


# Settings a worker instance needs; everything else keeps its default there.
WORKER_ENV = ("AWS_REGION", "DAAS_STACK", "DAAS_INPUT_BUCKET", "DAAS_OUTPUT_BUCKET", "DAAS_QUEUE",
              "DAAS_MODEL", "DAAS_MODEL_WEIGHTS", "DAAS_MAX_IMAGE_PIXELS", "DAAS_IDLE_TIMEOUT",
              "DAAS_WORKER_CONCURRENCY", "DAAS_TORCH_THREADS", "DAAS_PREFETCH_MULTIPLIER", "DAAS_EVENTS",
              "DAAS_VISIBILITY_TIMEOUT")


def render_user_data(settings: config.Settings) -> str:
    """The cloud-init user data (worker_ami/user-data.sh) with this stack's settings filled in."""
    env = config.to_env(settings)
    env_file = "".join(f"{name}={env[name]}\n" for name in WORKER_ENV)
    template = string.Template((WORKER_AMI / "user-data.sh").read_text())
    return template.substitute(WORKER_ENV_FILE=env_file.rstrip("\n"))


def make_provider(settings: config.Settings) -> Provider:
    providers = {"local": LocalProvider, "ec2": EC2Provider}
    if settings.provider not in providers:
        raise ValueError(f"DAAS_PROVIDER must be one of {', '.join(providers)}, not {settings.provider!r}")
    return providers[settings.provider](settings)
