"""worker_ami/: the user data, the systemd unit, the Packer template and the IAM policies.

What needs AWS itself (building the AMI, booting an instance) cannot run here; what can is checked:
the files parse, the user data writes the env file the worker reads back, and the policies allow
every AWS call the web tier, controller and worker actually make (recorded by a local endpoint).
"""
from __future__ import annotations

import base64
import configparser
import fnmatch
import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

import pytest
import requests

from daas import aws, config, providers
from daas.stack import Stack, child_env, free_port, wait_for_http
from tests.conftest import skimage_photo

AMI = Path(__file__).resolve().parent.parent / "worker_ami"
POWEROFF = "sudo -n /usr/bin/systemctl poweroff"
MOTO_ACCOUNT = "123456789012"


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
                 '/opt/daas/.venv/bin/python -c "from daas.model import Classifier; Classifier()"',
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
def _listed(value) -> list:
    return value if isinstance(value, list) else [value]


def _policy(name: str) -> dict:
    return json.loads((AMI / "iam" / name).read_text())


def _grants(name: str) -> set[tuple[str, str]]:
    return {(action, resource) for statement in _policy(name)["Statement"]
            for action in _listed(statement["Action"]) for resource in _listed(statement.get("Resource", "-"))}


# Celery events and remote control: SNS fanout to per-process queues (daas/transport.py).
# Per-process queues are tagged at creation and renewed (their lease, daas/leases.py): SQS wants
# sqs:TagQueue beside sqs:CreateQueue to tag on creation.
EVENTS = {"sqs:CreateQueue", "sqs:TagQueue", "sqs:DeleteQueue", "sqs:SetQueueAttributes", "sqs:GetQueueAttributes",
          "sqs:GetQueueUrl", "sqs:SendMessage", "sqs:ReceiveMessage", "sqs:DeleteMessage",
          "sqs:ChangeMessageVisibility", "sns:CreateTopic", "sns:Publish", "sns:Subscribe", "sns:Unsubscribe",
          "sns:ListSubscriptionsByTopic"}
# The exact actions of each policy: granting one more has to be a deliberate change here too.
ACTIONS = {
    "worker-trust-policy.json": {"sts:AssumeRole"},
    "worker-policy.json": {"s3:GetObject", "s3:PutObject", "s3:ListBucket", "s3:DeleteObject",
                           "sqs:ReceiveMessage", "sqs:DeleteMessage",
                           "sqs:ChangeMessageVisibility", "sqs:GetQueueUrl", "sqs:GetQueueAttributes",
                           "sqs:SendMessage", "sqs:ListQueues", *EVENTS},
    "controller-policy.json": {"ec2:RunInstances", "ec2:CreateTags", "ec2:DescribeInstances", "ec2:TerminateInstances",
                               "iam:PassRole", "s3:DeleteObject",
                               "sqs:SendMessage", "sqs:GetQueueUrl", "sqs:GetQueueAttributes", "sqs:ReceiveMessage",
                               "sqs:DeleteMessage", "sqs:ChangeMessageVisibility", "sqs:ListQueues",
                               "sqs:CreateQueue", "s3:CreateBucket", "s3:ListBucket", "s3:PutObject",
                               "s3:GetObject", "sns:ListTopics", "sqs:ListQueueTags", *EVENTS},
}
# The only actions allowed on every resource: neither can be scoped to one.
UNSCOPABLE = {"ec2:DescribeInstances", "sqs:ListQueues", "sns:ListTopics"}


@pytest.mark.parametrize("name", sorted(ACTIONS))
def test_policy_grants_exactly_the_listed_actions(name):
    policy = _policy(name)
    assert policy["Version"] == "2012-10-17"
    actions = set()
    for statement in policy["Statement"]:
        assert statement["Effect"] == "Allow" and statement.get("Sid")
        assert not {"NotAction", "NotResource", "NotPrincipal"} & statement.keys()
        statement_actions = _listed(statement["Action"])
        assert not [a for a in statement_actions if "*" in a], "no wildcard actions"
        if "*" in _listed(statement.get("Resource", [])):
            assert set(statement_actions) <= UNSCOPABLE, statement["Sid"]
        actions |= set(statement_actions)
    assert actions == ACTIONS[name]
    # Only the two documented placeholders (README: rendered with sed before create-policy).
    assert set(re.findall(r"\$\{(\w+)\}", json.dumps(policy))) <= {"Region", "Account"}


EVENT_RESOURCES = ("arn:aws:sqs:${Region}:${Account}:*-daas-pidbox", "arn:aws:sqs:${Region}:${Account}:daas-celeryev-*",
                   "arn:aws:sns:${Region}:${Account}:daas-events*", "arn:aws:sns:${Region}:${Account}:daas-pidbox*")


def _without_events(grants: set[tuple[str, str]]) -> set[tuple[str, str]]:
    """The grants outside the per-process event and remote-control queues and topics."""
    return {(action, resource) for action, resource in grants if resource not in EVENT_RESOURCES}


def test_worker_reads_inputs_and_results_writes_only_results_and_consumes_only_the_classify_queue():
    classify = "arn:aws:sqs:${Region}:${Account}:daas-classify"
    assert _without_events(_grants("worker-policy.json")) == {
        ("sqs:SendMessage", "arn:aws:sqs:${Region}:${Account}:daas-replies-*"),  # results pushed to the web tier
        ("s3:GetObject", "arn:aws:s3:::daas-input/*"), ("s3:ListBucket", "arn:aws:s3:::daas-input"),
        ("s3:PutObject", "arn:aws:s3:::daas-output/*"),
        ("s3:GetObject", "arn:aws:s3:::daas-output/*"), ("s3:ListBucket", "arn:aws:s3:::daas-output"),
        ("s3:DeleteObject", "arn:aws:s3:::daas-output/workers/*"), ("sqs:ListQueues", "*"),
        *{(action, classify) for action in ("sqs:ReceiveMessage", "sqs:DeleteMessage", "sqs:ChangeMessageVisibility",
                                            "sqs:GetQueueUrl", "sqs:GetQueueAttributes")}}


def test_the_worker_may_list_each_bucket_it_reads_so_a_missing_key_reads_as_404():
    """S3 answers a GetObject of a missing key with 403 AccessDenied, not 404, to a caller without
    s3:ListBucket on the bucket. Issue 16: a worker that could not list the input bucket took an
    upload deleted from it for a permission problem, and failed the image's whole chunk."""
    grants = _grants("worker-policy.json")
    read = {resource.removesuffix("/*") for action, resource in grants if action == "s3:GetObject"}
    listed = {resource for action, resource in grants if action == "s3:ListBucket"}
    assert read == listed == {"arn:aws:s3:::daas-input", "arn:aws:s3:::daas-output"}
    policy = _policy("worker-policy.json")
    assert _allows(policy, "s3:ListBucket", "arn:aws:s3:::daas-input")
    assert not _allows(policy, "s3:ListBucket", "arn:aws:s3:::daas-other")


def test_controller_launches_only_tagged_workers_and_passes_only_the_worker_role():
    statements = {s["Sid"]: s for s in _policy("controller-policy.json")["Statement"]}
    run = [s for s in statements.values() if s["Action"] == "ec2:RunInstances"]
    tagged = [s for s in run if any(r.endswith(":instance/*") for r in _listed(s["Resource"]))]
    assert [s["Condition"] for s in tagged] == [{"StringEquals": {"aws:RequestTag/daas:role": "worker"}}]
    images = [s for s in run if any("::image/" in r for r in _listed(s["Resource"]))]
    assert [s["Condition"] for s in images] == [{"StringEquals": {"ec2:ResourceTag/daas:role": "worker-ami"}}]
    # Every RunInstances statement without a condition covers only network resources.
    for statement in run:
        if "Condition" not in statement:
            assert all(re.search(r":(subnet|security-group|network-interface)/", r) for r in statement["Resource"])
    # It ends only this stack's workers (instances that never joined, stopped beating or are too old).
    terminate = [s for s in statements.values() if s["Action"] == "ec2:TerminateInstances"]
    assert [s["Condition"] for s in terminate] == [
        {"StringEquals": {"ec2:ResourceTag/daas:role": "worker", "ec2:ResourceTag/daas:stack": "daas"}}]
    assert [s["Resource"] for s in terminate] == ["arn:aws:ec2:${Region}:${Account}:instance/*"]
    deletes = {r for s in statements.values() if "s3:DeleteObject" in _listed(s["Action"]) for r in _listed(s["Resource"])}
    assert deletes == {"arn:aws:s3:::daas-output/workers/*"}  # heartbeat records only, never images or results
    tags = [s for s in statements.values() if s["Action"] == "ec2:CreateTags"]
    assert [s["Condition"] for s in tags] == [{"StringEquals": {"ec2:CreateAction": "RunInstances"}}]
    passes = [s for s in statements.values() if s["Action"] == "iam:PassRole"]
    assert [s["Resource"] for s in passes] == ["arn:aws:iam::${Account}:role/daas-worker"]
    # It reaps the dead-letter queue but never consumes the classify queue (that is the workers' job).
    for action, resource in _without_events(_grants("controller-policy.json")):
        if action in ("sqs:ReceiveMessage", "sqs:DeleteMessage", "sqs:ChangeMessageVisibility"):
            # daas-replies-*: each web process's own reply queue (daas.replies)
            assert resource.rsplit(":", 1)[1] in ("daas-control", "daas-classify-dlq", "daas-replies-*")


# -- the policies against the calls the real processes make -----------------------------------------
def _call(entry: dict) -> tuple[str, str, str]:
    """(access key, IAM action, resource ARN) of one request recorded by the local endpoint."""
    headers = {k.lower(): v for k, v in entry["headers"].items()}
    # SigV4: Credential=<key>/<date>/<region>/<service>/aws4_request names the caller and the service.
    signed = re.search(r"Credential=([^/]+)/\d+/[^/]+/([^/]+)/", headers.get("authorization", ""))
    if not signed:
        return "", "", ""
    key, service = signed.groups()
    body = base64.b64decode(entry["body"]) if entry.get("body_encoded") else (entry.get("body") or "").encode()
    url = urlsplit(entry["url"])

    def queue_arn(queue: str | None) -> str:
        name = (queue or "").rstrip("/").rsplit("/", 1)[-1]
        return f"arn:aws:sqs:{config.Settings().region}:{MOTO_ACCOUNT}:{name}" if name else "*"

    if "x-amz-target" in headers:  # JSON protocol (SQS)
        action, params = headers["x-amz-target"].split(".", 1)[1], json.loads(body or b"{}")
        action = action.removesuffix("Batch")  # IAM authorises DeleteMessageBatch as DeleteMessage, etc.
        return key, f"{service}:{action}", queue_arn(params.get("QueueUrl") or params.get("QueueName"))
    if service != "s3":  # query protocol (EC2, SNS, IAM)
        query = {k: v[0] for k, v in parse_qs(url.query + "&" + body.decode("latin1")).items()}
        region = config.Settings().region
        topic = query.get("Name") and f"arn:aws:sns:{region}:{MOTO_ACCOUNT}:{query['Name']}"
        instance = query.get("InstanceId.1") and f"arn:aws:ec2:{region}:{MOTO_ACCOUNT}:instance/{query['InstanceId.1']}"
        resource = (query.get("TopicArn") or query.get("SubscriptionArn") or topic or instance
                    or queue_arn(query.get("QueueUrl")))
        return key, f"{service}:{query['Action']}", resource
    bucket, _, object_key = unquote(url.path).lstrip("/").partition("/")  # S3, path-style
    if not object_key:
        action = {"HEAD": "ListBucket", "GET": "ListBucket", "PUT": "CreateBucket"}[entry["method"]]
        return key, f"s3:{action}", f"arn:aws:s3:::{bucket}"
    action = {"HEAD": "GetObject", "GET": "GetObject", "PUT": "PutObject", "DELETE": "DeleteObject"}[entry["method"]]
    return key, f"s3:{action}", f"arn:aws:s3:::{bucket}/{object_key}"


def _events_or_remote_control(action: str, resource: str) -> bool:
    """Celery events and remote control fan out through SNS to per-process queues (daas/transport.py);
    their permissions are not part of these policies yet."""
    return action.startswith("sns:") or resource.endswith("-pidbox") or "-celeryev" in resource


def _entries(text: str):
    """Every JSON object of moto's recording. moto writes an entry and its newline in two calls, so
    under concurrent requests two entries can share a line: read objects one after another."""
    decoder, position = json.JSONDecoder(), 0
    while True:
        while position < len(text) and text[position].isspace():
            position += 1
        if position == len(text):
            return
        entry, position = decoder.raw_decode(text, position)
        yield entry


def _recorded(recording: Path, keys: dict[str, str]) -> dict[str, set[tuple[str, str]]]:
    calls: dict[str, set[tuple[str, str]]] = {role: set() for role in keys}
    for entry in _entries(recording.read_text()):
        key, action, resource = _call(entry)
        for role, role_key in keys.items():
            if key == role_key:
                calls[role].add((action, resource))
    return calls


def _allows(policy: dict, action: str, resource: str) -> bool:
    """Whether an Allow statement matches action and resource. Conditions are not evaluated; EC2's
    RunInstances and CreateTags touch several resources per call, so for them the action must match."""
    for statement in policy["Statement"]:
        rendered = json.loads(json.dumps(statement).replace("${Region}", config.Settings().region)
                              .replace("${Account}", MOTO_ACCOUNT))
        if not any(fnmatch.fnmatchcase(action, a) for a in _listed(rendered["Action"])):
            continue
        if action in ("ec2:RunInstances", "ec2:CreateTags") or any(
                fnmatch.fnmatchcase(resource, r) for r in _listed(rendered["Resource"])):
            return True
    return False


@pytest.fixture(scope="module")
def recorded_calls(tmp_path_factory) -> dict[str, set[tuple[str, str]]]:
    """Run web tier, controller (EC2 provider), beat and a worker of the default stack `daas` on their
    own recording endpoint, each process with its own access key; return {role: {(action, resource)}}.
    Covers: init, upload, enqueue, autoscale (RunInstances), classify, an image whose upload was
    deleted, job status, the dead-letter reaper, housekeeping (TerminateInstances), heartbeats."""
    tmp = tmp_path_factory.mktemp("audit")
    recording = tmp / "recording.jsonl"
    saved = {k: os.environ.get(k) for k in ("MOTO_ENABLE_RECORDING", "MOTO_RECORDER_FILEPATH")}
    os.environ.update(MOTO_ENABLE_RECORDING="true", MOTO_RECORDER_FILEPATH=str(recording))
    settings = config.Settings(aws_port=free_port(), web_port=free_port(), flower_port=free_port(), state_dir=tmp,
                               scale_interval=1, idle_timeout=0, provider="ec2", sweep_interval=2,
                               heartbeat_interval=1, ec2_join_timeout=1)
    stack = Stack(settings, log_dir=tmp / "logs")
    keys = {role: f"AKIA{role.upper()}" for role in ("controller", "worker")}
    env = {role: {"AWS_ACCESS_KEY_ID": key, "AWS_SECRET_ACCESS_KEY": "x"} for role, key in keys.items()}
    try:
        try:
            stack.start_local_aws()
        finally:  # only the endpoint records; the processes below need not know
            for name, value in saved.items():
                os.environ.pop(name) if value is None else os.environ.update({name: value})
        admin = stack.settings
        ec2 = aws.client("ec2", admin)
        image = ec2.describe_images(Owners=["amazon"])["Images"][0]["ImageId"]
        subnet = ec2.describe_subnets()["Subnets"][0]["SubnetId"]
        group = ec2.describe_security_groups()["SecurityGroups"][0]["GroupId"]
        aws.client("iam", admin).create_instance_profile(InstanceProfileName="daas-worker")
        stack.settings = admin.with_(ec2_ami=image, ec2_subnet=subnet, ec2_security_group=group,
                                     ec2_instance_profile="daas-worker")
        # The web tier and the controller share one host and one role (`python -m daas up --aws`).
        subprocess.run([sys.executable, "-m", "daas", "init"], env={**child_env(stack.settings), **env["controller"]},
                       check=True, capture_output=True, timeout=60)
        web = stack.spawn("web", [sys.executable, "-m", "daas", "web"], env["controller"])
        url = f"http://{settings.host}:{settings.web_port}"
        wait_for_http(f"{url}/healthz", 60, web)
        stack.spawn("controller", [sys.executable, "-m", "daas", "controller"], env["controller"])
        stack.spawn("beat", [sys.executable, "-m", "celery", "-A", "daas.celery_app", "beat", "--schedule",
                             str(tmp / "beat-schedule")], env["controller"])
        photo = skimage_photo("coffee.png")
        good = requests.post(f"{url}/api/jobs", files=[("images", ("coffee.png", photo))], timeout=30).json()
        lost = requests.post(f"{url}/api/jobs", files=[("images", ("lost.png", photo))], timeout=30).json()
        aws.client("s3", admin).delete_object(Bucket=admin.input_bucket,
                                              Key=f"{lost['job_id']}/{lost['images'][0]['id']}")
        stack.spawn("worker", [sys.executable, "-m", "daas", "worker"], env["worker"])
        deadline = time.monotonic() + 120
        for job in (good, lost):
            while requests.get(f"{url}/api/jobs/{job['job_id']}", timeout=30).json()["status"] != "done":
                assert time.monotonic() < deadline, "the audit jobs did not finish"
                time.sleep(0.2)
        # The dead-letter reaper ticks every 10 s, housekeeping every 2 s: let each run once.
        dlq = ("sqs:ReceiveMessage", f"arn:aws:sqs:{admin.region}:{MOTO_ACCOUNT}:{admin.dead_letter_queue}")

        def seen() -> set[str]:
            calls = _recorded(recording, keys)["controller"]
            return {action for action, _ in calls} | ({"reaped"} if dlq in calls else set())

        while time.monotonic() < deadline and not {"reaped", "ec2:TerminateInstances"} <= seen():
            time.sleep(0.5)
    finally:
        stack.stop()
    return _recorded(recording, keys)


@pytest.mark.parametrize("role", ["worker", "controller"])
def test_policy_allows_every_call_the_role_makes(recorded_calls, role):
    policy = _policy(f"{role}-policy.json")
    denied = sorted(call for call in recorded_calls[role]
                    if not _events_or_remote_control(*call) and not _allows(policy, *call))
    assert not denied, f"{role}-policy.json lacks {denied}"


@pytest.mark.parametrize("role", ["worker", "controller"])
def test_policy_allows_the_events_and_remote_control_calls(recorded_calls, role):
    policy = _policy(f"{role}-policy.json")
    denied = sorted(call for call in recorded_calls[role] if _events_or_remote_control(*call)
                    and not _allows(policy, *call))
    assert not denied, f"{role}-policy.json lacks {denied}"


def test_the_audit_saw_the_paths_that_matter(recorded_calls):
    """Guards the audit itself: had a process not run, 'everything allowed' would mean nothing."""
    actions = {role: {action for action, _ in calls} for role, calls in recorded_calls.items()}
    assert {"s3:GetObject", "s3:PutObject", "s3:DeleteObject", "sqs:ReceiveMessage", "sqs:DeleteMessage",
            "sqs:ListQueues"} <= actions["worker"]  # DeleteObject: its heartbeat record, at exit
    # TerminateInstances: the launched instances never join (nothing boots on the local endpoint).
    assert {"ec2:RunInstances", "ec2:DescribeInstances", "ec2:TerminateInstances", "sqs:SendMessage",
            "sqs:CreateQueue", "s3:CreateBucket", "s3:PutObject", "s3:ListBucket"} <= actions["controller"]
