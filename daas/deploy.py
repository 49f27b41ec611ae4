"""The service on an AWS account as one CloudFormation stack (daas/cloudformation.yaml).

`python -m daas deploy` creates or updates the stack and prints its events as they come;
`python -m daas deploy --check` makes read-only calls and says what would make a deploy fail;
`python -m daas destroy` ends the stack's workers, empties its buckets, deletes the queues its
processes made, the stack and its secrets. With DAAS_AWS_ENDPOINT all three work against the local
endpoint (moto's CloudFormation), which is how the tests run them.

Secrets (the API keys, Flower's password) are SecureString parameters under /daas/<stack>/, made here
because CloudFormation cannot make SecureString parameters; the processes read them at start
(daas.parameters). They never appear in the template, the user data or a log.
"""
from __future__ import annotations

import secrets
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, NamedTuple

from botocore.exceptions import ClientError

from daas import aws, leases
from daas.config import Settings

TEMPLATE = Path(__file__).with_name("cloudformation.yaml")
AMI_TAG = ("daas:role", "worker-ami")  # set by worker_ami/daas-worker.pkr.hcl
SECRETS = ("api-keys", "flower-password")
VCPU_QUOTA = ("ec2", "L-1216C47A")  # Running On-Demand Standard (A, C, D, H, I, M, R, T, Z) instances
DONE = {"CREATE_COMPLETE", "UPDATE_COMPLETE", "DELETE_COMPLETE", "IMPORT_COMPLETE"}
FAILED_ENDINGS = ("_FAILED", "ROLLBACK_COMPLETE")

Out = Callable[[str], None]

# What AWS authorises beyond the action called: (action, what it also needs, when). The local
# endpoint checks none of these; tests/test_iam.py checks every role of the template against this
# table. From AWS's service authorisation reference and API documentation, not verified on AWS here.
IMPLIED_PERMISSIONS = (
    ("sqs:CreateQueue", "sqs:TagQueue", "tags given at creation: per-process queues carry their lease"),
    ("sns:CreateTopic", "sns:TagResource", "tags given at creation (kombu tags every topic it makes)"),
    ("ec2:RunInstances", "iam:PassRole", "an instance profile (the workers' role)"),
    ("ec2:RunInstances", "ec2:CreateTags", "TagSpecifications (workers are found by their tags)"),
    ("ec2:RunInstances", "ec2:DescribeLaunchTemplateVersions", "a launch template at version $Latest"),
    ("ec2:CreateFleet", "ec2:RunInstances", "an instant fleet launches with the caller's RunInstances"),
    ("ec2:CreateFleet", "ec2:CreateTags", "instance tags of an instant fleet"),
    ("ec2:CreateFleet", "iam:PassRole", "the launch template's instance profile"),
    ("ec2:CreateFleet", "iam:CreateServiceLinkedRole", "the first fleet (and spot) launch of an account makes "
     "AWSServiceRoleForEC2Fleet and AWSServiceRoleForEC2Spot"),
    ("s3:GetObject", "s3:ListBucket", "a missing key answers 404, not 403 (a gone upload is not a permission error)"),
)


class DeployError(Exception):
    """What stopped a deploy or destroy, in words."""


@dataclass(frozen=True)
class Options:
    """What `python -m daas deploy` was asked for; empty values are found in the account."""

    stack: str
    ami: str = ""
    subnets: tuple[str, ...] = ()
    certificate_arn: str = ""
    allow_http: bool = False
    retention_days: int = 30
    web_hosts: int = 2
    scale_max: int = 20
    worker_instance_types: str = Settings.ec2_instance_types  # comma-separated pools; the first is the template's
    worker_capacity: str = Settings.ec2_capacity
    web_instance_type: str = "t3.small"
    controller_instance_type: str = "t3.small"
    rate_limit: int = 600
    batch_source: str = ""


def parameter_name(stack: str, secret: str) -> str:
    return f"/daas/{stack}/{secret}"


def newest_worker_ami(settings: Settings) -> str | None:
    """The newest AMI of this account tagged daas:role=worker-ami (what Packer builds)."""
    images = aws.client("ec2", settings).describe_images(
        Owners=["self"], Filters=[{"Name": f"tag:{AMI_TAG[0]}", "Values": [AMI_TAG[1]]}])["Images"]
    return max(images, key=lambda image: image.get("CreationDate", ""))["ImageId"] if images else None


class Network(NamedTuple):
    vpc: str  # "" when the subnets are not all in one VPC, or there is no default VPC
    subnets: list[str]
    zones: set[str]


def network(settings: Settings, subnets: tuple[str, ...]) -> Network:
    """The given subnets, else one default subnet per zone of the default VPC."""
    ec2 = aws.client("ec2", settings)
    if subnets:
        found = ec2.describe_subnets(SubnetIds=list(subnets))["Subnets"]
    else:
        vpcs = ec2.describe_vpcs(Filters=[{"Name": "isDefault", "Values": ["true"]}])["Vpcs"]
        if not vpcs:
            return Network("", [], set())
        found = ec2.describe_subnets(Filters=[{"Name": "vpc-id", "Values": [vpcs[0]["VpcId"]]},
                                              {"Name": "default-for-az", "Values": ["true"]}])["Subnets"]
    found = sorted(found, key=lambda subnet: subnet["AvailabilityZone"])
    vpcs = {subnet["VpcId"] for subnet in found}
    return Network(vpcs.pop() if len(vpcs) == 1 else "", [s["SubnetId"] for s in found],
                   {s["AvailabilityZone"] for s in found})


def problems(settings: Settings, options: Options, notes: list[str] | None = None,
             net: Network | None = None) -> list[str]:
    """What in the account would make a deploy fail, in words (read-only calls only); what could
    not be checked goes to `notes`. `net` is `options.subnets`' network where the caller has it."""
    found, notes = [], notes if notes is not None else []
    ami = options.ami or newest_worker_ami(settings)
    if not ami:
        found.append(f"no AMI tagged {AMI_TAG[0]}={AMI_TAG[1]} in {settings.region}: build one "
                     "(`packer build worker_ami/`, see worker_ami/README.md) or pass --ami")
    elif options.ami and not _exists(lambda: aws.client("ec2", settings).describe_images(ImageIds=[ami])["Images"]):
        found.append(f"the AMI {ami} does not exist in {settings.region}")
    vpc, subnets, zones = net or network(settings, options.subnets)
    if not vpc:
        found.append("the subnets must all be in one VPC (no default VPC here: pass --subnets)")
    if len(zones) < 2:
        found.append(f"the load balancer needs subnets in two availability zones; found {len(zones)} "
                     f"({', '.join(subnets) or 'none'}): pass --subnets")
    if options.certificate_arn:
        if not _exists(lambda: aws.client("acm", settings).describe_certificate(
                CertificateArn=options.certificate_arn)):
            found.append(f"the certificate {options.certificate_arn} does not exist in {settings.region}")
    elif not options.allow_http:
        found.append("no --certificate-arn for HTTPS: give one, or --http to serve plain HTTP on purpose")
    found += _quota_problems(settings, options, notes)
    status = stack_status(settings, options.stack)
    if status and status.endswith(FAILED_ENDINGS) and status != "UPDATE_ROLLBACK_COMPLETE":
        found.append(f"the stack {options.stack} is {status}: remove it with `python -m daas destroy` first")
    try:
        aws.client("cloudformation", settings).validate_template(TemplateBody=TEMPLATE.read_text())
    except ClientError as exc:
        found.append(f"CloudFormation refuses the template: {aws.error_message(exc)}")
    return found


def _quota_problems(settings: Settings, options: Options, notes: list[str]) -> list[str]:
    ec2 = aws.client("ec2", settings)
    workers = [t.strip() for t in options.worker_instance_types.split(",") if t.strip()]
    others = {options.web_instance_type: options.web_hosts}
    others[options.controller_instance_type] = others.get(options.controller_instance_type, 0) + 1
    try:
        described = ec2.describe_instance_types(InstanceTypes=sorted({*workers, *others}))["InstanceTypes"]
    except ClientError as exc:
        return [f"unknown instance type: {aws.error_message(exc)}"]
    vcpus = {t["InstanceType"]: t["VCpuInfo"]["DefaultVCpus"] for t in described}
    # At its largest: every worker on demand (the spot fallback) in the largest of the pools' types.
    needed = max(vcpus[name] for name in workers) * options.scale_max + sum(
        vcpus[name] * count for name, count in others.items())
    try:
        quota = aws.client("service-quotas", settings).get_service_quota(
            ServiceCode=VCPU_QUOTA[0], QuotaCode=VCPU_QUOTA[1])["Quota"]["Value"]
    except ClientError as exc:
        notes.append(f"could not read the on-demand vCPU quota ({aws.error_message(exc)}); the stack needs {needed} vCPUs "
                     "at its largest")
        return []
    if quota < needed:
        return [f"the on-demand vCPU quota is {quota:.0f} but the stack needs {needed} at its largest "
                f"({options.scale_max} workers of {options.worker_instance_types}, {options.web_hosts} web hosts, "
                "the control host): ask for more in Service Quotas, or lower --scale-max"]
    return []


def _exists(call: Callable[[], object]) -> bool:
    try:
        return bool(call())
    except ClientError:
        return False


def stack_status(settings: Settings, stack: str) -> str | None:
    try:
        return aws.client("cloudformation", settings).describe_stacks(StackName=stack)["Stacks"][0]["StackStatus"]
    except ClientError as exc:
        if "does not exist" in aws.error_message(exc):
            return None
        raise


def ensure_secrets(settings: Settings, stack: str, out: Out) -> None:
    """The stack's SecureString parameters: an API key and Flower's password, generated once."""
    ssm = aws.client("ssm", settings)
    for secret in SECRETS:
        name = parameter_name(stack, secret)
        try:
            ssm.get_parameter(Name=name)
        except ssm.exceptions.ParameterNotFound:
            ssm.put_parameter(Name=name, Type="SecureString", Value=secrets.token_urlsafe(24),
                              Description=f"daas stack {stack}: {secret}", Tags=[{"Key": leases.STACK_TAG, "Value": stack}])
            out(f"made {name} (SecureString); read it with: aws ssm get-parameter --with-decryption --name {name}")


def template_parameters(options: Options, net: Network) -> list[dict]:
    """The template's parameters for `options`, whose AMI and network `deploy` has looked up and checked."""
    values = {"Ami": options.ami, "VpcId": net.vpc, "Subnets": ",".join(net.subnets), "CertificateArn": options.certificate_arn,
              "AllowHttp": "true" if options.allow_http else "false", "RetentionDays": str(options.retention_days),
              "WebHosts": str(options.web_hosts), "ScaleMax": str(options.scale_max),
              "WorkerInstanceTypes": options.worker_instance_types, "WorkerCapacity": options.worker_capacity,
              "WebInstanceType": options.web_instance_type,
              "ControllerInstanceType": options.controller_instance_type, "RateLimit": str(options.rate_limit),
              "BatchSourceBucket": options.batch_source}
    return [{"ParameterKey": key, "ParameterValue": value} for key, value in values.items()]


def deploy(settings: Settings, options: Options, out: Out = print) -> dict[str, str]:
    """Create or update the stack; return its outputs. Raises DeployError with the reason of the
    first resource that failed."""
    notes: list[str] = []
    # The AMI and the network are looked up once: problems() checks them, and the template gets them.
    options = replace(options, ami=options.ami or newest_worker_ami(settings) or "")
    net = network(settings, options.subnets)
    found = problems(settings, options, notes, net)
    for note in notes:
        out(f"note: {note}")
    if found:
        raise DeployError("; ".join(found))
    ensure_secrets(settings, options.stack, out)
    cfn = aws.client("cloudformation", settings)
    request = {"StackName": options.stack, "TemplateBody": TEMPLATE.read_text(),
               "Parameters": template_parameters(options, net), "Capabilities": ["CAPABILITY_NAMED_IAM"],
               "Tags": [{"Key": leases.STACK_TAG, "Value": options.stack}]}
    since = time.time() - 1
    try:
        if stack_status(settings, options.stack) is None:
            out(f"creating stack {options.stack} in {settings.region}")
            # A failed first create leaves nothing behind to delete by hand.
            cfn.create_stack(**request, OnFailure="DELETE")
        else:
            out(f"updating stack {options.stack} in {settings.region}")
            cfn.update_stack(**request)
    except ClientError as exc:
        if "No updates are to be performed" not in aws.error_message(exc):
            raise DeployError(aws.error_message(exc)) from None
        out("no changes")
    watch(settings, options.stack, since, out)
    outputs = stack_outputs(settings, options.stack)
    out(f"daas is deployed: {outputs.get('Url', '?')}")
    return outputs


def stack_settings(settings: Settings, stack: str) -> Settings:
    """`settings` pointed at a deployed stack: its name and its generated bucket names (what the
    user data writes into each host's /etc/daas/daas.env)."""
    outputs = stack_outputs(settings, stack)
    return settings.with_(stack=stack, input_bucket=outputs["InputBucket"], output_bucket=outputs["OutputBucket"],
                          queue=f"{stack}-classify", control_queue=f"{stack}-control")


def stack_outputs(settings: Settings, stack: str) -> dict[str, str]:
    described = aws.client("cloudformation", settings).describe_stacks(StackName=stack)["Stacks"][0]
    return {output["OutputKey"]: output["OutputValue"] for output in described.get("Outputs", [])}


def watch(settings: Settings, stack: str, since: float, out: Out, poll: float | None = None) -> str:
    """Print the stack's new events until it settles; raise DeployError on a failure."""
    cfn = aws.client("cloudformation", settings)
    poll = poll if poll is not None else (0.2 if settings.aws_endpoint else 5.0)
    seen: set[str] = set()
    failure = ""
    while True:
        try:
            events = cfn.describe_stack_events(StackName=stack)["StackEvents"]
        except ClientError as exc:
            if "does not exist" in aws.error_message(exc):
                return "DELETE_COMPLETE"
            raise
        for event in reversed(events):
            if event["EventId"] in seen or event["Timestamp"].timestamp() < since:
                continue
            seen.add(event["EventId"])
            reason = event.get("ResourceStatusReason") or ""
            out(f"  {event['Timestamp']:%H:%M:%S}  {event['ResourceStatus']:<20} {event['LogicalResourceId']}"
                f" ({event['ResourceType']}){'  ' + reason if reason else ''}")
            if event["ResourceStatus"].endswith("_FAILED") and not failure:
                failure = f"{event['LogicalResourceId']}: {reason or event['ResourceStatus']}"
        status = stack_status(settings, stack) or "DELETE_COMPLETE"
        if status in DONE:
            return status
        if status.endswith(FAILED_ENDINGS):
            raise DeployError(f"stack {stack} is {status}; the first failure: {failure or 'see the events above'}")
        time.sleep(poll)


def destroy(settings: Settings, stack: str, out: Out = print) -> None:
    """Remove everything of the stack from the account: its workers (the controller's launches,
    which CloudFormation does not know), its buckets' contents, the queues its processes made, the
    stack, and its secrets."""
    if stack_status(settings, stack) is None:
        out(f"no stack {stack} in {settings.region}")
    else:
        pages = aws.client("cloudformation", settings).get_paginator("list_stack_resources").paginate(StackName=stack)
        resources = {r["LogicalResourceId"]: r.get("PhysicalResourceId", "")
                     for page in pages for r in page["StackResourceSummaries"]}
        end_workers(settings, stack, out)
        for bucket in (resources.get("InputBucket"), resources.get("OutputBucket")):
            if bucket:
                out(f"emptied {bucket}: {empty_bucket(settings, bucket)} objects")
        # A queue's physical id is its URL on AWS (its name on the local endpoint): keep names.
        delete_process_queues(settings, stack, {r.rsplit("/", 1)[-1] for r in resources.values()}, out)
        since = time.time() - 1
        aws.client("cloudformation", settings).delete_stack(StackName=stack)
        out(f"deleting stack {stack}")
        watch(settings, stack, since, out)
    ssm = aws.client("ssm", settings)
    for secret in SECRETS:
        try:
            ssm.delete_parameter(Name=parameter_name(stack, secret))
        except ssm.exceptions.ParameterNotFound:
            pass
    out(f"stack {stack} is gone")


def end_workers(settings: Settings, stack: str, out: Out) -> None:
    ec2 = aws.client("ec2", settings)
    filters = [{"Name": "tag:daas:stack", "Values": [stack]}, {"Name": "tag:daas:role", "Values": ["worker"]},
               {"Name": "instance-state-name", "Values": ["pending", "running", "stopping", "stopped"]}]
    ids = [instance["InstanceId"] for page in ec2.get_paginator("describe_instances").paginate(Filters=filters)
           for reservation in page["Reservations"] for instance in reservation["Instances"]]
    if ids:
        ec2.terminate_instances(InstanceIds=ids)
        out(f"ending {len(ids)} workers")
        # Their security group belongs to the stack: it cannot go while an instance uses it.
        ec2.get_waiter("instance_terminated").wait(InstanceIds=ids, WaiterConfig={
            "Delay": 1 if settings.aws_endpoint else 10, "MaxAttempts": 60})


def empty_bucket(settings: Settings, bucket: str) -> int:
    """Delete every object (and version) of a bucket; return how many."""
    s3, count = aws.client("s3", settings), 0
    for page in s3.get_paginator("list_object_versions").paginate(Bucket=bucket):
        keys = [{"Key": o["Key"], "VersionId": o["VersionId"]}
                for o in page.get("Versions", []) + page.get("DeleteMarkers", [])]
        for start in range(0, len(keys), 1000):
            s3.delete_objects(Bucket=bucket, Delete={"Objects": keys[start:start + 1000], "Quiet": True})
        count += len(keys)
    return count


def delete_process_queues(settings: Settings, stack: str, keep: set[str], out: Out) -> None:
    """The per-process queues (reply, pidbox, event receivers) tagged with this stack at creation."""
    sqs, deleted = aws.client("sqs", settings), 0
    for page in sqs.get_paginator("list_queues").paginate(QueueNamePrefix=stack):
        for url in page.get("QueueUrls", []):
            if url.rsplit("/", 1)[-1] in keep:
                continue
            tags = sqs.list_queue_tags(QueueUrl=url).get("Tags", {})
            if tags.get(leases.STACK_TAG) == stack:
                sqs.delete_queue(QueueUrl=url)
                deleted += 1
    out(f"deleted {deleted} queues the stack's processes made")


# -- the commands (`python -m daas deploy | destroy`, wired in daas/cli.py) -------------------------
def _say(line: str) -> None:
    print(line, flush=True)


def _for_region(args, settings: Settings) -> Settings:
    return settings.with_(region=args.region) if args.region else settings


def command_deploy(args, settings: Settings) -> int:
    settings = _for_region(args, settings)
    options = options_from_args(args, settings)
    if args.check:
        notes: list[str] = []
        found = problems(settings, options, notes)
        for line in [f"- {problem}" for problem in found] + [f"note: {note}" for note in notes]:
            _say(line)
        _say(f"stack {options.stack} in {settings.region}: " + (
            f"{len(found)} problem(s) would stop a deploy" if found else "nothing found that would stop a deploy"))
        return 1 if found else 0
    return _in_words("deploy", lambda: deploy(settings, options, out=_say))


def command_destroy(args, settings: Settings) -> int:
    settings = _for_region(args, settings)
    stack = args.stack or settings.stack
    if not args.yes and not confirm(stack, settings.region):
        raise SystemExit("not destroyed (on a terminal, type the stack's name; in a script, pass --yes)")
    return _in_words("destroy", lambda: destroy(settings, stack, out=_say))


def _in_words(what: str, run: Callable[[], object]) -> int:
    """Run a command; its own failure ends the process with one line, not a traceback (AWS's
    failures, a denied call or no credentials, are worded for every command by daas.cli.main)."""
    try:
        run()
    except DeployError as exc:
        raise SystemExit(f"{what} failed: {exc}") from None
    return 0


def options_from_args(args, settings: Settings) -> Options:
    if "," in (args.batch_source or settings.batch_sources):
        raise SystemExit("the deploy grants one batch source bucket (--batch-source NAME); name one")
    return Options(stack=args.stack or settings.stack, ami=args.ami or settings.ec2_ami,
                   subnets=tuple(s for s in (args.subnets or "").split(",") if s),
                   certificate_arn=args.certificate_arn, allow_http=args.http, retention_days=args.retention_days,
                   web_hosts=args.web_hosts, scale_max=args.scale_max, worker_instance_types=args.instance_types,
                   worker_capacity=args.capacity,
                   batch_source=args.batch_source or settings.batch_sources)


def confirm(stack: str, region: str) -> bool:
    """On a terminal, the stack's name typed back; never prompts without one (scripts pass --yes)."""
    if not sys.stdin.isatty():
        return False
    answer = input(f"This deletes stack {stack} in {region} with its buckets' images and results. "
                   f"Type its name to go on: ")
    return answer.strip() == stack
