"""gunicorn, the production WSGI server of the web tier and of the local AWS endpoint.

`serve` runs a WSGI app in gunicorn's threaded workers (gthread): worker processes and threads
from settings, access log lines on stdout, a worker that stops answering its arbiter is replaced
(`timeout`), and a client that stalls while it sends its request loses its thread after
`read_timeout` seconds instead of holding it forever (gunicorn's threads wait on the socket with
no limit of their own; 100 stalled uploads held 103 threads of the old development server).
"""
from __future__ import annotations

import ctypes
import fcntl
import math
import os
import shutil
import signal
import sys
import time
from pathlib import Path
from typing import Callable

from gunicorn.app.base import BaseApplication

from daas import config

ACCESS_LOG_FORMAT = '%(h)s "%(r)s" %(s)s %(b)s %(M)sms'  # client, request line, status, bytes, duration
# The local AWS endpoint's lines also name the SQS/SNS operation (JSON protocol: a header) and the
# caller (its user agent ends with daas/<role>, see daas.aws.ROLE), after the time each answer went
# out: a silence of the endpoint shows in its log (the soak reports the longest around each fault).
AWS_ACCESS_LOG_FORMAT = '%(t)s ' + ACCESS_LOG_FORMAT + ' "%({x-amz-target}i)s" "%(a)s"'


def read_timeout(app: Callable, seconds: float) -> Callable:
    """WSGI middleware: the request's socket times out after `seconds` without data while the
    request is read (a slow or stalled client then gets no further), not while it is answered."""

    def timed(environ, start_response):
        sock = environ.get("gunicorn.socket")
        if sock is not None:
            sock.settimeout(seconds)
        return app(environ, start_response)

    return timed


def limit_malloc_arenas(arenas: int = 2) -> bool:
    """Let glibc keep at most `arenas` malloc arenas in this process (and the workers it forks).

    Why: by default every thread that allocates gets an arena of its own, up to 8 per core, and each
    keeps what was freed in it. Twenty concurrent 50 MB uploads, six rounds of them, took the web tier
    from 226 to 359 MB and it kept creeping (465 MB after four more rounds of accepted uploads); with
    two arenas it stayed at 258-269 MB (see README, Uploads). Returns whether glibc took it."""
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):  # not glibc
        return False
    return bool(mallopt(_M_ARENA_MAX, arenas))


_M_ARENA_MAX = -8  # malloc.h


class _Server(BaseApplication):
    def __init__(self, app: Callable, options: dict):
        self.app, self.options = app, options
        super().__init__()

    def load_config(self) -> None:
        for key, value in self.options.items():
            self.cfg.set(key, value)

    def load(self) -> Callable:
        return self.app


def gunicorn_options(host: str, port: int, *, workers: int, threads: int, timeout: float,
                     graceful_timeout: float, name: str, access_log_format: str = ACCESS_LOG_FORMAT) -> dict:
    """gunicorn's settings for `serve`. `graceful_timeout`: seconds a stopping worker process gets
    to finish the requests in hand before it is killed (the web tier's are waiting /classify)."""
    return {
        "bind": f"{host}:{port}", "workers": workers, "threads": threads, "worker_class": "gthread",
        "timeout": max(30, int(timeout)), "graceful_timeout": math.ceil(graceful_timeout), "keepalive": 5,
        "accesslog": "-", "errorlog": "-", "access_log_format": access_log_format,
        "proc_name": name, "loglevel": "info",
        # A restarted server binds at once, even while the worker processes of a killed one still
        # finish their requests on the old socket (without it a killed web tier took 20 s to return).
        "reuse_port": True,
        # gunicorn's runtime control socket sits at one path per user: several servers would clash.
        "control_socket_disable": True,
        "post_fork": die_with_arbiter,
    }


def exit_at_once(signum: int, frame) -> None:
    """A worker's handler of SIGINT and SIGQUIT where it may drop the requests in hand: end now.
    gunicorn's quick stop does not, in its threaded workers: the interpreter joins the request
    threads at exit, and the local endpoint's open long polls (up to 20 s; SQS keeps a poll open
    after its client is gone) held every stop of it for the 10 s after which Stack.stop kills it
    (now 0.4 s)."""
    for stream in (sys.stdout, sys.stderr):
        stream.flush()  # the access log's last lines
    os._exit(0)


def quit_once(handle_quit: Callable) -> Callable:
    """gunicorn's quick stop, deaf to a second SIGINT or SIGQUIT while it runs. Its handler is not
    re-entrant: a SIGINT to the whole process group (a terminal's Ctrl-C, Stack.stop) and then the
    arbiter's SIGQUIT deadlocked a worker on its thread pool's shutdown lock until the arbiter's
    graceful timeout killed it (seen with py-spy on the local endpoint)."""

    def handler(signum: int, frame) -> None:
        for other in (signal.SIGINT, signal.SIGQUIT):
            signal.signal(other, signal.SIG_IGN)
        handle_quit(signum, frame)

    return handler


PR_SET_PDEATHSIG = 1


def die_with_arbiter(server, worker) -> None:
    """A worker process ends when its arbiter does (SIGKILLed, say), as under systemd, whose unit
    cgroup goes with it. An orphaned worker stopped accepting but kept its listening socket (one of
    several under reuse_port) while it finished its waiting /classify requests, up to the graceful
    timeout: the kernel went on queueing new connections on that socket, and they were reset when
    the orphan exited. A 4-minute soak in CI lost 8 requests so, 39 s after the web tier was killed."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, 9)  # SIGKILL: Linux only
    except (OSError, AttributeError):
        return
    if os.getppid() != server.pid:  # the arbiter died before the request took effect
        os._exit(1)


def serve(app: Callable, host: str, port: int, *, workers: int, threads: int, timeout: float,
          name: str, graceful_timeout: float = 30.0, access_log_format: str = ACCESS_LOG_FORMAT,
          warm_up: Callable | None = None, drop_requests_on_quit: bool = False) -> None:
    """Serve `app` on host:port until stopped (SIGTERM: graceful, up to `graceful_timeout` s;
    SIGINT: gunicorn's quick stop, which in threaded workers still ends the requests in hand,
    unless `drop_requests_on_quit`: then a worker ends at once). `warm_up` runs in each worker
    process before it takes requests."""
    options = gunicorn_options(host, port, workers=workers, threads=threads, timeout=timeout,
                               graceful_timeout=graceful_timeout, name=name,
                               access_log_format=access_log_format)

    def post_worker_init(worker) -> None:  # after gunicorn set the worker's signal handlers
        on_quit = exit_at_once if drop_requests_on_quit else quit_once(worker.handle_quit)
        for signum in (signal.SIGINT, signal.SIGQUIT):
            signal.signal(signum, on_quit)
        if warm_up:
            warm_up()

    options["post_worker_init"] = post_worker_init
    _Server(read_timeout(app, timeout), options).run()


def claim_web_port(settings: config.Settings, wait: float = 5.0) -> None:
    """Refuse (SystemExit, one line) to start a second web tier on a port that one from this state
    folder serves: both would bind (SO_REUSEPORT, above), the kernel would split the requests
    between them, and the second would empty the first's metrics folder (seen: `daas web` run
    beside `make run` zeroed its /metrics). The claim is a lock held until this process and its
    gunicorn workers (which inherit it) have all exited; a restart waits up to `wait` seconds for
    the workers of the tier it replaces to go."""
    folder = settings.state_dir / "metrics"
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder / f"web-{settings.web_port}.lock", os.O_RDWR | os.O_CREAT, 0o600)
    deadline = time.monotonic() + wait
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return  # the descriptor stays open: the claim lasts as long as the tier
        except BlockingIOError:
            if time.monotonic() >= deadline:
                os.close(fd)
                raise SystemExit(f"daas web: a web tier from {settings.state_dir} already serves port "
                                 f"{settings.web_port} (a `make run` still running?); stop it, or set DAAS_WEB_PORT "
                                 "to another port") from None
            time.sleep(0.1)


def prepare_metrics_folder(settings: config.Settings) -> Path:
    """The folder the web tier's processes count their metrics into (prometheus_client's
    multiprocess mode, see daas.metrics), emptied: a restarted web tier starts its counters from
    zero, as Prometheus expects of a restarted target. Named in the environment, so it must run
    before prometheus_client is first imported in this process."""
    folder = settings.state_dir / "metrics" / f"web-{settings.web_port}"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(folder)
    return folder
