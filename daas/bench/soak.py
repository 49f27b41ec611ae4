"""`python -m daas bench soak [--minutes 30]`: the whole stack for a while, under load and faults.

It starts `python -m daas up` as a user would (its own ports and state folder) and repeats a cycle
until the time is up:

1. a burst of the original client's pattern: 100 concurrent `POST /classify`, one image each, with
   a busy worker SIGKILLed in the middle of it;
2. a multi-image upload through `POST /api/jobs`, and (every third cycle) a mix of bad uploads
   (empty, not an image, a decompression bomb's header, oversized, truncated) and a malformed
   message sent straight to the classify queue;
3. one fault in turn: SIGKILL of the controller, SIGSTOP of the controller (a stall `up` must
   notice), SIGKILL of the web tier, of beat; and every FLOWER_EVERY cycles, beside it, Flower
   stopped (SIGSTOP) for minutes while the load goes on, then continued: it must catch up on its
   event queue, which housekeeping must not take for an orphan however far behind it is;
4. an idle gap longer than the idle timeout: the pool goes to zero, and the next burst brings it back.

Then it waits for every accepted image and reports: images sent, right, wrong, lost, stuck, run
twice, p50/p99 latency, the longest recovery after each kind of fault, scaler ticks missed,
housekeeping runs, scale-to-zero cycles, and every ERROR/CRITICAL line of every log. It writes
<out>/soak.json and <out>/soak.png (queue, workers and latencies on one timeline, faults marked).
"""
from __future__ import annotations

import argparse
import base64
import io
import json
import os
import re
import signal
import subprocess
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path

import requests

from daas import aws, config, health, timeline
from daas.bench.harness import percentiles, wait_until, workspace
from daas.bench.workload import build_images
from daas.broker import LOCAL_CREDENTIALS
from daas.stack import PYTHON, free_port
from daas.supervisor import answers

FAULTS = ("controller", "stall", "web", "beat")  # one per cycle, in this order
FLOWER_EVERY = 5             # Flower is stopped in cycles 1, 6, 11, ...
BURST = 100                  # concurrent POST /classify, as the original load generator sent them
UPLOAD = 30                  # images per multi-image upload
RECOVERY_TIMEOUT = 120.0
MALFORMED = {"properties": {"delivery_info": {}}, "headers": {"task": "nope"}, "body": "x"}
REAPED = "dropping a dead-lettered message that is not a daas task"
ERROR_LINE = re.compile(r"\b(ERROR|CRITICAL)\b|^\[[EC] |Traceback|Unrecoverable|Error in timer")


def profile(minutes: float) -> dict[str, str]:
    """The stack's timing settings: the defaults for a long soak; shorter ones for a short soak,
    so that a few minutes still hold several housekeeping runs and a scale-to-zero cycle. Its
    visibility timeout of 10 s halves what each burst waits for the killed worker's images, and
    the malformed message's three deliveries (the 4-minute soak in CI took 311 s, 80 s of them
    the malformed message of its last cycle; the killed worker's images came back after 20.3 to
    21.1 s in six runs here, and once in CI after 34.6 s, against a bound of 30: the whole stack
    had stalled for some 17 s, for a reason its lost logs could not tell)."""
    if minutes >= 10:
        return {"DAAS_IDLE_TIMEOUT": "60"}
    return {"DAAS_IDLE_TIMEOUT": "20", "DAAS_SWEEP_INTERVAL": "20", "DAAS_HEARTBEAT_INTERVAL": "5",
            "DAAS_STALL_TIMEOUT": "30", "DAAS_QUEUE_LEASE_INTERVAL": "15", "DAAS_VISIBILITY_TIMEOUT": "10"}


def flower_stop_s(minutes: float) -> float:
    """How long Flower stays stopped: two minutes in a long soak (past two lease renewals and
    several housekeeping runs), 30 s in a short one (two renewals of its profile; the lease
    expires after five: with renewals every 10 s, a margin of 20 s, a CI run on a machine loaded
    by a third CPU-bound process once saw Flower's queue swept after it was resumed)."""
    return 120.0 if minutes >= 10 else 30.0


@dataclass
class Sent:
    """One image the client sent, and what became of it."""

    kind: str                  # "sync" (/classify), "upload" (/api/jobs), "bad" (expected to fail)
    name: str
    expected: str              # the model's own label, or "error" for a bad image
    sent: float
    http: int = 0
    outcome: str = "pending"   # right, wrong, error (as expected for bad input), rejected (4xx), pending
    latency: float | None = None
    job_id: str = ""
    image_id: str = ""
    retried: bool = False


@dataclass
class Fault:
    kind: str
    t: float
    recovered: float | None = None
    detail: str = ""
    story: dict = field(default_factory=dict)  # what happened meanwhile (a killed worker's: worker_story)

    @property
    def recovery_s(self) -> float | None:
        return None if self.recovered is None else round(self.recovered - self.t, 2)


@dataclass
class Soak:
    minutes: float
    tmp: Path
    sent: list[Sent] = field(default_factory=list)
    faults: list[Fault] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    # -- the stack ---------------------------------------------------------------------------------
    def start(self) -> None:
        self.state = self.tmp / "state"
        ports = {name: free_port() for name in ("DAAS_WEB_PORT", "DAAS_AWS_PORT", "DAAS_FLOWER_PORT")}
        self.env = {**os.environ, **{k: str(v) for k, v in ports.items()}, **profile(self.minutes),
                    "DAAS_STATE_DIR": str(self.state), "DAAS_FLOWER_PASSWORD": "soak", "DAAS_PROVIDER": "local"}
        for name in ("DAAS_AWS_ENDPOINT", "DAAS_STACK"):
            self.env.pop(name, None)
        self.settings = config.load(self.env)
        self.url = f"http://127.0.0.1:{self.settings.web_port}"
        self.up_log = open(self.tmp / "up.log", "w")
        self.up = subprocess.Popen([PYTHON, "-m", "daas", "up"], env=self.env, stdout=self.up_log,
                                   stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 180
        while "Ctrl-C" not in (self.tmp / "up.log").read_text():
            if self.up.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"`daas up` did not start:\n{(self.tmp / 'up.log').read_text()}")
            time.sleep(0.5)
        self.settings = self.settings.with_(aws_endpoint=f"http://127.0.0.1:{self.settings.aws_port}")
        # This process talks to the local endpoint too (the malformed message), with its throwaway keys.
        os.environ.update(AWS_ACCESS_KEY_ID=LOCAL_CREDENTIALS[0], AWS_SECRET_ACCESS_KEY=LOCAL_CREDENTIALS[1])
        self.http = requests.Session()
        self.started = time.time()

    def stop(self) -> None:
        """SIGTERM, as systemd stops a service (SIGINT is ignored by a process started in the
        background by a shell, and so would be by `up`); what lingers after 90 s is killed."""
        self.up.send_signal(signal.SIGTERM)
        try:
            self.up.wait(90)
        except subprocess.TimeoutExpired:
            for pid in {self.up.pid, *json.loads((self.state / "processes.json").read_text()).values()}:
                try:
                    os.killpg(os.getpgid(pid), signal.SIGKILL)
                except ProcessLookupError:
                    pass
        self.up_log.close()

    def pid(self, name: str) -> int:
        return json.loads((self.state / "processes.json").read_text())[name]

    def ready_workers(self) -> list[int]:
        return sorted(int(p.stem) for p in (self.state / "workers").glob("*.ready"))

    def status(self) -> dict:
        return self.http.get(f"{self.url}/api/status", timeout=10).json()

    # -- sending images ----------------------------------------------------------------------------
    def classify(self, name: str, data: bytes, expected: str) -> Sent:
        """One POST /classify, as the original client sent it; retried once if the web tier was
        down (killed by a fault) when it was sent."""
        item = Sent("sync", name, expected, time.time())
        for attempt in range(2):
            try:
                response = requests.post(f"{self.url}/classify", files={"myfile": (name, data)}, timeout=120)
                break
            except requests.RequestException:
                if attempt:
                    item.outcome = "failed"
                    return self.record(item)
                item.retried = True
                self.wait_until(lambda: self.answers("/healthz"), RECOVERY_TIMEOUT, "the web tier")
        item.http = response.status_code
        item.latency = time.time() - item.sent
        if response.status_code == 200:
            label = response.text.split(":", 1)[1]
            item.outcome = "right" if label == expected else "wrong"
        elif response.status_code == 504:  # still queued: the message says where its result will be
            found = re.search(r"/api/jobs/([0-9a-f]{32})/images/([0-9a-f]{32})", response.text)
            item.job_id, item.image_id = found[1], found[2]
        else:
            item.outcome = "wrong"
        return self.record(item)

    def upload(self, kind: str, files: list[tuple[str, bytes, str]]) -> list[Sent]:
        """One POST /api/jobs with several images; results are collected later (`collect`)."""
        sent = time.time()
        response = requests.post(f"{self.url}/api/jobs", files=[("images", (n, d)) for n, d, _ in files], timeout=120)
        items = [Sent(kind, name, expected, sent, http=response.status_code) for name, _, expected in files]
        if response.status_code == 202:
            job = response.json()
            unmatched = list(job["images"])  # rejected images come after the accepted ones
            for item in items:
                image = next(i for i in unmatched if i["name"] == item.name)
                unmatched.remove(image)
                item.job_id, item.image_id = job["job_id"], image["id"]
        else:
            for item in items:
                item.outcome = "rejected" if item.expected == "error" else "wrong"
        return [self.record(item) for item in items]

    def record(self, item: Sent) -> Sent:
        with self.lock:
            self.sent.append(item)
        return item

    def collect(self) -> int:
        """Fill in the results of pending images from their jobs; returns how many are pending."""
        pending = [item for item in self.sent if item.outcome == "pending" and item.job_id]
        jobs: dict[str, dict] = {}
        for item in pending:
            if item.job_id not in jobs:
                jobs[item.job_id] = self.http.get(f"{self.url}/api/jobs/{item.job_id}", timeout=30).json()
            images = jobs[item.job_id]["images"]
            image = next(i for i in images if i["id"] == item.image_id)
            if image["status"] == "queued":
                continue
            item.latency = datetime.fromisoformat(image["finished_at"]).timestamp() - item.sent
            if item.expected == "error":
                item.outcome = "error" if image["status"] == "error" else "wrong"
            else:
                item.outcome = "right" if image.get("label") == item.expected else "wrong"
        return sum(item.outcome == "pending" for item in self.sent)

    # -- the cycle ---------------------------------------------------------------------------------
    def burst(self, files: list[tuple[str, bytes, str]], kill_worker: bool) -> None:
        with ThreadPoolExecutor(BURST) as pool:
            futures = [pool.submit(self.classify, *files[i % len(files)]) for i in range(BURST)]
            if kill_worker:
                self.kill_busy_worker()
            for future in futures:
                future.result()

    def kill_busy_worker(self) -> None:
        """SIGKILL a worker while the burst keeps every worker busy. The queue is asked directly, not
        through the autoscaler's latest tick: warm workers can finish a burst between two ticks."""
        self.wait_until(lambda: self.ready_workers() and aws.queue_depth(self.settings)["in_flight"] > 0, 180,
                        "a busy worker")
        time.sleep(0.2)
        pid = self.ready_workers()[0]
        os.kill(pid, signal.SIGKILL)
        self.faults.append(Fault("worker", time.time(), detail=str(pid)))

    def inject(self, kind: str) -> None:
        """One fault of the control plane; its recovery is measured at once."""
        fault = Fault(kind, time.time())
        self.faults.append(fault)
        if kind == "stall":
            os.kill(self.pid("controller"), signal.SIGSTOP)
        else:
            os.kill(self.pid(kind), signal.SIGKILL)
        if kind == "web":
            check = lambda: self.answers("/healthz")  # noqa: E731
        else:  # the autoscaler ticks again
            check = lambda: (health.read(self.settings, health.TICK) or {"t": 0})["t"] > fault.t  # noqa: E731
        self.wait_until(check, RECOVERY_TIMEOUT, f"recovery from the {kind} fault")
        fault.recovered = time.time()

    def stop_flower(self) -> None:
        """SIGSTOP Flower now and SIGCONT it flower_stop_s later, while the cycles go on (the load
        makes it fall far behind); recovered once it answers and has drained its event queue."""
        fault, pid = Fault("flower", time.time()), self.pid("flower")
        self.faults.append(fault)
        os.kill(pid, signal.SIGSTOP)

        def resume() -> None:
            time.sleep(flower_stop_s(self.minutes))
            fault.detail = f"{self.event_backlog()} events waiting"
            os.kill(pid, signal.SIGCONT)
            self.wait_until(lambda: answers(f"http://127.0.0.1:{self.settings.flower_port}/healthcheck")
                            and self.event_backlog() < 20, RECOVERY_TIMEOUT, "Flower to catch up")
            fault.recovered = time.time()

        self.flower_thread = threading.Thread(target=resume, name="soak-flower", daemon=True)
        self.flower_thread.start()

    def flower_caught_up(self) -> None:
        """Wait for a Flower stopped near the end to be continued and catch up (or to fail to)."""
        thread = getattr(self, "flower_thread", None)
        if thread is not None:
            thread.join(flower_stop_s(self.minutes) + RECOVERY_TIMEOUT + 10)

    def event_backlog(self) -> int:
        """Events waiting in the stack's event queues (Flower's)."""
        sqs, waiting = aws.client("sqs", self.settings), 0
        for url in sqs.list_queues(QueueNamePrefix=f"{self.settings.stack}-celeryev-").get("QueueUrls", []):
            waiting += int(sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["ApproximateNumberOfMessages"])
                           ["Attributes"]["ApproximateNumberOfMessages"])
        return waiting

    def send_malformed(self) -> None:
        sqs = aws.client("sqs", self.settings)
        body = base64.b64encode(json.dumps(MALFORMED).encode()).decode()
        sqs.send_message(QueueUrl=aws.queue_url(self.settings, self.settings.queue), MessageBody=body)
        self.faults.append(Fault("malformed message", time.time()))

    def bad_uploads(self, good: tuple[str, bytes, str]) -> None:
        """Each kind of bad input alone (the edge answers 4xx; a truncated file gets an error result
        from the worker), and mixed with a good image (which is labelled)."""
        bad = bad_images(self.settings.max_image_bytes)
        for name, data in bad:
            self.upload("bad", [(name, data, "error")])
        items = self.upload("bad", [(bad[0][0], bad[0][1], "error"), good])
        items[1].kind = "upload"  # the good image of the mixed upload is labelled like any other

    def idle_gap(self) -> None:
        """Wait until the pool has gone to zero, as it does after DAAS_IDLE_TIMEOUT idle seconds."""
        self.wait_until(lambda: self.status()["workers"] == {"running": 0, "starting": 0, "retiring": 0},
                        self.settings.idle_timeout + 120, "the pool to go to zero")

    def answers(self, path: str) -> bool:
        return answers(f"{self.url}{path}")

    def cycles(self, files: list[tuple[str, bytes, str]]) -> int:
        """Repeat the cycle (see the module's docstring) until the time is up; returns how many ran.
        The soak runs at least its minutes: the last cycle starts before the deadline and overruns
        it. (It used to stop when less than half of its longest cycle was left: a first cycle of
        102 s, where others take 0.8 min, ended a 4-minute soak in CI after 198 s and 3 cycles.)"""
        deadline, cycle = self.started + self.minutes * 60, 0
        while time.time() < deadline:
            self.burst(files, kill_worker=True)
            self.upload("upload", [files[(cycle * UPLOAD + i) % len(files)] for i in range(UPLOAD)])
            if cycle % 3 == 0:
                self.bad_uploads(files[0])
                self.send_malformed()
            if cycle % FLOWER_EVERY == 1:
                self.stop_flower()
            self.inject(FAULTS[cycle % len(FAULTS)])
            self.idle_gap()
            cycle += 1
            self.progress(cycle)
        self.ran_s = time.time() - self.started
        return cycle

    def progress(self, cycle: int) -> None:
        """One line per cycle, so that a long soak shows where it is."""
        pending = self.collect()
        outcomes = Counter(item.outcome for item in self.sent)
        print(f"soak {(time.time() - self.started) / 60:4.1f}/{self.minutes:g} min, cycle {cycle} "
              f"({FAULTS[(cycle - 1) % len(FAULTS)]} fault): {len(self.sent)} sent, {outcomes['right']} right, "
              f"{outcomes['wrong']} wrong, {pending} pending", flush=True)

    def drain(self, timeout: float = 180.0) -> bool:
        """Wait until every accepted image has its result and every malformed message was reaped."""
        malformed = sum(f.kind == "malformed message" for f in self.faults)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.collect() and self.log("controller").count(REAPED) >= malformed:
                return True
            time.sleep(1)
        return False

    def log(self, name: str) -> str:
        path = self.state / "logs" / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def leftover_messages(self) -> int:
        """Messages still in the classify queue and its dead-letter queue."""
        sqs, left = aws.client("sqs", self.settings), 0
        for name in (self.settings.queue, self.settings.dead_letter_queue):
            attributes = sqs.get_queue_attributes(QueueUrl=aws.queue_url(self.settings, name), AttributeNames=[
                "ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"])["Attributes"]
            left += sum(int(value) for value in attributes.values())
        return left

    def report(self, cycles: int, drained: bool) -> dict:
        logs = {path.stem: path.read_text(errors="replace") for path in sorted((self.state / "logs").glob("*.log"))}
        logs["up"] = (self.tmp / "up.log").read_text(errors="replace")
        records = [r for r in timeline.read(self.state) if r["t"] >= self.started]
        runs, answered = task_runs(logs.get("workers", "")), answer_times(logs.get("aws", ""))
        for fault in self.faults:
            if fault.kind == "worker":
                fault.recovered = orphans_recovered(runs, int(fault.detail), fault.t)
                fault.story = worker_story(runs, int(fault.detail), fault.t, fault.recovered, logs, records, answered)
            elif fault.kind == "malformed message":
                fault.recovered = first_line_after(logs.get("controller", ""), REAPED, fault.t)
        outcomes = Counter(item.outcome for item in self.sent)
        unfinished = outcomes["pending"]
        left = self.leftover_messages() if unfinished else 0
        recoveries: dict[str, float] = {}
        for fault in self.faults:
            if fault.recovery_s is not None:
                recoveries[fault.kind] = max(recoveries.get(fault.kind, 0.0), fault.recovery_s)
        return {
            "minutes": self.minutes, "ran_s": round(self.ran_s), "cycles": cycles, "drained": drained,
            "settings": profile(self.minutes),
            "images": {"sent": len(self.sent), "right": outcomes["right"], "wrong": outcomes["wrong"],
                       "bad, error result": outcomes["error"], "bad, rejected at the edge": outcomes["rejected"],
                       "lost": unfinished if not left else 0, "stuck": unfinished if left else 0,
                       "requests failed twice": outcomes["failed"],
                       "sync answered 504": sum(i.kind == "sync" and i.http == 504 for i in self.sent),
                       "sync retried after a web-tier kill": sum(i.retried for i in self.sent)},
            **dict(zip(("run_twice", "rerun_after_kill"),
                       reruns(runs, {int(f.detail): f.t for f in self.faults if f.kind == "worker"}))),
            "succeeded_more_than_once": {task: run["succeeded"] for task, run in runs.items()
                                         if len(run["succeeded"]) > 1},
            "latency_ms": {kind: latency_ms([i.latency for i in self.sent if i.kind == kind and i.latency])
                           for kind in ("sync", "upload")},
            "recovery_s": recoveries,
            "faults": [{**asdict(f), "recovery_s": f.recovery_s} for f in self.faults],
            "ticks": {"recorded": len(records), "missed": ticks_missed(records, self.settings.scale_interval)},
            "housekeeping_runs": len(re.findall(r"Task daas\.housekeeping\[[^]]+\] succeeded", logs.get("controller", ""))),
            "scale_to_zero_cycles": scale_to_zero_cycles(records),
            "error_lines": error_lines(logs),
            "logs_checked": sorted(logs),
            "started": self.started,
            "timeline": records,
            "sent": [{"t": i.sent, "kind": i.kind, "latency": i.latency, "outcome": i.outcome} for i in self.sent],
        }

    @staticmethod
    def wait_until(check, timeout: float, what: str) -> None:
        wait_until(check, timeout, what, every=0.25, tolerate=(requests.RequestException, ValueError, KeyError))


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that claims width×height pixels but carries a few bytes: a decompression bomb's header."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 1000)) + chunk(b"IEND", b"")


def bad_images(max_bytes: int) -> list[tuple[str, bytes]]:
    """One upload of each kind that cannot be classified."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.effect_noise((400, 400), 60).convert("RGB").save(buffer, format="JPEG")
    return [("empty.png", b""), ("notes.png", b"this is text, not a picture"),
            ("bomb.png", png_header_only(30000, 30000)), ("huge.jpg", b"\xff\xd8" + b"\0" * max_bytes),
            ("cut.jpg", buffer.getvalue()[:1500])]


def workload(folder: Path, state: Path) -> list[tuple[str, bytes, str]]:
    """The bench's varied images, each with the label the model alone gives it (on the runtime the
    workers will use; its export is made here, in the stack's state folder `state`)."""
    from daas.classifier import Classifier
    from daas.images import WORKER_DRAFT_SIZE, decode

    files, model = build_images(folder), Classifier(config.load({**os.environ, "DAAS_STATE_DIR": str(state)}))
    labels = [model.classify([decode(data, 50_000_000, WORKER_DRAFT_SIZE)])[0].label for _, data in files]
    return [(name, data, label) for (name, data), label in zip(files, labels)]


# -- reading the logs and the timeline ---------------------------------------------------------------
# Celery's log lines, with the process id that celeryconfig's worker_log_format adds.
_TASK_LINE = re.compile(r"^\[(?P<time>[\d-]+ [\d:,]+): \w+/\w+ (?P<pid>\d+)\] "
                        r"Task daas\.classify\[(?P<id>[^]]+)\] (?P<event>received|succeeded)", re.M)


def _log_time(text: str) -> float:
    return datetime.strptime(text, "%Y-%m-%d %H:%M:%S,%f").timestamp()


def task_runs(workers_log: str) -> dict[str, dict[str, list[tuple[float, int]]]]:
    """{task id: {"received": [(time, pid)], "succeeded": [(time, pid)]}} from the workers' log."""
    runs: dict[str, dict[str, list]] = {}
    for match in _TASK_LINE.finditer(workers_log):
        entry = runs.setdefault(match["id"], {"received": [], "succeeded": []})
        entry[match["event"]].append((_log_time(match["time"]), int(match["pid"])))
    return runs


def reruns(runs: dict, kills: dict[int, float]) -> tuple[int, int]:
    """(tasks that succeeded twice although the first worker lived on, tasks that succeeded again
    because their first worker was SIGKILLed after finishing them but before deleting the message).
    The second kind is at-least-once delivery (the kill fell between the task and its ack; the
    results are overwritten with the same); the first would be a task redelivered while running."""
    twice = again = 0
    for run in runs.values():
        if len(run["succeeded"]) > 1:
            first_at, first_pid = min(run["succeeded"])
            if kills.get(first_pid, -1.0) >= first_at:
                again += 1
            else:
                twice += 1
    return twice, again


def orphans(runs: dict, pid: int) -> list[dict]:
    """The runs of the tasks that the killed worker `pid` took and did not finish."""
    return [run for run in runs.values() if any(p == pid for _, p in run["received"])
            and not any(p == pid for _, p in run["succeeded"])]


def orphans_recovered(runs: dict, pid: int, killed: float) -> float | None:
    """When the last task the killed worker `pid` held succeeded elsewhere (the kill time if it held
    none); None if one of them never did."""
    done = [min((t for t, p in run["succeeded"] if p != pid), default=None) for run in orphans(runs, pid)]
    return None if None in done else max(done, default=killed)


def worker_story(runs: dict, pid: int, killed: float, recovered: float | None, logs: dict[str, str],
                 records: list[dict], answered: list[float]) -> dict:
    """What the recovery from killing worker `pid` waited on, in seconds from the kill: when the
    killed worker took each task it left unfinished, when another took it and labelled it; workers
    that stopped consuming meanwhile; the scaler's ticks and the local endpoint's longest silence in
    that window (a stalled machine or endpoint shows there, not in the service's own logs).
    `answered`: the endpoint's answer times (answer_times of its log, read once for every fault)."""
    end, tasks = (recovered or killed + RECOVERY_TIMEOUT) + 1, []
    for run in orphans(runs, pid):
        taken = max(t for t, p in run["received"] if p == pid)
        again = min((t for t, p in run["received"] if p != pid and t > taken), default=None)
        done = min((t for t, p in run["succeeded"] if p != pid), default=None)
        tasks.append({"taken": round(taken - killed, 2), "taken_again": again and round(again - killed, 2),
                      "labelled": done and round(done - killed, 2)})
    stopped = [line for line in logs.get("workers", "").splitlines()
               if "no longer consuming" in line and killed <= _log_time(line[1:24]) <= end]
    ticks = [round(r["t"] - killed, 1) for r in records if killed <= r["t"] <= end]
    return {"orphans": tasks, "stopped_consuming": stopped, "scaler_ticks": ticks,
            "endpoint_silence_s": longest_silence(answered, killed, end)}


_ACCESS_TIME = re.compile(r"^\[(\d\d/\w{3}/\d{4}:\d\d:\d\d:\d\d [+-]\d{4})\] ", re.M)


def answer_times(aws_log: str) -> list[float]:
    """When the local endpoint answered each request (its access log has a second's resolution)."""
    return [datetime.strptime(stamp, "%d/%b/%Y:%H:%M:%S %z").timestamp() for stamp in _ACCESS_TIME.findall(aws_log)]


def longest_silence(times: list[float], start: float, end: float) -> float | None:
    """The longest time between two of the endpoint's answers `times` within [start, end], or None
    where its log had no times."""
    if not times:
        return None
    points = [start, *sorted(t for t in times if start <= t <= end), end]
    return round(max(b - a for a, b in zip(points, points[1:])), 2)


def first_line_after(log: str, text: str, after: float) -> float | None:
    for line in log.splitlines():
        if text in line:
            at = _log_time(line[1:24])
            if at >= after:
                return at
    return None


def ticks_missed(records: list[dict], interval: float) -> int:
    """Scaling ticks that should have happened between the recorded ones (beat ticks every interval)."""
    times = sorted(r["t"] for r in records)
    return sum(max(0, round((later - earlier) / interval) - 1) for earlier, later in zip(times, times[1:]))


def scale_to_zero_cycles(records: list[dict]) -> int:
    """How many times the pool went from some workers to none."""
    sizes = [r["running"] + r["starting"] for r in sorted(records, key=lambda r: r["t"])]
    return sum(1 for before, after in zip(sizes, sizes[1:]) if before > 0 and after == 0)


def error_lines(logs: dict[str, str]) -> list[str]:
    """Every ERROR or CRITICAL line (and traceback start) of every log, prefixed with the log's name."""
    return [f"{name}: {line}" for name, text in logs.items() for line in text.splitlines() if ERROR_LINE.search(line)]


def latency_ms(seconds: list[float]) -> dict[str, float]:
    return {**percentiles(seconds), "count": len(seconds)} if seconds else {}


def passed(report: dict) -> bool:
    images = report["images"]
    return (report["drained"] and images["lost"] == 0 and images["stuck"] == 0 and images["wrong"] == 0
            and images["requests failed twice"] == 0 and not report["error_lines"])


def format_report(report: dict) -> str:
    images = report["images"]
    lines = [f"soak: {report['minutes']:g} minutes ({report['ran_s']} s of cycles), {report['cycles']} cycles "
             f"({'passed' if passed(report) else 'FAILED'})"]
    lines += [f"  {name:<36} {value}" for name, value in images.items()]
    lines.append(f"  {'tasks run twice':<36} {report['run_twice']}")
    lines.append(f"  {'re-run: worker killed before its ack':<36} {report['rerun_after_kill']}")
    lines += [f"    task {task}: succeeded at (time, pid) {runs}" for task, runs in report["succeeded_more_than_once"].items()]
    for kind, latency in report["latency_ms"].items():
        lines.append(f"  {kind + ' latency (ms)':<36} p50 {latency.get('p50')}  p99 {latency.get('p99')}  "
                     f"({latency.get('count', 0)} images)")
    for kind, seconds in report["recovery_s"].items():
        lines.append(f"  {'longest recovery, ' + kind:<36} {seconds} s")
    for fault in report["faults"]:  # a slow recovery from a worker kill, told (the test's bound is 30 s)
        if fault["kind"] == "worker" and (fault["recovery_s"] is None or fault["recovery_s"] > 25):
            lines.append(f"    worker {fault['detail']} killed, recovered after {fault['recovery_s']} s: {fault['story']}")
    unrecovered = [f["kind"] for f in report["faults"] if f["recovery_s"] is None]
    if unrecovered:
        lines.append(f"  {'NOT recovered':<36} {', '.join(unrecovered)}")
    lines.append(f"  {'scaler ticks recorded / missed':<36} {report['ticks']['recorded']} / {report['ticks']['missed']}")
    lines.append(f"  {'housekeeping runs':<36} {report['housekeeping_runs']}")
    lines.append(f"  {'scale-to-zero cycles':<36} {report['scale_to_zero_cycles']}")
    lines.append(f"  {'ERROR/CRITICAL log lines':<36} {len(report['error_lines'])}")
    lines += [f"    {line[:300]}" for line in report["error_lines"]]
    return "\n".join(lines)


def plot(report: dict, path: Path) -> None:
    """Queue and workers (top) and each image's latency (bottom) on one timeline, faults marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t0 = report["started"]
    fig, (queue_ax, latency_ax) = plt.subplots(2, 1, figsize=(11, 6.5), sharex=True)
    records = report["timeline"]
    t = [r["t"] - t0 for r in records]
    queue_ax.plot(t, [r["visible"] for r in records], label="waiting", color="tab:blue")
    queue_ax.plot(t, [r["in_flight"] for r in records], label="in flight", color="tab:cyan")
    queue_ax.step(t, [r["running"] + r["starting"] for r in records], where="post", label="workers", color="tab:green")
    queue_ax.set_ylabel("messages / workers")
    queue_ax.legend(loc="upper right")
    colours = {"sync": "tab:blue", "upload": "tab:green", "bad": "tab:gray"}
    for kind, colour in colours.items():
        points = [(i["t"] - t0, i["latency"]) for i in report["sent"] if i["kind"] == kind and i["latency"]]
        if points:
            latency_ax.scatter(*zip(*points), s=4, color=colour, label=kind)
    latency_ax.set_ylabel("latency (s)")
    latency_ax.set_xlabel("seconds")
    latency_ax.legend(loc="upper right")
    for fault in report["faults"]:
        for ax in (queue_ax, latency_ax):
            ax.axvline(fault["t"] - t0, color="tab:red", alpha=0.4, linewidth=0.8)
        queue_ax.annotate(fault["kind"], (fault["t"] - t0, 1), xycoords=("data", "axes fraction"),
                          rotation=90, fontsize=7, va="top", color="tab:red")
    queue_ax.set_title(f"daas soak: {report['minutes']:g} minutes, {report['images']['sent']} images, "
                       f"{len(report['faults'])} faults")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run(out: Path, minutes: float = 30.0) -> dict:
    """Run the soak for `minutes`, then wait for every image; returns (and writes) the report."""
    with workspace() as tmp:
        files = workload(tmp / "images", tmp / "state")
        soak = Soak(minutes, tmp)
        print(f"soak: {minutes:g} minutes of bursts, uploads, faults and idle gaps, one line per cycle", flush=True)
        soak.start()
        try:
            cycles = soak.cycles(files)
            soak.flower_caught_up()
            drained = soak.drain()
        finally:
            soak.stop()
        report = soak.report(cycles, drained)
        out.mkdir(parents=True, exist_ok=True)
        (out / "soak.json").write_text(json.dumps(report, indent=1))
        plot(report, out / "soak.png")
        return report


OUTPUTS = ("soak.json", "soak.png")  # what run_from writes in its folder


def run_from(args: argparse.Namespace, out: Path) -> dict:
    """The report of `python -m daas bench soak` (daas.bench.main prints it)."""
    return run(out, minutes=args.minutes)
