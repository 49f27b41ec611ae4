"""Starting and stopping the service's processes on this machine (`python -m daas up`, tests).

Every process runs as a child in one process group, so that stopping the stack also stops
the workers the controller started; the local AWS endpoint gets its own group and stops last,
after everything that talks to it.
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from daas import config, state
from daas.broker import LOCAL_CREDENTIALS

PYTHON = sys.executable


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def ports_in_use(settings: config.Settings, local_aws: bool = True) -> list[str]:
    """The stack's ports where something already listens, as 'PORT (VARIABLE)'. Our servers bind with
    SO_REUSEPORT (a restarted web tier binds at once), so a second stack would not fail to bind:
    it would share the ports of one left running, and the kernel would split the requests between
    two local endpoints with different buckets and queues (seen: `up` waited for its first tick
    until it was stopped, with no error)."""
    # Not the controller's metrics port: no SO_REUSEPORT there, and a port in use is a warning (daas.metrics).
    ports = {"web_port": settings.web_port, "flower_port": settings.flower_port}
    if local_aws:
        ports["aws_port"] = settings.aws_port
    return [f"{port} ({config.ENV_VARS[name]})" for name, port in ports.items() if port and listening(settings, port)]


def listening(settings: config.Settings, port: int) -> bool:
    """Whether something accepts connections on `port` of the address our servers bind."""
    host = "127.0.0.1" if settings.host in ("0.0.0.0", "") else settings.host
    with socket.socket() as sock:
        sock.settimeout(1.0)
        return sock.connect_ex((host, port)) == 0


def wait_for_http(url: str, timeout: float = 60.0, process: subprocess.Popen | None = None,
                  ok_only: bool = False) -> None:
    """Wait until `url` answers: with any status (the server is up), or with 2xx if `ok_only`."""
    deadline, answer = time.monotonic() + timeout, "no answer"
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"{process.args[:4]} exited with {process.returncode} before {url} answered")
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError as exc:
            if getattr(exc, "code", None):  # an HTTP error status still means it is up
                if not ok_only:
                    return
                answer = f"{exc.code}: {exc.read().decode(errors='replace')[:300]}"
            time.sleep(0.1)
    raise TimeoutError(f"{url} did not answer{' 2xx' if ok_only else ''} within {timeout:.0f} s ({answer})")


def child_env(settings: config.Settings) -> dict[str, str]:
    # Unbuffered: a log's last lines before a crash or a SIGKILL are the ones that matter.
    env = {**os.environ, **config.to_env(settings), "PYTHONUNBUFFERED": "1"}
    if settings.aws_endpoint:
        # The local endpoint takes any credentials; never let a developer's real ones leak to it.
        env.update(AWS_ACCESS_KEY_ID=LOCAL_CREDENTIALS[0], AWS_SECRET_ACCESS_KEY=LOCAL_CREDENTIALS[1])
        env.pop("AWS_SESSION_TOKEN", None)
        env.pop("AWS_PROFILE", None)
    return env


@dataclass
class Stack:
    settings: config.Settings
    log_dir: Path | None = None
    processes: dict[str, subprocess.Popen] = field(default_factory=dict)
    commands: dict[str, tuple[list[str], dict | None]] = field(default_factory=dict)
    restarts: dict[str, list[float]] = field(default_factory=dict)
    _group: int | None = None
    endpoint: subprocess.Popen | None = None  # the local AWS endpoint's process, while it runs

    # -- the local AWS endpoint ------------------------------------------------------------
    def start_local_aws(self) -> str:
        """Start moto in server mode on loopback and point the settings at it."""
        port = self.settings.aws_port
        self.endpoint = subprocess.Popen(
            [PYTHON, "-m", "daas.local_endpoint", "-H", "127.0.0.1", "-p", str(port)],
            stdout=self._log("aws"), stderr=subprocess.STDOUT, start_new_session=True)
        url = f"http://127.0.0.1:{port}"
        wait_for_http(f"{url}/moto-api/", 30, self.endpoint)
        self.settings = self.settings.with_(aws_endpoint=url)
        # This process talks to it too (creating buckets and queues), with throwaway credentials.
        os.environ.update(AWS_ACCESS_KEY_ID=LOCAL_CREDENTIALS[0], AWS_SECRET_ACCESS_KEY=LOCAL_CREDENTIALS[1])
        return url

    # -- service processes -----------------------------------------------------------------
    def spawn(self, name: str, args: list[str], extra_env: dict[str, str] | None = None) -> subprocess.Popen:
        env = {**child_env(self.settings), **(extra_env or {})}
        process = subprocess.Popen(args, env=env, stdout=self._log(name), stderr=subprocess.STDOUT,
                                   process_group=self._group or 0)
        self._group = self._group or process.pid
        self.processes[name], self.commands[name] = process, (args, extra_env)
        self._record_pids()
        return process

    def _record_pids(self) -> None:
        """`<state>/processes.json`: {name: pid} of the running children, for operators and the soak."""
        state.write_json(self.settings.state_dir / "processes.json",
                         {name: process.pid for name, process in self.processes.items()})

    def restart_exited(self, limit: int = 5, window: float = 60.0) -> list[tuple[str, int]]:
        """Start again every process that exited, as a supervisor would: (name, exit code) each.
        A process that exits `limit` times within `window` seconds is crash-looping: RuntimeError."""
        restarted = []
        for name, process in list(self.processes.items()):
            if process.poll() is None:
                continue
            now = time.monotonic()
            recent = [t for t in self.restarts.get(name, []) if now - t < window] + [now]
            if len(recent) > limit:
                raise RuntimeError(f"{name} exited {len(recent)} times within {window:.0f} s; see its log")
            self.restarts[name] = recent
            self.spawn(name, *self.commands[name])
            restarted.append((name, process.returncode))
        return restarted

    def start_web(self) -> str:
        process = self.spawn("web", [PYTHON, "-m", "daas", "web"])
        url = f"http://{self.settings.host}:{self.settings.web_port}"
        wait_for_http(f"{url}/healthz", 60, process)
        return url

    def start_worker(self, name: str = "worker") -> subprocess.Popen:
        """A worker outside the autoscaler's control, counted like the ones it launches."""
        folder = self.settings.state_dir / "workers"
        return self.spawn(name, [PYTHON, "-m", "daas", "worker", "--processes", "1", "--register-in", str(folder)])

    def start_controller(self) -> None:
        """The control-queue worker (autoscaler, dead-letter reaper) and beat, which ticks it."""
        state = self.settings.state_dir
        state.mkdir(parents=True, exist_ok=True)
        self.spawn("controller", [PYTHON, "-m", "daas", "controller"])
        self.spawn("beat", [PYTHON, "-m", "celery", "-A", "daas.celery_app", "beat", "--loglevel", "INFO",
                            "--schedule", str(state / "beat-schedule")])

    def start_model_export(self) -> subprocess.Popen | None:
        """Make the model's ONNX export beside the other processes' starts, as the worker AMI's build
        does (`daas export`, which also loads it and runs it once), so that no local worker's boot
        pays it: on a fresh checkout here the first image waited 8.2 s from zero workers, 5.8 s of
        them the first worker's export. None where local workers need no export (torch) or there
        are none (EC2). Not a supervised process: it ends when done."""
        from daas import runtimes

        if self.settings.provider != "local" or runtimes.resolve(self.settings)[0] == "torch":
            return None
        return subprocess.Popen([PYTHON, "-m", "daas", "export"], env=child_env(self.settings), stdout=self._log("export"),
                                stderr=subprocess.STDOUT, process_group=self._group or 0)

    def finish_model_export(self, process: subprocess.Popen | None, timeout: float = 300.0) -> None:
        """Wait for `start_model_export`'s process: RuntimeError if it failed, TimeoutError if it
        has not ended within `timeout` seconds (both name its log)."""
        if process is None:
            return
        log = self.log_dir / "export.log" if self.log_dir else "its output"
        try:
            status = process.wait(timeout)
        except subprocess.TimeoutExpired:
            raise TimeoutError(f"the model's export did not end within {timeout:.0f} s: see {log}") from None
        if status:
            raise RuntimeError(f"the model's export failed (exit status {status}): see {log}")

    def start_flower(self) -> str:
        s = self.settings
        process = self.spawn("flower", [PYTHON, "-m", "daas", "flower"])
        url = f"http://{s.host}:{s.flower_port}"
        wait_for_http(f"{url}/healthcheck", 60, process)
        return url

    def stop(self, timeout: float = 20.0) -> None:
        """Warm-stop every child (and what they started), then the endpoint; kill what lingers."""
        if self._group:
            _signal_group(self._group, signal.SIGTERM)
            _wait_group(self._group, list(self.processes.values()), timeout)
            _signal_group(self._group, signal.SIGKILL)
            self._group = None
        if self.endpoint:
            # SIGINT: its worker ends at once, open long polls or not (daas.serving.exit_at_once).
            _signal_group(self.endpoint.pid, signal.SIGINT)
            _wait_group(self.endpoint.pid, [self.endpoint], 10)
            _signal_group(self.endpoint.pid, signal.SIGKILL)
            self.endpoint.wait()
            self.endpoint = None

    def kill(self) -> None:
        """SIGKILL every child (and what they started) and the endpoint now: a second Ctrl-C
        during `stop`, which then finds them gone. Interrupting `stop` itself had left the local
        endpoint running, holding its port against the next `up`."""
        for group in (self._group, self.endpoint and self.endpoint.pid):
            if group:
                _signal_group(group, signal.SIGKILL)

    def _log(self, name: str):
        if self.log_dir is None:
            return None
        self.log_dir.mkdir(parents=True, exist_ok=True)
        return open(self.log_dir / f"{name}.log", "ab")

    def __enter__(self) -> "Stack":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def _signal_group(group: int, sig: int) -> None:
    try:
        os.killpg(group, sig)
    except ProcessLookupError:
        pass


def _group_alive(group: int) -> bool:
    try:
        os.killpg(group, 0)
        return True
    except ProcessLookupError:
        return False


def _wait_group(group: int, children: list[subprocess.Popen], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for child in children:
            child.poll()  # reap our direct children so they do not linger as zombies
        if not _group_alive(group):
            return
        time.sleep(0.1)
