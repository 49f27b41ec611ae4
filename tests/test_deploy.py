"""`python -m daas deploy | destroy` against the local endpoint's CloudFormation (moto), as a user runs them.

What moto cannot check (lifecycle rules applied, public access blocks enforced, ALB routing, TLS,
quotas, IAM conditions) is listed in README.md, "Deploying on AWS".
"""
from __future__ import annotations

import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from daas import aws, config, deploy, leases, providers
from daas.stack import child_env
from tests.conftest import make_settings

TEMPLATE = Path(deploy.__file__).with_name("cloudformation.yaml")


def make_worker_ami(settings: config.Settings, name: str) -> str:
    """An AMI tagged the way Packer tags the daas AMI (worker_ami/daas-worker.pkr.hcl)."""
    ec2 = aws.client("ec2", settings)
    source = ec2.describe_images(Owners=["amazon"])["Images"][0]["ImageId"]
    instance = ec2.run_instances(ImageId=source, MinCount=1, MaxCount=1)["Instances"][0]["InstanceId"]
    image = ec2.create_image(InstanceId=instance, Name=name)["ImageId"]
    ec2.create_tags(Resources=[image], Tags=[{"Key": "daas:role", "Value": "worker-ami"}])
    ec2.terminate_instances(InstanceIds=[instance])
    return image


def run_cli(settings: config.Settings, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, "-m", "daas", *args], env=child_env(settings), stdin=subprocess.DEVNULL,
                            capture_output=True, text=True, timeout=180)
    if check:
        assert result.returncode == 0, result.stdout + result.stderr
    return result


def test_the_template_passes_cfn_lint():
    lint = Path(sys.executable).with_name("cfn-lint")
    result = subprocess.run([str(lint), str(TEMPLATE)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.fixture(scope="module")
def account(local_aws, tmp_path_factory):
    """Settings of the local endpoint, and a daas AMI in its account."""
    settings = make_settings(local_aws, tmp_path_factory.mktemp("deploy"))
    return settings, make_worker_ami(settings, f"daas-worker-{uuid.uuid4().hex[:6]}")


@pytest.fixture(scope="module")
def deployed(account):
    """A stack deployed by the CLI, as a user would, and its settings."""
    settings, ami = account
    name = f"d{uuid.uuid4().hex[:8]}"
    result = run_cli(settings, "deploy", "--stack", name, "--ami", ami, "--http")
    yield settings, name, ami, result.stdout
    if deploy.stack_status(settings, name):
        deploy.destroy(settings, name, out=lambda _: None)


def test_check_says_in_words_what_would_stop_a_deploy(account):
    settings, ami = account
    subnets = aws.client("ec2", settings).describe_subnets()["Subnets"]
    one_zone = next(s["SubnetId"] for s in subnets if s["DefaultForAz"])
    result = run_cli(settings, "deploy", "--check", "--stack", "checked", "--ami", "ami-00000000000000000",
                     "--subnets", one_zone, "--certificate-arn",
                     f"arn:aws:acm:{settings.region}:123456789012:certificate/{uuid.uuid4()}", check=False)
    assert result.returncode == 1
    assert "the AMI ami-00000000000000000 does not exist" in result.stdout
    assert "the load balancer needs subnets in two availability zones; found 1" in result.stdout
    assert "the certificate arn:aws:acm:" in result.stdout and "does not exist" in result.stdout
    assert "3 problem(s) would stop a deploy" in result.stdout
    without_tls = run_cli(settings, "deploy", "--check", "--stack", "checked", "--ami", ami, check=False)
    assert without_tls.returncode == 1 and "give one, or --http to serve plain HTTP on purpose" in without_tls.stdout
    ready = run_cli(settings, "deploy", "--check", "--stack", "checked", "--http")  # the newest tagged AMI
    assert "nothing found that would stop a deploy" in ready.stdout
    assert not deploy.stack_status(settings, "checked"), "--check created something"


def test_deploy_prints_progress_and_ends_with_the_url(deployed):
    settings, name, _, stdout = deployed
    assert f"creating stack {name}" in stdout
    assert "CREATE_COMPLETE" in stdout
    url = deploy.stack_outputs(settings, name)["Url"]
    assert url.startswith("http://") and stdout.rstrip().endswith(f"daas is deployed: {url}")
    # The secrets are made, never printed: only where to read them.
    ssm = aws.client("ssm", settings)
    for secret in deploy.SECRETS:
        parameter = ssm.get_parameter(Name=deploy.parameter_name(name, secret), WithDecryption=True)["Parameter"]
        assert parameter["Type"] == "SecureString"
        assert parameter["Value"] not in stdout


def _resources(settings: config.Settings) -> dict:
    """What `daas init` would create or change, as the account shows it."""
    sqs, s3, sns = aws.client("sqs", settings), aws.client("s3", settings), aws.client("sns", settings)
    queues = {}
    for name in (settings.queue, settings.dead_letter_queue, settings.control_queue):
        attributes = sqs.get_queue_attributes(QueueUrl=aws.queue_url(settings, name), AttributeNames=["All"])["Attributes"]
        queues[name] = {k: v for k, v in attributes.items() if k not in ("LastModifiedTimestamp",)}
    topics = sorted(t["TopicArn"] for page in sns.get_paginator("list_topics").paginate() for t in page["Topics"])
    return {"queues": queues, "topics": topics, "buckets": sorted(b["Name"] for b in s3.list_buckets()["Buckets"])}


def test_the_stack_holds_what_the_processes_expect_and_init_changes_nothing(deployed):
    settings, name, _, _ = deployed
    stack = deploy.stack_settings(settings, name)
    assert stack.input_bucket != f"{name}-input" and stack.input_bucket.startswith(name.lower())  # generated
    before = _resources(stack)
    assert {aws.topic_arn(stack, topic) for topic in aws.topic_names(stack)} <= set(before["topics"])
    classify = before["queues"][stack.queue]
    assert classify["VisibilityTimeout"] == str(config.Settings().visibility_timeout)
    assert '"maxReceiveCount": 3' in classify["RedrivePolicy"].replace(":3", ": 3")
    assert stack.rate_limit_table in aws.client("dynamodb", stack).list_tables()["TableNames"]
    run_cli(stack, "init")
    assert _resources(stack) == before
    s3 = aws.client("s3", stack)
    for bucket in (stack.input_bucket, stack.output_bucket):
        rules = s3.get_bucket_encryption(Bucket=bucket)["ServerSideEncryptionConfiguration"]["Rules"]
        assert rules[0]["ApplyServerSideEncryptionByDefault"]["SSEAlgorithm"] == "AES256"


def test_the_alarms_watch_the_queue_the_dead_letters_and_the_balancer(deployed):
    """What an operator is paged for (issue 20): the oldest waiting image, dead letters, web 5xx,
    each notifying the stack's alarm topic. moto's CloudFormation skips CloudWatch alarms (README
    lists them among what only AWS checks): read them from the template; the topic is deployed."""
    from cfnlint.decode import decode

    settings, name, _, _ = deployed
    resources = decode(str(TEMPLATE))[0]["Resources"]
    alarms = {key: value["Properties"] for key, value in resources.items() if value["Type"] == "AWS::CloudWatch::Alarm"}
    assert set(alarms) == {"OldestMessageAlarm", "DeadLetterAlarm", "Web5xxAlarm"}
    assert all(alarm["AlarmActions"] == [{"Ref": "AlarmTopic"}] for alarm in alarms.values())
    queues = {key: alarm["Dimensions"][0]["Value"] for key, alarm in alarms.items() if "Dimensions" in alarm}
    assert queues == {"OldestMessageAlarm": {"Fn::GetAtt": ["ClassifyQueue", "QueueName"]},
                      "DeadLetterAlarm": {"Fn::GetAtt": ["DeadLetterQueue", "QueueName"]}}
    assert alarms["OldestMessageAlarm"]["MetricName"] == "ApproximateAgeOfOldestMessage"
    balancer = [m["MetricStat"]["Metric"] for m in alarms["Web5xxAlarm"]["Metrics"] if "MetricStat" in m]
    assert {m["MetricName"] for m in balancer} == {"HTTPCode_Target_5XX_Count", "RequestCount"}
    topic = deploy.stack_outputs(settings, name)["AlarmTopicArn"]
    assert topic.endswith(f":{name}-alarms")


def test_buckets_block_public_access_and_expire_images_and_results_never_heartbeats():
    """moto accepts lifecycle rules and public access blocks but keeps neither (README lists them
    among what only AWS checks): read them from the template."""
    from cfnlint.decode import decode

    resources = decode(str(TEMPLATE))[0]["Resources"]
    rules = {name: resources[name]["Properties"]["LifecycleConfiguration"]["Rules"]
             for name in ("InputBucket", "OutputBucket")}
    assert [rule.get("Prefix") for rule in rules["InputBucket"]] == [None]  # uploads: the whole bucket
    assert {rule["Prefix"] for rule in rules["OutputBucket"]} == {"results/", "jobs/"}  # never workers/
    for rule in rules["InputBucket"] + rules["OutputBucket"]:
        assert rule["ExpirationInDays"] == {"Ref": "RetentionDays"} and rule["Status"] == "Enabled"
    for name in rules:
        blocked = resources[name]["Properties"]["PublicAccessBlockConfiguration"]
        assert blocked == dict.fromkeys(("BlockPublicAcls", "BlockPublicPolicy", "IgnorePublicAcls",
                                         "RestrictPublicBuckets"), True)


def test_the_controller_launches_workers_from_the_stacks_launch_template(deployed):
    settings, name, ami, _ = deployed
    stack = deploy.stack_settings(settings, name).with_(provider="ec2", ec2_launch_template=f"{name}-worker")
    ec2 = aws.client("ec2", stack)
    template = ec2.describe_launch_template_versions(LaunchTemplateName=f"{name}-worker", Versions=["$Latest"])
    data = template["LaunchTemplateVersions"][0]["LaunchTemplateData"]
    assert data["ImageId"] == ami and data["MetadataOptions"]["HttpTokens"] == "required"
    providers.EC2Provider(stack).launch(1)
    instance = _workers(stack, name)[0]
    assert instance["ImageId"] == ami
    assert {"Key": "daas:stack", "Value": name} in instance["Tags"]


def _workers(settings: config.Settings, name: str) -> list[dict]:
    described = aws.client("ec2", settings).describe_instances(Filters=[
        {"Name": "tag:daas:stack", "Values": [name]}, {"Name": "tag:daas:role", "Values": ["worker"]},
        {"Name": "instance-state-name", "Values": ["pending", "running"]}])
    return [i for r in described["Reservations"] for i in r["Instances"]]


def test_a_redeploy_with_a_new_ami_makes_a_new_launch_template_version(deployed):
    settings, name, _, _ = deployed
    newer = make_worker_ami(settings, f"daas-worker-{uuid.uuid4().hex[:6]}")
    result = run_cli(settings, "deploy", "--stack", name, "--ami", newer, "--http")
    assert f"updating stack {name}" in result.stdout
    versions = aws.client("ec2", settings).describe_launch_template_versions(LaunchTemplateName=f"{name}-worker")
    latest = max(versions["LaunchTemplateVersions"], key=lambda v: v["VersionNumber"])
    assert latest["VersionNumber"] >= 2 and latest["LaunchTemplateData"]["ImageId"] == newer
    stack = deploy.stack_settings(settings, name).with_(provider="ec2", ec2_launch_template=f"{name}-worker")
    before = {i["InstanceId"] for i in _workers(stack, name)}
    providers.EC2Provider(stack).launch(1)
    [launched] = [i for i in _workers(stack, name) if i["InstanceId"] not in before]
    assert launched["ImageId"] == newer


def test_destroy_asks_and_refuses_without_a_terminal(deployed):
    settings, name, _, _ = deployed
    result = run_cli(settings, "destroy", "--stack", name, check=False)
    assert result.returncode != 0 and "pass --yes" in result.stderr
    assert deploy.stack_status(settings, name)


def test_destroy_leaves_nothing_of_the_stack(account):
    settings, ami = account
    name = f"g{uuid.uuid4().hex[:8]}"
    run_cli(settings, "deploy", "--stack", name, "--ami", ami, "--http")
    stack = deploy.stack_settings(settings, name).with_(provider="ec2", ec2_launch_template=f"{name}-worker")
    # What a running service leaves: images and results, a reply queue, a worker the controller launched.
    s3, sqs = aws.client("s3", stack), aws.client("sqs", stack)
    s3.put_object(Bucket=stack.input_bucket, Key="a/b", Body=b"x")
    s3.put_object(Bucket=stack.output_bucket, Key="results/a/b", Body=b"[]")
    sqs.create_queue(QueueName=f"{name}-replies-web-1", tags=leases.tags(name))
    providers.EC2Provider(stack).launch(1)
    result = run_cli(settings, "destroy", "--stack", name, "--yes")
    assert f"stack {name} is gone" in result.stdout
    assert deploy.stack_status(settings, name) is None
    buckets = {b["Name"] for b in s3.list_buckets()["Buckets"]}
    assert not {stack.input_bucket, stack.output_bucket} & buckets
    assert not sqs.list_queues(QueueNamePrefix=name).get("QueueUrls")
    topics = {t["TopicArn"].rsplit(":", 1)[1] for t in aws.client("sns", stack).list_topics()["Topics"]}
    assert not {t for t in topics if t.startswith(f"{name}-")}
    roles = {r["RoleName"] for r in aws.client("iam", stack).list_roles()["Roles"]}
    assert not {r for r in roles if r.startswith(f"{name}-")}
    templates = aws.client("ec2", stack).describe_launch_templates()["LaunchTemplates"]
    assert not {t["LaunchTemplateName"] for t in templates if t["LaunchTemplateName"].startswith(f"{name}-")}
    described = aws.client("ec2", stack).describe_instances(Filters=[{"Name": "tag:daas:stack", "Values": [name]}])
    assert {i["State"]["Name"] for r in described["Reservations"] for i in r["Instances"]} <= {"terminated"}
    assert f"{name}-ratelimit" not in aws.client("dynamodb", stack).list_tables()["TableNames"]
    parameters = aws.client("ssm", stack).describe_parameters()["Parameters"]
    assert not [p for p in parameters if p["Name"].startswith(f"/daas/{name}/")]


def test_a_failed_deploy_names_the_resource_and_its_reason(account):
    settings, ami = account
    name = f"f{uuid.uuid4().hex[:8]}"
    # A role of that name already exists (left by hand): CloudFormation cannot create the stack's.
    aws.client("iam", settings).create_role(RoleName=f"{name}-worker", AssumeRolePolicyDocument="{}")
    started = time.monotonic()
    result = run_cli(settings, "deploy", "--stack", name, "--ami", ami, "--http", check=False)
    assert result.returncode != 0 and time.monotonic() - started < 120
    assert result.stderr.startswith("deploy failed:") and f"{name}-worker" in result.stderr
    assert "Traceback" not in result.stderr
