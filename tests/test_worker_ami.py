"""worker_ami/: the user data, the systemd unit and the Packer template (IAM: tests/test_iam.py).

What needs AWS itself (building the AMI, booting an instance) cannot run here; what can is checked:
the files parse, and the user data writes the env file the worker reads back.
"""
from __future__ import annotations

import configparser
import os
import re
import shutil
import subprocess
import textwrap
from pathlib import Path

import pytest

from daas import config, providers

AMI = Path(__file__).resolve().parent.parent / "worker_ami"
POWEROFF = "sudo -n /usr/bin/systemctl poweroff"


# -- user data -------------------------------------------------------------------------------------
def _render(settings: config.Settings) -> str:
    return providers.render_user_data(settings)


def test_user_data_is_a_bash_script_with_the_stack_settings(tmp_path):
    script = _render(config.Settings(stack="prod", region="eu-west-1", idle_timeout=30.0))
    assert script.startswith("#!/bin/bash\n")
    assert "${" not in script  # every placeholder filled, no stray shell expansion
    for line in ("DAAS_INPUT_BUCKET=prod-input", "DAAS_OUTPUT_BUCKET=prod-output", "DAAS_QUEUE=prod-classify",
                 "AWS_REGION=eu-west-1", "DAAS_IDLE_TIMEOUT=30.0", f"DAAS_POWEROFF_COMMAND={POWEROFF}"):
        assert f"\n{line}\n" in script
    (tmp_path / "user-data").write_text(script)
    subprocess.run(["bash", "-n", str(tmp_path / "user-data")], check=True)


def _run_user_data(tmp_path, settings: config.Settings) -> None:
    """Run the script with /etc redirected, and fake systemctl, shutdown and instance metadata (curl)."""
    script = _render(settings).replace("/etc/daas", str(tmp_path / "etc"))
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fakes = {"systemctl": f'echo "$@" > {tmp_path}/systemctl.args',
             "shutdown": f'echo "$@" > {tmp_path}/shutdown.args',
             "curl": 'case "$*" in *api/token*) echo T0KEN ;; *"token: T0KEN"*instance-id*) echo i-0123abcd ;; '
                     '*) exit 22 ;; esac'}
    for name, body in fakes.items():
        (bin_dir / name).write_text(f"#!/bin/sh\n{body}\n")
        (bin_dir / name).chmod(0o755)
    subprocess.run(["bash", "-c", script], check=True, env={**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"})


def test_user_data_writes_the_env_file_the_worker_reads(tmp_path):
    """The env file round-trips the settings and names the worker after its instance."""
    settings = config.Settings(stack="prod", region="eu-west-1", idle_timeout=45, worker_concurrency=2)
    _run_user_data(tmp_path, settings)
    assert (tmp_path / "systemctl.args").read_text().split() == ["enable", "--now", "daas-worker.service"]
    lines = (tmp_path / "etc" / "worker.env").read_text().splitlines()
    env = dict(line.split("=", 1) for line in lines)
    assert set(env) == set(providers.WORKER_ENV) | {"DAAS_POWEROFF_COMMAND", "DAAS_WORKER_HOST"}
    loaded = config.load(env)
    for field in ("region", "stack", "input_bucket", "output_bucket", "queue", "idle_timeout",
                  "worker_concurrency", "visibility_timeout", "model", "heartbeat_interval", "max_lifetime"):
        assert getattr(loaded, field) == getattr(settings, field), field
    assert loaded.poweroff_command == POWEROFF and loaded.worker_host == "i-0123abcd"


def test_the_instance_powers_itself_off_after_its_lifetime_whatever_happens(tmp_path):
    """The dead man's switch: retired at DAAS_MAX_LIFETIME, ended by the controller a join timeout
    later, and powered off by itself a join timeout after that."""
    settings = config.Settings(max_lifetime=3600, ec2_join_timeout=600)
    _run_user_data(tmp_path, settings)
    assert (tmp_path / "shutdown.args").read_text().split() == ["-P", "+80"]
    (tmp_path / "forever").mkdir()
    _run_user_data(tmp_path / "forever", config.Settings(max_lifetime=0))
    assert not (tmp_path / "forever" / "shutdown.args").exists()


def test_the_poweroff_command_is_exactly_what_sudoers_allows():
    rules = [line for line in (AMI / "daas-sudoers").read_text().splitlines() if line and not line.startswith("#")]
    assert rules == ["daas ALL=(root) NOPASSWD: /usr/bin/systemctl poweroff"]
    assert POWEROFF.endswith(rules[0].split("NOPASSWD: ")[1])
    if shutil.which("visudo"):
        subprocess.run(["visudo", "-cf", str(AMI / "daas-sudoers")], check=True, capture_output=True)


# -- systemd unit ----------------------------------------------------------------------------------
def _unit() -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # systemd keys are case-sensitive
    parser.read(AMI / "daas-worker.service")
    return parser


def test_systemd_unit_runs_the_worker_as_daas():
    unit = _unit()
    service = unit["Service"]
    assert service["ExecStart"] == "/opt/daas/.venv/bin/python -m daas worker"
    assert service["User"] == "daas" and service["WorkingDirectory"] == "/opt/daas"
    assert service["EnvironmentFile"] == "/etc/daas/worker.env"
    assert service["Restart"] == "on-failure"  # an idle exit (0) is not restarted
    assert service["KillSignal"] == "SIGTERM"
    assert int(service["TimeoutStopSec"]) > config.Settings().task_time_limit  # the task in hand ends
    # It says when it consumes and pings systemd's watchdog; systemd's limit is above the worker's own.
    assert service["Type"] == "notify" and int(service["WatchdogSec"]) > config.Settings().stall_timeout
    # Until it consumes, its own watchdog gives it STARTUP_TIMEOUT and says why it ends it; systemd waits
    # longer than that, its imports and the watchdog's tick (5 s at most).
    assert int(service["TimeoutStartSec"]) >= config.STARTUP_TIMEOUT + 20
    # A worker that keeps failing powers its instance off instead of billing on for nothing.
    assert unit["Unit"]["StartLimitAction"] == "poweroff" and int(unit["Unit"]["StartLimitBurst"]) >= 3
    assert "network-online.target" in unit["Unit"]["After"] and "network-online.target" in unit["Unit"]["Wants"]
    assert "NoNewPrivileges" not in service  # it would stop the sudo power-off
    assert unit["Install"]["WantedBy"] == "multi-user.target"  # so that `systemctl enable` works


@pytest.mark.skipif(not shutil.which("systemd-analyze"), reason="systemd-analyze is not installed")
def test_systemd_analyze_verifies_the_unit(tmp_path):
    # verify checks that ExecStart's binary exists: point it at /bin/true, keep the rest.
    text = (AMI / "daas-worker.service").read_text()
    text = text.replace("ExecStart=/opt/daas/.venv/bin/python -m daas worker", "ExecStart=/bin/true")
    text = text.replace("WorkingDirectory=/opt/daas", f"WorkingDirectory={tmp_path}")
    (tmp_path / "daas-worker.service").write_text(text)
    done = subprocess.run(["systemd-analyze", "verify", "--man=no", str(tmp_path / "daas-worker.service")],
                          capture_output=True, text=True)
    # Lines about the unit itself are errors; other units on this machine are not ours to judge.
    ours = [line for line in done.stderr.splitlines() if "daas-worker.service" in line]
    assert not ours, done.stderr


# -- Packer template -------------------------------------------------------------------------------
PACKER = AMI / "daas-worker.pkr.hcl"


def _provisioning_script() -> str:
    text = PACKER.read_text()
    return textwrap.dedent(re.search(r"<<-EOT\n(.*?)\n\s*EOT\n", text, re.S).group(1))


def test_packer_template_installs_the_project_and_the_unit(tmp_path):
    text = PACKER.read_text()
    assert 'source "amazon-ebs"' in text
    assert re.search(r'ami_name\s*=\s*"daas-worker-\$\{local\.timestamp\}"', text)
    for variable in ("region", "instance_type", "subnet_id", "source_ami_name", "source_ami_owner"):
        assert f'variable "{variable}"' in text
    # Every ${...} is HCL's own (variables, locals, paths); shell variables must be written $NAME.
    assert set(re.findall(r"\$\{(\w+)", text)) <= {"var", "local", "path"}
    script = _provisioning_script()
    for step in ("-m venv /opt/daas/.venv", "pip install -q -r requirements.txt", "pip install -q --no-deps -e .",
                 "DAAS_MODEL_CACHE=/opt/daas/models /opt/daas/.venv/bin/python -m daas export",
                 "useradd --system", "worker_ami/daas-worker.service /etc/systemd/system/daas-worker.service",
                 "worker_ami/daas-sudoers /etc/sudoers.d/daas", "visudo -cf"):
        assert step in script, step
    assert "systemctl enable" not in script  # the user data starts it
    (tmp_path / "provision.sh").write_text(script)
    subprocess.run(["bash", "-n", str(tmp_path / "provision.sh")], check=True)


@pytest.mark.skipif(not shutil.which("packer"), reason="packer is not installed")
def test_packer_validates_the_template():
    subprocess.run(["packer", "validate", "-syntax-only", str(PACKER)], check=True)


# -- IAM policies ----------------------------------------------------------------------------------
