"""control_host/: the systemd units of the web tier, the controller, beat and Flower on AWS.

They cannot run here; what can be checked is: each unit runs a command this project has, shares
the settings file and the state folder with the others, restarts what exits, and has systemd's
watchdog where the process pings it (the controller, beat) with a limit above the process's own.
"""
from __future__ import annotations

import configparser
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

from daas import cli, config

HOST = Path(__file__).resolve().parent.parent / "control_host"
UNITS = ("daas-web.service", "daas-controller.service", "daas-beat.service", "daas-flower.service")


def unit(name: str) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str
    parser.read(HOST / name)
    return parser


@pytest.mark.parametrize("name", UNITS)
def test_each_unit_runs_a_command_of_ours_with_the_shared_settings_and_state(name):
    service = unit(name)["Service"]
    argv = shlex.split(service["ExecStart"])
    assert argv[0] == "/opt/daas/.venv/bin/python"
    if argv[1:3] == ["-m", "daas"]:
        assert argv[3] in cli.parser()._subparsers._group_actions[0].choices
    else:
        assert argv[1:5] == ["-m", "celery", "-A", "daas.celery_app"] and argv[5] in ("beat", "flower")
    assert service["EnvironmentFile"] == "/etc/daas/daas.env" and service["User"] == "daas"
    assert service["Environment"] == "DAAS_STATE_DIR=/var/lib/daas" and service["StateDirectory"] == "daas"
    assert service["Restart"] == "always"
    assert unit(name)["Unit"]["PartOf"] == "daas.target" and name in unit("daas.target")["Unit"]["Wants"]


def test_the_processes_that_ping_systemds_watchdog_have_one_above_their_own_limit():
    controller = unit("daas-controller.service")["Service"]
    assert controller["Type"] == "notify" and int(controller["WatchdogSec"]) > config.Settings().stall_timeout
    assert int(controller["TimeoutStartSec"]) >= config.STARTUP_TIMEOUT + 20  # its own watchdog says why first
    assert "ExecStartPre" not in controller  # no `daas init`: its role may create no bucket, queue or topic
    beat = unit("daas-beat.service")["Service"]
    assert int(beat["WatchdogSec"]) > 3 * config.Settings().scale_interval
    assert unit("daas-web.service")["Service"]["Type"] == "notify"  # gunicorn's arbiter sends READY=1


def test_flowers_credentials_never_appear_on_its_command_line():
    assert "basic" not in unit("daas-flower.service")["Service"]["ExecStart"]
    example = dict(line.split("=", 1) for line in (HOST / "daas.env.example").read_text().splitlines()
                   if line and not line.startswith("#"))
    # the web tier and Flower read the same two settings (the status panel asks Flower for counts)
    assert {"DAAS_FLOWER_USER", "DAAS_FLOWER_PASSWORD"} <= set(example) <= set(config.ENV_VARS.values())


def test_the_readme_lists_every_file():
    listed = set(re.findall(r"`([\w.-]+\.(?:service|target|example))`", (HOST / "README.md").read_text()))
    assert listed == {p.name for p in HOST.iterdir() if p.suffix in (".service", ".target", ".example")}


@pytest.mark.skipif(not shutil.which("systemd-analyze"), reason="systemd-analyze is not installed")
@pytest.mark.parametrize("name", UNITS)
def test_systemd_analyze_verifies_the_unit(tmp_path, name):
    text = re.sub(r"^(ExecStart(?:Pre)?)=.*$", r"\1=/bin/true", (HOST / name).read_text(), flags=re.M)
    (tmp_path / name).write_text(text.replace("WorkingDirectory=/opt/daas", f"WorkingDirectory={tmp_path}"))
    done = subprocess.run(["systemd-analyze", "verify", "--man=no", str(tmp_path / name)], capture_output=True, text=True)
    ours = [line for line in done.stderr.splitlines() if name in line and "daas.target" not in line]
    assert not ours, done.stderr


def test_systemd_waits_longer_than_the_web_tier_lets_its_waiting_requests_finish():
    """On stop, gunicorn gives a waiting POST /classify until its result timeout (plus a margin) to
    answer; systemd must not SIGKILL the web tier before that (issue 16: gunicorn allowed 30 s)."""
    from daas import serving

    defaults = config.Settings()
    graceful = serving.gunicorn_options(defaults.host, defaults.web_port,
                                        **cli.web_serving(defaults))["graceful_timeout"]
    assert defaults.result_timeout < graceful < int(unit("daas-web.service")["Service"]["TimeoutStopSec"])
    # The web tier's options follow the settings: a longer result timeout, a longer graceful stop.
    slow = config.load({"DAAS_RESULT_TIMEOUT": "120"})
    assert cli.web_serving(slow)["graceful_timeout"] == 120 + config.GRACEFUL_MARGIN
    assert serving.gunicorn_options("h", 1, **cli.web_serving(slow))["graceful_timeout"] == 130
