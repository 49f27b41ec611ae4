"""The IAM roles of daas/cloudformation.yaml: least privilege, and enough for what each process does.

The policies are read back from a stack deployed on the local endpoint (moto renders the template's
ARNs), then checked two ways: statically (what each role may and may not do), and against every AWS
call the web tier, the controller (with beat and Flower) and a worker make through upload → label
→ a launch → housekeeping, each process with its own access key, recorded by the endpoint.

moto evaluates neither conditions nor the permissions AWS asks beyond the called action, so: the
table deploy.IMPLIED_PERMISSIONS is checked here against every role, and the conditions are checked
as text. README.md ("Deploying on AWS") lists what only AWS can check.
"""
from __future__ import annotations

import ast
import base64
import fnmatch
import json
import os
import re
import sys
import time
import uuid
from pathlib import Path
from typing import NamedTuple
from urllib.parse import parse_qs, unquote, urlsplit

import pytest
import requests

from daas import aws, config, deploy
from daas.stack import Stack, free_port, wait_for_http
from tests.conftest import skimage_photo
from tests.test_deploy import make_worker_ami

MOTO_ACCOUNT = "123456789012"
ROLES = ("worker", "web", "controller")
# The only actions allowed on every resource: none of them can be scoped to one.
# CreateFleet: the request itself; what the fleet launches is authorised as RunInstances, scoped.
UNSCOPABLE = {"ec2:DescribeInstances", "ec2:DescribeLaunchTemplateVersions", "ec2:DescribeLaunchTemplates",
              "ec2:CreateFleet", "sqs:ListQueues"}
# EC2 calls that name several resources (checked statically below): the action must match.
MULTI_RESOURCE = {"ec2:RunInstances", "ec2:CreateTags", "ec2:CreateFleet", "ec2:CreateLaunchTemplateVersion"}
# Calls that need no permission at all.
UNAUTHORISED = {"sts:GetCallerIdentity"}


def _listed(value) -> list:
    return value if isinstance(value, list) else [value]


def _grants(policy: dict) -> set[tuple[str, str]]:
    return {(action, resource) for statement in policy["Statement"]
            for action in _listed(statement["Action"]) for resource in _listed(statement.get("Resource", "-"))}


def _allows(policy: dict, action: str, resource: str) -> bool:
    """Whether an Allow statement matches action and resource. Conditions are not evaluated; EC2's
    launch calls touch resources the recording does not name (MULTI_RESOURCE): for them the action
    must match, and their statements' resources are checked as written."""
    for statement in policy["Statement"]:
        if not any(fnmatch.fnmatchcase(action, a) for a in _listed(statement["Action"])):
            continue
        if action in MULTI_RESOURCE or any(
                fnmatch.fnmatchcase(resource, r) for r in _listed(statement["Resource"])):
            return True
    return False


# -- a deployed stack, and its processes under their own keys ---------------------------------------
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
    region = config.Settings().region

    def queue_arn(queue: str | None) -> str:
        name = (queue or "").rstrip("/").rsplit("/", 1)[-1]
        return f"arn:aws:sqs:{region}:{MOTO_ACCOUNT}:{name}" if name else "*"

    if "x-amz-target" in headers:  # JSON protocol (SQS)
        action, params = headers["x-amz-target"].split(".", 1)[1], json.loads(body or b"{}")
        action = action.removesuffix("Batch")  # IAM authorises DeleteMessageBatch as DeleteMessage, etc.
        return key, f"{service}:{action}", queue_arn(params.get("QueueUrl") or params.get("QueueName"))
    if service != "s3":  # query protocol (EC2, SNS, IAM, STS)
        query = {k: v[0] for k, v in parse_qs(url.query + "&" + body.decode("latin1")).items()}
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


def _policy(settings: config.Settings, role: str, name: str) -> dict:
    document = aws.client("iam", settings).get_role_policy(RoleName=role, PolicyName=name)["PolicyDocument"]
    if isinstance(document, dict):
        return document
    # moto keeps an inline policy made by CloudFormation as the repr of a Python dict, not as JSON.
    text = unquote(document)
    return json.loads(text) if text.startswith('{"') else ast.literal_eval(text)


# What moto names apart from the action AWS authorises: SQS's batch calls, S3's HEAD of a bucket.
MOTO_ALIASES = {"sqs:SendMessage": "sqs:SendMessageBatch", "sqs:DeleteMessage": "sqs:DeleteMessageBatch",
                "sqs:ChangeMessageVisibility": "sqs:ChangeMessageVisibilityBatch", "s3:ListBucket": "s3:HeadBucket"}


def as_moto_enforces(policy: dict) -> dict:
    """The role's policy in the form moto can enforce. moto authorises S3 calls against their bucket
    or object ARN, but every other service's (EC2, SNS, SSM, DynamoDB, STS) against `*`, and an SQS
    call against `*` whenever its queue does not exist (yet, or any more: a queue its owner deleted
    while housekeeping or a shutting-down consumer still calls on it, where AWS answers "does not
    exist" and moto "denied"). It evaluates neither conditions (a statement with one would deny) nor
    policy variables, and it names some calls apart from the action AWS authorises (MOTO_ALIASES).
    So: S3 statements stay scoped exactly as deployed (with `${aws:userid}` as `*`); all others get
    `*` and lose their conditions; each action also gets its moto alias. Every call's resource is
    checked against the deployed ARNs by the recorded audit, and conditions by the static tests."""
    statements = []
    policy = json.loads(json.dumps(policy).replace("${aws:userid}", "*"))
    for statement in policy["Statement"]:
        actions = _listed(statement["Action"])
        actions = actions + [MOTO_ALIASES[a] for a in actions if a in MOTO_ALIASES]
        if all(action.startswith("s3:") for action in actions):
            statements.append({**statement, "Action": actions})
        else:
            statements.append({k: v for k, v in statement.items() if k != "Condition"} | {
                "Action": actions, "Resource": "*"})
    statements.append({"Sid": "MotoAsksForWhatAwsDoesNot", "Effect": "Allow", "Action": sorted(UNAUTHORISED),
                       "Resource": "*"})
    return {"Version": "2012-10-17", "Statement": statements}


def principal(settings: config.Settings, name: str, policy: dict) -> tuple[dict[str, str], str]:
    """An IAM user holding exactly `policy`: (the environment of a process acting as it, its
    aws:userid)."""
    iam = aws.client("iam", settings)
    user = iam.create_user(UserName=name)["User"]
    iam.put_user_policy(UserName=name, PolicyName=name, PolicyDocument=json.dumps(policy))
    key = iam.create_access_key(UserName=name)["AccessKey"]
    return {"AWS_ACCESS_KEY_ID": key["AccessKeyId"], "AWS_SECRET_ACCESS_KEY": key["SecretAccessKey"]}, user["UserId"]


def for_principal(policy: dict, user_id: str) -> dict:
    """The policy with IAM's policy variable aws:userid filled in, as IAM evaluates it for a caller."""
    return json.loads(json.dumps(policy).replace("${aws:userid}", user_id))


def enforce_iam(settings: config.Settings) -> None:
    """From now on the endpoint wants every request signed by a known key and allowed by its policies."""
    requests.post(f"{settings.aws_endpoint}/moto-api/reset-auth", data=b"0", timeout=10).raise_for_status()


class Audit(NamedTuple):
    settings: config.Settings          # the deployed stack's
    policies: dict[str, dict]          # {role: its policy as deployed}
    calls: dict[str, set[tuple[str, str]]]  # {role: {(action, resource)} its processes made}
    logs: dict[str, str]               # {process: its log}
    template_id: str                   # the workers' launch template
    user_ids: dict[str, str]           # {role: the aws:userid its processes signed as}


@pytest.fixture(scope="module")
def audit(tmp_path_factory):
    """Deploy a stack on a recording endpoint; then, with the endpoint enforcing IAM, run web,
    controller, beat, Flower and a worker on it, each as a principal holding exactly its role's
    policy."""
    tmp = tmp_path_factory.mktemp("audit")
    recording = tmp / "recording.jsonl"
    saved = {k: os.environ.get(k) for k in ("MOTO_ENABLE_RECORDING", "MOTO_RECORDER_FILEPATH")}
    os.environ.update(MOTO_ENABLE_RECORDING="true", MOTO_RECORDER_FILEPATH=str(recording))
    base = config.Settings(aws_port=free_port(), web_port=free_port(), flower_port=free_port(), state_dir=tmp,
                           scale_interval=1, idle_timeout=0, sweep_interval=2, heartbeat_interval=1, ec2_join_timeout=1)
    stack = Stack(base, log_dir=tmp / "logs")
    credentials = {k: os.environ.get(k) for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")}
    try:
        try:
            stack.start_local_aws()
        finally:  # only the endpoint records; the processes below need not know
            for name, value in saved.items():
                os.environ.pop(name) if value is None else os.environ.update({name: value})
        admin = stack.settings
        name = f"audit{uuid.uuid4().hex[:6]}"
        photos = f"{name}-photos"  # a bucket of the user's, named at deploy time as a batch source
        aws.client("s3", admin).create_bucket(Bucket=photos)
        for key, body in (("coffee.png", skimage_photo("coffee.png")), ("notes.png", b"not an image")):
            aws.client("s3", admin).put_object(Bucket=photos, Key=f"day/{key}", Body=body)
        deploy.deploy(admin, deploy.Options(stack=name, ami=make_worker_ami(admin, "daas-worker-audit"),
                                            allow_http=True, batch_source=photos), out=lambda _: None)
        policies = {role: _policy(admin, f"{name}-{role}", role) for role in ROLES}
        principals = {role: principal(admin, f"{name}-{role}-process", as_moto_enforces(policy))
                      for role, policy in policies.items()}
        env = {role: process_env for role, (process_env, _) in principals.items()}
        user_ids = {role: user_id for role, (_, user_id) in principals.items()}
        keys = {role: process_env["AWS_ACCESS_KEY_ID"] for role, process_env in env.items()}
        admin_env, _ = principal(admin, f"{name}-admin", {"Version": "2012-10-17", "Statement": [
            {"Effect": "Allow", "Action": "*", "Resource": "*"}]})
        subnet = aws.client("ec2", admin).describe_subnets()["Subnets"][0]["SubnetId"]
        template_id = aws.client("ec2", admin).describe_launch_templates(
            LaunchTemplateNames=[f"{name}-worker"])["LaunchTemplates"][0]["LaunchTemplateId"]
        enforce_iam(admin)
        os.environ.update(admin_env)  # this process: the test's own calls (deleting an upload)
        aws._client.cache_clear()  # clients keep the credentials they were made with
        stack.settings = deploy.stack_settings(admin, name).with_(
            provider="ec2", ec2_launch_template=f"{name}-worker", ec2_subnets=subnet, batch_sources=photos)
        web = stack.spawn("web", [sys.executable, "-m", "daas", "web"], env["web"])
        url = f"http://{base.host}:{base.web_port}"
        wait_for_http(f"{url}/healthz", 60, web)
        stack.spawn("controller", [sys.executable, "-m", "daas", "controller"], env["controller"])
        stack.spawn("beat", [sys.executable, "-m", "celery", "-A", "daas.celery_app", "beat", "--schedule",
                             str(tmp / "beat-schedule")], env["controller"])
        flower = stack.spawn("flower", [sys.executable, "-m", "daas", "flower"], env["controller"])
        wait_for_http(f"http://{base.host}:{base.flower_port}/healthcheck", 60, flower)
        photo = skimage_photo("coffee.png")
        good = requests.post(f"{url}/api/jobs", files=[("images", ("coffee.png", photo))], timeout=30).json()
        lost = requests.post(f"{url}/api/jobs", files=[("images", ("lost.png", photo))], timeout=30).json()
        aws.client("s3", admin).delete_object(Bucket=stack.settings.input_bucket,
                                              Key=f"{lost['job_id']}/{lost['images'][0]['id']}.pack")
        stack.spawn("worker", [sys.executable, "-m", "daas", "worker", "--processes", "1"], env["worker"])
        deadline = time.monotonic() + 120
        for job in (good, lost):
            while requests.get(f"{url}/api/jobs/{job['job_id']}", timeout=30).json()["status"] != "done":
                assert time.monotonic() < deadline, "the audit jobs did not finish"
                time.sleep(0.2)
        lost_image = requests.get(f"{url}/api/jobs/{lost['job_id']}", timeout=30).json()["images"][0]
        assert lost_image["status"] == "error" and "no longer in the input bucket" in lost_image["error"]
        batch = requests.post(f"{url}/api/batches", json={"source": f"s3://{photos}/day/"}, timeout=30).json()
        while requests.get(f"{url}/api/batches/{batch['batch_id']}", timeout=30).json()["status"] != "done":
            assert time.monotonic() < deadline, "the audit batch did not finish"
            time.sleep(0.2)
        # The dead-letter reaper ticks every 10 s, housekeeping every 2 s: let each run once.
        dlq = ("sqs:ReceiveMessage", f"arn:aws:sqs:{admin.region}:{MOTO_ACCOUNT}:{stack.settings.dead_letter_queue}")

        def seen() -> set[str]:
            calls = _recorded(recording, keys)["controller"]
            return {action for action, _ in calls} | ({"reaped"} if dlq in calls else set())

        while time.monotonic() < deadline and not {"reaped", "ec2:TerminateInstances"} <= seen():
            time.sleep(0.5)
        settings = stack.settings
    finally:
        stack.stop()
        for name, value in credentials.items():
            os.environ.pop(name) if value is None else os.environ.update({name: value})
        aws._client.cache_clear()
    logs = {path.stem: path.read_text(errors="replace") for path in (tmp / "logs").glob("*.log")}
    return Audit(settings, policies, _recorded(recording, keys), logs, template_id, user_ids)


def test_no_process_was_denied_anything_with_iam_enforced(audit):
    """moto enforced IAM during the whole audit (each process signing as its role's principal): the
    jobs finished, workers were launched and ended, and no log has a denial."""
    logs = audit.logs
    assert {"web", "controller", "beat", "flower", "worker"} <= set(logs)
    # The endpoint's access log: every refused call is a 403 there, whatever its client logged.
    enforced = logs["aws"].split("/moto-api/reset-auth", 1)[1]
    assert not [line for line in enforced.splitlines() if '" 403 ' in line]
    denied = {name: [line for line in log.splitlines() if "AccessDenied" in line or "not authorized" in line]
              for name, log in logs.items()}
    assert not {name: lines for name, lines in denied.items() if lines}


@pytest.mark.parametrize("role", ROLES)
def test_the_role_allows_every_call_its_processes_make(audit, role):
    policy, calls = for_principal(audit.policies[role], audit.user_ids[role]), audit.calls
    denied = sorted(call for call in calls[role] if call[0] not in UNAUTHORISED and not _allows(policy, *call))
    assert not denied, f"the {role} role lacks {denied}"


def test_no_process_creates_or_tags_a_topic(audit):
    """The stack made them; AWS limits tagging calls to 10 a second per account (a fleet that boots
    at once would be throttled)."""
    calls = audit.calls
    assert not {(role, action) for role, made in calls.items() for action, _ in made
                if action in ("sns:CreateTopic", "sns:TagResource")}


def test_the_audit_saw_the_paths_that_matter(audit):
    """Guards the audit itself: had a process not run, 'everything allowed' would mean nothing."""
    calls = audit.calls
    actions = {role: {action for action, _ in made} for role, made in calls.items()}
    assert {"s3:GetObject", "s3:PutObject", "s3:DeleteObject", "sqs:ReceiveMessage", "sqs:DeleteMessage",
            "sns:Publish"} <= actions["worker"]  # DeleteObject: its heartbeat record, at exit
    assert {"s3:PutObject", "sqs:SendMessage", "sqs:CreateQueue", "sqs:ReceiveMessage"} <= actions["web"]
    # TerminateInstances: the launched instances never join (nothing boots on the local endpoint).
    assert {"ec2:CreateFleet", "ec2:CreateLaunchTemplateVersion", "ec2:DescribeInstances", "ec2:TerminateInstances", "sqs:SendMessage",
            "sns:Subscribe", "s3:ListBucket"} <= actions["controller"]
    # The batch: the controller listed the user's bucket, the worker read its images from there.
    source = f"arn:aws:s3:::{audit.settings.stack}-photos"
    assert ("s3:ListBucket", source) in calls["controller"]
    assert ("s3:GetObject", f"{source}/day/coffee.png") in calls["worker"]


# -- the policies as written ------------------------------------------------------------------------
@pytest.mark.parametrize("role", ROLES)
def test_every_statement_is_an_explicit_allow_and_scoped(audit, role):
    policies = audit.policies
    policy = policies[role]
    assert policy["Version"] == "2012-10-17"
    for statement in policy["Statement"]:
        assert statement["Effect"] == "Allow" and statement.get("Sid")
        assert not {"NotAction", "NotResource", "NotPrincipal"} & statement.keys()
        assert not [a for a in _listed(statement["Action"]) if "*" in a], "no wildcard actions"
        if "*" in _listed(statement["Resource"]):
            assert set(_listed(statement["Action"])) <= UNSCOPABLE, statement["Sid"]


@pytest.mark.parametrize("role", ROLES)
def test_every_role_holds_what_aws_asks_beyond_the_call(audit, role):
    policies = audit.policies
    actions = {action for action, _ in _grants(policies[role])}
    missing = [(action, implied, why) for action, implied, why in deploy.IMPLIED_PERMISSIONS
               if action in actions and implied not in actions]
    assert not missing, missing


def _names(settings: config.Settings) -> dict[str, str]:
    region = settings.region
    return {"input": f"arn:aws:s3:::{settings.input_bucket}", "output": f"arn:aws:s3:::{settings.output_bucket}",
            "sqs": f"arn:aws:sqs:{region}:{MOTO_ACCOUNT}:", "sns": f"arn:aws:sns:{region}:{MOTO_ACCOUNT}:"}


def test_the_worker_reads_inputs_writes_only_results_and_its_heartbeats(audit):
    settings, policies = audit.settings, audit.policies
    n, stack = _names(settings), settings.stack
    writes = {resource for action, resource in _grants(policies["worker"])
              if action in ("s3:PutObject", "s3:DeleteObject")}
    # No manifests, and heartbeat records only under its own principal (its instance, on EC2).
    assert writes == {f"{n['output']}/results/*", f"{n['output']}/workers/${{aws:userid}}/*",
                      f"{n['output']}/batch-results/*", f"{n['output']}/batches/*/done/*"}
    reads = {resource.removesuffix("/*") for action, resource in _grants(policies["worker"]) if action == "s3:GetObject"}
    listed = {resource for action, resource in _grants(policies["worker"]) if action == "s3:ListBucket"}
    # Of the user's buckets, only the batch source named at deploy time, and only to read.
    assert reads == {n["input"], f"{n['output']}/results", f"{n['output']}/batches",
                     f"{n['output']}/retire/${{aws:userid}}", f"arn:aws:s3:::{stack}-photos"} \
        and listed == {n["input"], n["output"]}
    sends = {resource for action, resource in _grants(policies["worker"]) if action == "sqs:SendMessage"}
    assert sends == {f"{n['sqs']}{stack}-replies-*", f"{n['sqs']}{stack}-*-{stack}-pidbox",
                     f"{n['sqs']}{stack}-celeryev-*", f"{n['sqs']}*-reply-{stack}-pidbox"}  # never classify or control
    consumed = {resource for action, resource in _grants(policies["worker"]) if action == "sqs:DeleteMessage"}
    assert consumed == {f"{n['sqs']}{stack}-classify", f"{n['sqs']}{stack}-*-{stack}-pidbox",
                        f"{n['sqs']}{stack}-celeryev-*"}


def test_the_web_tier_has_no_ec2_no_iam_and_deletes_nothing_but_its_reply_queues(audit):
    settings, policies = audit.settings, audit.policies
    grants = _grants(policies["web"])
    assert not {action for action, _ in grants if action.split(":")[0] in ("ec2", "iam", "sns")}
    assert not {action for action, _ in grants if action == "s3:DeleteObject"}
    assert {resource for action, resource in grants if action == "sqs:DeleteQueue"} == {
        f"{_names(settings)['sqs']}{settings.stack}-replies-*"}


def test_the_controller_launches_and_ends_only_this_stacks_workers(audit):
    settings, policies = audit.settings, audit.policies
    stack = settings.stack
    statements = {s["Sid"]: s for s in policies["controller"]["Statement"]}
    run = [s for s in statements.values() if s["Action"] == "ec2:RunInstances"]
    tagged = [s for s in run if any(r.endswith(":instance/*") for r in _listed(s["Resource"]))]
    assert [s["Condition"] for s in tagged] == [
        {"StringEquals": {"aws:RequestTag/daas:role": "worker", "aws:RequestTag/daas:stack": stack}}]
    templates = [r for s in run for r in _listed(s["Resource"]) if ":launch-template/" in r]
    assert templates == [f"arn:aws:ec2:{settings.region}:{MOTO_ACCOUNT}:launch-template/{audit.template_id}"]
    images = [r for s in run for r in _listed(s["Resource"]) if ":image/" in r]
    assert len(images) == 1 and re.fullmatch(rf"arn:aws:ec2:{settings.region}::image/ami-\w+", images[0])
    for statement in run:  # without a condition: only the network and the stack's own template and AMI
        if "Condition" not in statement:
            assert all(re.search(r":(subnet|security-group|network-interface|launch-template|image)/", r)
                       for r in _listed(statement["Resource"]))
    terminate = [s for s in statements.values() if s["Action"] == "ec2:TerminateInstances"]
    assert [s["Condition"] for s in terminate] == [
        {"StringEquals": {"ec2:ResourceTag/daas:role": "worker", "ec2:ResourceTag/daas:stack": stack}}]
    tags = [s for s in statements.values() if s["Action"] == "ec2:CreateTags"]
    assert [s["Condition"] for s in tags] == [{"StringEquals": {"ec2:CreateAction": ["RunInstances", "CreateFleet"]}}]
    versions = [s for s in statements.values() if s["Action"] == "ec2:CreateLaunchTemplateVersion"]
    assert [s["Resource"] for s in versions] == [
        f"arn:aws:ec2:{settings.region}:{MOTO_ACCOUNT}:launch-template/{audit.template_id}"]
    linked = [s for s in statements.values() if s["Action"] == "iam:CreateServiceLinkedRole"]
    assert [s["Condition"] for s in linked] == [
        {"StringEquals": {"iam:AWSServiceName": ["ec2fleet.amazonaws.com", "spot.amazonaws.com"]}}]
    passes = [s for s in statements.values() if s["Action"] == "iam:PassRole"]
    assert [s["Resource"] for s in passes] == [f"arn:aws:iam::{MOTO_ACCOUNT}:role/{stack}-worker"]
    deletes = {r for action, r in _grants(policies["controller"]) if action == "s3:DeleteObject"}
    output = f"arn:aws:s3:::{settings.output_bucket}"
    assert deletes == {f"{output}/workers/*", f"{output}/retire/*", f"{output}/batches/active/*",
                       f"{output}/callbacks/pending/*"}  # never
    # images, results or batch outputs
    # It reaps the dead-letter queue but never consumes the classify queue (the workers' job).
    consumed = {r.rsplit(":", 1)[1] for action, r in _grants(policies["controller"]) if action == "sqs:DeleteMessage"}
    assert consumed == {f"{stack}-control", f"{stack}-classify-dlq", f"{stack}-*-{stack}-pidbox", f"{stack}-celeryev-*",
                        f"*-reply-{stack}-pidbox"}


def test_two_stacks_roles_never_reach_each_others_queues(audit):
    """A stack `prod-<x>` beside `<x>`: the per-process queue patterns of one never match the other's."""
    settings, policies = audit.settings, audit.policies
    stack, other = settings.stack, f"prod-{settings.stack}"
    sqs = _names(settings)["sqs"]
    theirs = [f"{sqs}{other}-worker-7-i-0abc-{other}-pidbox", f"{sqs}{other}-celeryev-1234",
              f"{sqs}{other}-replies-web-1", f"{sqs}{other}-classify", f"{sqs}{uuid.uuid4()}-reply-{other}-pidbox"]
    for role, policy in policies.items():
        for queue in theirs:
            assert not _allows(policy, "sqs:DeleteQueue", queue) and not _allows(policy, "sqs:ReceiveMessage", queue), (
                role, queue)
    assert _allows(policies["worker"], "sqs:ReceiveMessage", f"{sqs}{stack}-worker-7-i-0abc-{stack}-pidbox")


def test_the_template_has_no_role_this_test_does_not_know():
    text = (Path(deploy.__file__).with_name("cloudformation.yaml")).read_text()
    assert sorted(re.findall(r"RoleName: !Sub \"\$\{AWS::StackName\}-(\w+)\"", text)) == sorted(ROLES)
