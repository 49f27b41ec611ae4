"""`python -m daas up` as a user runs it: the whole stack, elastic from zero, and Ctrl-C."""
import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import requests

from daas import config, runtimes
from daas.stack import free_port
from tests.conftest import skimage_photo, wait_for


def session_processes(sid: int) -> list[str]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError, IndexError):
            continue
        if int(fields[3]) == sid and fields[0] != "Z":  # field 6 of /proc/PID/stat: session id
            found.append(stat.parent.name)
    return found



def test_up_scales_from_zero_to_zero_and_ctrl_c_leaves_nothing(tmp_path):
    ports = {"DAAS_WEB_PORT": free_port(), "DAAS_AWS_PORT": free_port(), "DAAS_FLOWER_PORT": free_port()}
    env = {**os.environ, **{k: str(v) for k, v in ports.items()}, "DAAS_STATE_DIR": str(tmp_path / "state"),
           "DAAS_IDLE_TIMEOUT": "3", "DAAS_VISIBILITY_TIMEOUT": "4", "DAAS_SCALE_INTERVAL": "1", "DAAS_FLOWER_PASSWORD": "s3cret",
           "DAAS_MODEL_CACHE": str(tmp_path / "models")}  # a fresh machine's: `up` makes the export
    exports = runtimes.resolve(config.load(env))[0] != "torch"
    up = subprocess.Popen([sys.executable, "-m", "daas", "up"], env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, start_new_session=True)
    web = f"http://127.0.0.1:{ports['DAAS_WEB_PORT']}"
    try:
        banner = ""
        for line in up.stdout:
            banner += line
            if "Ctrl-C" in line:
                break
        assert web in banner and "from DAAS_FLOWER_PASSWORD" in banner, banner
        assert "s3cret" not in banner  # a password is never printed
        # The model was exported before `up` said so, as the worker AMI's build does: no worker pays it
        # (torch, the runtime on a GPU, runs no export).
        assert bool(list((tmp_path / "models").glob("efficientnet_lite0-*.onnx"))) == exports, banner
        assert requests.get(f"{web}/healthz", timeout=10).status_code == 200
        status = requests.get(f"{web}/api/status", timeout=10).json()
        assert status["workers"] == {"running": 0, "starting": 0, "retiring": 0} and status["provider"] == "local"

        # 30 images through the CLI, with zero workers at the start.
        folder = tmp_path / "photos"
        folder.mkdir()
        for i in range(30):
            (folder / f"cup_{i:02}.png").write_bytes(skimage_photo("coffee.png"))
        cli = subprocess.run([sys.executable, "-m", "daas", "classify", str(folder), "--url", web,
                              "--csv", str(tmp_path / "labels.csv")], env=env, capture_output=True,
                             text=True, timeout=180)
        assert cli.returncode == 0, cli.stdout + cli.stderr
        assert cli.stdout.count(": espresso (") == 30
        rows = list(csv.DictReader(open(tmp_path / "labels.csv")))
        assert len(rows) == 30 and {row["label"] for row in rows} == {"espresso"}

        # Flower saw the autoscaled workers' tasks.
        flower = f"http://127.0.0.1:{ports['DAAS_FLOWER_PORT']}"

        def succeeded() -> list[dict]:
            tasks = requests.get(f"{flower}/api/tasks", auth=("admin", "s3cret"), timeout=10).json().values()
            return [t for t in tasks if t["name"] == "daas.classify" and t["state"] == "SUCCESS"]

        # One task per chunk of at most DAAS_IMAGES_PER_TASK images, each returning its image count.
        wait_for(lambda: sum(int(t["result"]) for t in succeeded()) >= 30, 30, "Flower to list the 30 images' tasks")
        assert all("-worker-" in t["worker"] for t in succeeded())
        assert sum(requests.get(f"{web}/api/status", timeout=10).json()["images_per_minute"]) == 30

        # Workers were started for the backlog, and power off once idle.
        timeline = subprocess.run([sys.executable, "-m", "daas", "timeline", "--plot", str(tmp_path / "s.png")],
                                  env=env, capture_output=True, text=True, timeout=60)
        assert timeline.returncode == 0 and (tmp_path / "s.png").read_bytes()[:4] == b"\x89PNG"
        wait_for(lambda: requests.get(f"{web}/api/status", timeout=10).json()["workers"]
                 == {"running": 0, "starting": 0, "retiring": 0}, 60, "workers to power off")
        assert not subprocess.run(["pgrep", "-f", "daas worker", "-s", str(up.pid)]).returncode == 0

        # A crashed controller is restarted, as a supervisor would.
        def controller_pid() -> int | None:
            found = subprocess.run(["pgrep", "-f", "daas controller", "-s", str(up.pid)], capture_output=True, text=True)
            return int(found.stdout.split()[0]) if found.returncode == 0 else None

        crashed = controller_pid()
        os.kill(crashed, signal.SIGKILL)
        wait_for(lambda: controller_pid() not in (None, crashed), 15, "the controller to be restarted")
    finally:
        up.send_signal(signal.SIGINT)
        try:
            up.wait(60)
        except subprocess.TimeoutExpired:  # fail, but leave no stack behind for the tests after this one
            for pid in session_processes(up.pid):
                os.kill(int(pid), signal.SIGKILL)
            subprocess.run(["pkill", "-9", "-f", f"local_endpoint -H 127.0.0.1 -p {ports['DAAS_AWS_PORT']}"])
            raise
    wait_for(lambda: not session_processes(up.pid), 30, "every process of the stack to stop")
    for port in ports.values():
        with __import__("socket").socket() as sock:
            assert sock.connect_ex(("127.0.0.1", port)) != 0, f"port {port} still open"
    # Production servers only (gunicorn for the web tier and the endpoint), and a clean run.
    logs = {path.name: path.read_text(errors="replace") for path in (tmp_path / "state" / "logs").glob("*.log")}
    assert {"web.log", "aws.log", "controller.log", "beat.log", "flower.log", "workers.log"} <= set(logs)
    assert "Starting gunicorn" in logs["web.log"] and "Starting gunicorn" in logs["aws.log"]
    assert not exports or "loads on openvino" in logs["export.log"] and "exporting" not in logs["workers.log"]
    for name, text in logs.items():
        for bad in ("development server", "Unrecoverable", "Error in timer", "CRITICAL"):
            assert bad not in text, f"{name}: {bad}"


def test_local_endpoint_memo_matches_moto():
    """The endpoint's memoised service list is what moto computes per request (guards a moto upgrade)."""
    from moto import backends

    from daas import local_endpoint

    assert local_endpoint._list_of_moto_modules() == frozenset(backends.list_of_moto_modules())
    assert {"s3", "sqs", "sns", "ec2"} <= local_endpoint._list_of_moto_modules()


def test_a_closed_terminal_stops_up_and_a_ctrl_c_during_the_stop_kills_everything(tmp_path):
    """A closed terminal (SIGHUP) stops the stack: its children run in a process group of their own,
    which the hangup does not reach. Impatient people press Ctrl-C during a stop: it kills what is
    left, the local endpoint included (it had been left running, holding its port against the next
    `up`); every port is free after."""
    ports = {"DAAS_WEB_PORT": free_port(), "DAAS_AWS_PORT": free_port(), "DAAS_FLOWER_PORT": free_port()}
    env = {**os.environ, **{k: str(v) for k, v in ports.items()}, "DAAS_STATE_DIR": str(tmp_path / "state")}
    up = subprocess.Popen([sys.executable, "-m", "daas", "up"], env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, start_new_session=True)
    endpoint = f"local_endpoint -H 127.0.0.1 -p {ports['DAAS_AWS_PORT']}"
    try:
        for line in up.stdout:
            if "Ctrl-C stops everything" in line:
                break
        up.send_signal(signal.SIGHUP)
        for line in up.stdout:
            if line.startswith("stopping all processes"):
                break
        time.sleep(0.3)  # inside the stop: its children are warm-stopping
        up.send_signal(signal.SIGINT)
        up.wait(30)
        wait_for(lambda: subprocess.run(["pgrep", "-f", endpoint]).returncode != 0, 10, "the endpoint to be gone")
        wait_for(lambda: not session_processes(up.pid), 10, "every process of the stack to be gone")
        for port in ports.values():
            with __import__("socket").socket() as sock:
                assert sock.connect_ex(("127.0.0.1", port)) != 0, f"port {port} still open"
    finally:
        up.kill()
        for pid in session_processes(up.pid):
            os.kill(int(pid), signal.SIGKILL)
        subprocess.run(["pkill", "-9", "-f", endpoint])


def test_up_refuses_ports_that_another_stack_holds_instead_of_sharing_them(tmp_path):
    """Our servers bind with SO_REUSEPORT, so a second `up` beside one left running would share its
    ports, and the kernel would split requests between two endpoints' buckets and queues: `up`
    names the port and its variable, and starts nothing."""
    import socket

    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    held = holder.getsockname()[1]
    aws_port = free_port()
    env = {**os.environ, "DAAS_STATE_DIR": str(tmp_path / "state"), "DAAS_WEB_PORT": str(free_port()),
           "DAAS_FLOWER_PORT": str(held), "DAAS_AWS_PORT": str(aws_port)}
    with holder:
        up = subprocess.run([sys.executable, "-m", "daas", "up"], env=env, capture_output=True, text=True, timeout=60)
    assert up.returncode == 2, up.stdout + up.stderr
    assert f"port {held} (DAAS_FLOWER_PORT) in use" in up.stderr and "Traceback" not in up.stderr
    assert not (tmp_path / "state" / "logs").exists()  # nothing was started
    with socket.socket() as sock:
        assert sock.connect_ex(("127.0.0.1", aws_port)) != 0
