"""Worker providers and the scaling policy.

The EC2 provider talks to the local AWS endpoint (moto in server mode, over HTTP) exactly as it
would to EC2; the policy `launches` is a pure function, tested from a table.
"""
from __future__ import annotations

import base64
import json
import subprocess
import time
import uuid

import pytest

from daas import autoscale, aws, config, ec2fleet, fleet, scaling
from daas.providers import ROLE_TAG, STACK_TAG, EC2Provider, make_provider
from tests.conftest import make_settings


@pytest.fixture(scope="module")
def network(local_aws) -> dict[str, str]:
    """An AMI, a subnet, a security group and an instance profile on the local endpoint."""
    admin = config.Settings(aws_endpoint=local_aws)
    ec2, iam = aws.client("ec2", admin), aws.client("iam", admin)
    name = f"w{uuid.uuid4().hex[:8]}"
    vpc = ec2.create_vpc(CidrBlock="10.0.0.0/16")["Vpc"]["VpcId"]
    subnet = ec2.create_subnet(VpcId=vpc, CidrBlock="10.0.1.0/24")["Subnet"]["SubnetId"]
    group = ec2.create_security_group(GroupName=name, Description="daas workers", VpcId=vpc)["GroupId"]
    iam.create_instance_profile(InstanceProfileName=name)
    return {"ec2_ami": ec2.describe_images(Owners=["amazon"])["Images"][0]["ImageId"], "ec2_subnets": subnet,
            "ec2_security_group": group, "ec2_instance_profile": name}


@pytest.fixture
def ec2_settings(local_aws, tmp_path, network) -> config.Settings:
    """A fresh stack (own buckets, queues and tag) with the EC2 provider."""
    return make_settings(local_aws, tmp_path, provider="ec2", scale_worker_rate=1.0, **network)


def _instances(settings: config.Settings) -> list[dict]:
    filters = [{"Name": f"tag:{STACK_TAG}", "Values": [settings.stack]}]
    pages = aws.client("ec2", settings).get_paginator("describe_instances").paginate(Filters=filters)
    return [i for page in pages for r in page["Reservations"] for i in r["Instances"]]


def _attribute(settings: config.Settings, instance: str, name: str) -> str:
    answer = aws.client("ec2", settings).describe_instance_attribute(InstanceId=instance, Attribute=name)
    return answer[name[0].upper() + name[1:]]["Value"]


# -- the EC2 provider ------------------------------------------------------------------------------
def _template_data(settings: config.Settings, version: str = "$Latest") -> dict:
    answer = aws.client("ec2", settings).describe_launch_template_versions(
        LaunchTemplateName=f"{settings.stack}-worker", Versions=[version])
    return answer["LaunchTemplateVersions"][0]


def test_launched_workers_are_counted_tagged_and_booted_to_serve_the_stack(ec2_settings, network, tmp_path):
    provider = make_provider(ec2_settings)
    assert isinstance(provider, EC2Provider) and provider.counts() == (0, 0)
    provider.launch(3)
    running, starting = provider.counts()
    assert running + starting == 3
    instances = _instances(ec2_settings)
    assert len(instances) == 3
    for instance in instances:
        tags = {t["Key"]: t["Value"] for t in instance["Tags"]}
        assert tags[ROLE_TAG] == "worker" and tags[STACK_TAG] == ec2_settings.stack
        assert (instance["ImageId"], instance["SubnetId"]) == (network["ec2_ami"], network["ec2_subnets"])
        assert instance["InstanceType"] in ec2_settings.instance_types
        assert instance.get("InstanceLifecycle") == "spot"  # DAAS_EC2_CAPACITY=spot-first, and spot had room
    # What EC2 Fleet takes from the launch template: the controller's version of it (the endpoint
    # launches fleets without applying these, so they are checked where AWS reads them).
    version = _template_data(ec2_settings)
    data = version["LaunchTemplateData"]
    assert version["VersionDescription"].startswith("daas controller: ")
    assert data["ImageId"] == network["ec2_ami"] and data["SecurityGroupIds"] == [network["ec2_security_group"]]
    assert data["IamInstanceProfile"] == {"Name": network["ec2_instance_profile"]}
    assert data["MetadataOptions"]["HttpTokens"] == "required"  # IMDSv2 only
    assert data["InstanceInitiatedShutdownBehavior"] == "terminate"  # an idle worker's power-off ends it
    assert {t["ResourceType"] for t in data["TagSpecifications"]} == {"instance", "volume"}
    user_data = base64.b64decode(data["UserData"]).decode()
    assert f"DAAS_QUEUE={ec2_settings.queue}\n" in user_data
    assert f"DAAS_INPUT_BUCKET={ec2_settings.input_bucket}\n" in user_data
    assert "DAAS_IMDS_ENDPOINT=http://169.254.169.254\n" in user_data
    (tmp_path / "user-data").write_text(user_data)
    subprocess.run(["bash", "-n", str(tmp_path / "user-data")], check=True)


def test_the_template_version_is_made_once_and_again_only_when_the_settings_change(ec2_settings):
    EC2Provider(ec2_settings).launch(1)
    first = _template_data(ec2_settings)["VersionNumber"]
    EC2Provider(ec2_settings).launch(1)
    assert _template_data(ec2_settings)["VersionNumber"] == first  # reused
    EC2Provider(ec2_settings.with_(idle_timeout=120)).launch(1)
    changed = _template_data(ec2_settings)
    assert changed["VersionNumber"] == first + 1
    assert "DAAS_IDLE_TIMEOUT=120\n" in base64.b64decode(changed["LaunchTemplateData"]["UserData"]).decode()


def test_stacks_count_only_their_own_workers(local_aws, tmp_path, network):
    first = make_settings(local_aws, tmp_path / "a", provider="ec2", **network)
    second = make_settings(local_aws, tmp_path / "b", provider="ec2", **network)
    EC2Provider(first).launch(2)
    EC2Provider(second).launch(1)
    assert sum(EC2Provider(first).counts()) == 2
    assert sum(EC2Provider(second).counts()) == 1


def test_stopped_and_terminated_instances_are_not_counted(ec2_settings):
    provider = EC2Provider(ec2_settings)
    provider.launch(3)
    ids = [i["InstanceId"] for i in _instances(ec2_settings)]
    ec2 = aws.client("ec2", ec2_settings)
    ec2.stop_instances(InstanceIds=ids[:1])
    ec2.terminate_instances(InstanceIds=ids[1:2])
    assert sum(provider.counts()) == 1


def test_a_deployed_stacks_template_gives_the_image_and_network(ec2_settings, network):
    ec2 = aws.client("ec2", ec2_settings)
    name = f"{ec2_settings.stack}-deployed"
    ec2.create_launch_template(LaunchTemplateName=name, LaunchTemplateData={
        "ImageId": network["ec2_ami"], "InstanceType": "c7i.xlarge",
        "MetadataOptions": {"HttpTokens": "required", "HttpEndpoint": "enabled", "HttpPutResponseHopLimit": 1}})
    settings = ec2_settings.with_(ec2_launch_template=name, ec2_ami="", ec2_subnets="", ec2_instance_types="c7i.xlarge")
    EC2Provider(settings).launch(1)
    [instance] = _instances(settings)
    assert instance["ImageId"] == network["ec2_ami"] and instance["InstanceType"] == "c7i.xlarge"
    assert {"Key": ROLE_TAG, "Value": "worker"} in instance["Tags"]
    # The controller's version of the stack's template: its data, plus the user data and tags.
    latest = ec2.describe_launch_template_versions(LaunchTemplateName=name, Versions=["$Latest"])[
        "LaunchTemplateVersions"][0]
    assert latest["VersionNumber"] == 2 and latest["LaunchTemplateData"]["ImageId"] == network["ec2_ami"]
    assert "UserData" in latest["LaunchTemplateData"]
    # A redeploy with a new AMI makes the stack's version 3: the next launch makes one from it.
    other_ami = ec2.describe_images(Owners=["amazon"])["Images"][1]["ImageId"]
    ec2.create_launch_template_version(LaunchTemplateName=name, LaunchTemplateData={
        "ImageId": other_ami, "InstanceType": "c7i.xlarge"})
    EC2Provider(settings).launch(1)
    latest = ec2.describe_launch_template_versions(LaunchTemplateName=name, Versions=["$Latest"])[
        "LaunchTemplateVersions"][0]
    assert latest["VersionNumber"] == 4 and latest["VersionDescription"].endswith("from version 3")
    assert latest["LaunchTemplateData"]["ImageId"] == other_ami
    assert other_ami in {i["ImageId"] for i in _instances(settings)}


SPOT_REFUSED = (b'<?xml version="1.0" encoding="UTF-8"?>\n<CreateFleetResponse xmlns="http://ec2.amazonaws.com/doc/'
                b'2016-11-15/"><requestId>proxy</requestId><fleetId>fleet-0123abcd-0000-4000-8000-000000000000'
                b"</fleetId><errorSet><item><lifecycle>spot</lifecycle><errorCode>InsufficientInstanceCapacity"
                b"</errorCode><errorMessage>There is no Spot capacity available that matches your request."
                b"</errorMessage></item></errorSet><fleetInstanceSet/></CreateFleetResponse>")


def test_launches_go_to_every_pool_spot_first_and_fall_back_to_on_demand_in_the_same_decision(
        local_aws, tmp_path, network):
    """Issue 19, part 3: EC2 Fleet (instant) over every subnet × instance type; where spot is refused
    everywhere, the same launch asks for on-demand instances."""
    from tests.aws_proxy import AwsProxy, Rule

    ec2 = aws.client("ec2", config.Settings(aws_endpoint=local_aws))
    vpc = ec2.describe_subnets(SubnetIds=[network["ec2_subnets"]])["Subnets"][0]["VpcId"]
    subnets = [s["SubnetId"] for s in ec2.describe_subnets(Filters=[{"Name": "vpc-id", "Values": [vpc]}])["Subnets"]][:2]
    with AwsProxy(local_aws) as proxy:
        settings = make_settings(proxy.url, tmp_path, provider="ec2", **{**network, "ec2_subnets": ",".join(subnets)},
                                 ec2_instance_types="c7i.large,m7i.large")
        fleets = proxy.add(Rule("POST", "/", action="CreateFleet"))
        refused = proxy.add(Rule("POST", "/", action="CreateFleet", body_contains=b"DefaultTargetCapacityType=spot",
                                 answer=SPOT_REFUSED))
        EC2Provider(settings).launch(3)
        assert (fleets.count, refused.count) == (2, 1)  # spot (refused), then on demand
        instances = _instances(settings)
        assert len(instances) == 3 and all(i.get("InstanceLifecycle") != "spot" for i in instances)
        assert sum(EC2Provider(settings).counts()) == 3
        [fleet] = aws.client("ec2", settings).describe_fleets()["Fleets"][-1:]
        overrides = fleet["LaunchTemplateConfigs"][0]["Overrides"]
        assert sorted((o["SubnetId"], o["InstanceType"]) for o in overrides) == sorted(
            (s, t) for s in subnets for t in ("c7i.large", "m7i.large"))
        assert fleet["TargetCapacitySpecification"]["DefaultTargetCapacityType"] == "on-demand"

        # Spot only, and refused: nothing launched, and the refusal says why (the scaler backs off).
        with pytest.raises(ec2fleet.LaunchRefused, match="InsufficientInstanceCapacity"):
            EC2Provider(settings.with_(ec2_capacity="spot")).launch(2)
        assert len(_instances(settings)) == 3


def test_a_refused_launch_is_recorded_and_retried_with_a_growing_backoff(ec2_settings, monkeypatch):
    """EC2 refusing a launch (here: a launch template that does not exist, refused by the endpoint)
    never ends the tick unrecorded (issue 17): the refusal is its reason, and the next tries wait."""
    monkeypatch.setattr(autoscale, "_refusals", {"count": 0, "retry_at": 0.0, "reason": ""})
    provider = EC2Provider(ec2_settings.with_(ec2_launch_template=f"{ec2_settings.stack}-missing"))
    launched, refused = autoscale._launch(provider, 2, interval=5)
    assert launched == 0 and "ClientError" in refused
    first_wait = autoscale._refusals["retry_at"] - time.time()
    assert 5 < first_wait <= 10  # 5 s × 2
    calls = []
    monkeypatch.setattr(provider, "launch", lambda count: calls.append(count))
    assert autoscale._launch(provider, 2, interval=5) == (0, refused) and not calls  # waiting: not asked
    monkeypatch.setattr(autoscale, "_refusals", {**autoscale._refusals, "retry_at": 0.0})
    assert autoscale._launch(provider, 2, interval=5) == (2, "") and calls == [2]  # accepted: backoff reset
    assert autoscale._refusals["count"] == 0


def test_missing_ami_names_the_setting(ec2_settings):
    provider = EC2Provider(ec2_settings.with_(ec2_ami=""))
    with pytest.raises(ValueError, match="DAAS_EC2_AMI") as raised:
        provider.launch(1)
    assert "DAAS_EC2_SECURITY_GROUP" not in str(raised.value)  # only what is missing
    assert provider.counts() == (0, 0)


def test_unknown_provider_is_rejected():
    with pytest.raises(config.ConfigError, match="DAAS_PROVIDER='k8s' is none of local, ec2"):
        make_provider(config.Settings(provider="k8s"))


def test_every_capacity_setting_says_what_ec2_fleet_launches():
    assert set(ec2fleet.ORDER) == set(config.CAPACITIES)


# -- the scaling policy ----------------------------------------------------------------------------
# (visible, in_flight, running, starting, target, minimum, maximum) -> workers to launch
POLICY = [
    pytest.param((0, 0, 0, 0, 10, 0, 20), 0, id="no backlog, no workers: scale to zero"),
    pytest.param((0, 0, 0, 0, 10, 1, 20), 1, id="minimum kept with nothing running"),
    pytest.param((0, 0, 1, 0, 10, 1, 20), 0, id="minimum already met"),
    pytest.param((1, 0, 0, 0, 10, 0, 20), 1, id="one image gets a worker"),
    pytest.param((30, 0, 0, 0, 10, 0, 20), 3, id="backlog 30, target 10"),
    pytest.param((25, 0, 0, 0, 10, 0, 20), 3, id="rounded up"),
    pytest.param((500, 0, 0, 0, 10, 0, 20), 20, id="capped at the maximum"),
    pytest.param((500, 0, 5, 0, 10, 0, 20), 15, id="up to the maximum"),
    pytest.param((30, 0, 0, 3, 10, 0, 20), 0, id="booting workers count: no second wave"),
    pytest.param((30, 0, 1, 1, 10, 0, 20), 1, id="running and booting both count"),
    pytest.param((5, 25, 1, 0, 10, 0, 20), 2, id="in flight counts as backlog"),
    pytest.param((0, 1, 0, 0, 1, 0, 20), 1,
                 id="a killed worker's message in flight gets a worker, ready when it comes back"),
    pytest.param((0, 3, 3, 0, 1, 0, 20), 0, id="in flight with busy workers: they hold their own backlog"),
    pytest.param((0, 30, 1, 0, 10, 2, 20), 2, id="in flight counts with nothing waiting; the minimum too"),
    pytest.param((15, 15, 0, 0, 10, 0, 20), 3, id="visible plus in flight"),
    pytest.param((10, 0, 8, 0, 10, 0, 20), 0, id="more workers than needed: never negative"),
    pytest.param((5, 0, 0, 0, 0, 0, 20), 5, id="target 0 treated as 1"),
    pytest.param((0, 0, 0, 0, 10, 3, 2), 2, id="minimum above maximum: the maximum wins"),
]


@pytest.mark.parametrize("row, expected", POLICY)
def test_the_per_message_policy(row, expected):
    visible, in_flight, running, starting, target, minimum, maximum = row
    assert scaling.per_message(visible, in_flight, running, starting,
                              target=target, minimum=minimum, maximum=maximum) == expected


# -- the scaling decision end to end ---------------------------------------------------------------
def test_scale_measures_the_queue_and_launches_ec2_workers_once(ec2_settings, monkeypatch):
    sqs = aws.client("sqs", ec2_settings)
    url = aws.queue_url(ec2_settings, ec2_settings.queue)
    for start in range(0, 25, 10):
        sqs.send_message_batch(QueueUrl=url, Entries=[
            {"Id": str(n), "MessageBody": f"image {n}"} for n in range(start, min(start + 10, 25))])
    sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=5, VisibilityTimeout=600)  # 5 in flight
    provider = EC2Provider(ec2_settings)
    status = autoscale.measure(ec2_settings, provider)
    assert status["queue"] == {"visible": 20, "in_flight": 5}
    assert status["workers"] == {"running": 0, "starting": 0, "retiring": 0} and status["provider"] == "ec2"

    # The beat task itself, configured from the environment as in the controller process.
    for name, value in config.to_env(ec2_settings).items():
        monkeypatch.setenv(name, value)
    autoscale.provider.cache_clear()
    try:
        # 25 tasks at 0.1 a second per worker (1 image/s, 10 images a task), boots of 120 s: one to
        # start with (0 -> 1), then enough for the 25 to be done within two boots (240 s), 120 s
        # after they arrive: three.
        assert autoscale.scale() == 3
        assert autoscale.measure(ec2_settings, provider)["workers"]["starting"] == 3
        assert autoscale.scale() == 0  # the three just launched are capacity already
    finally:
        autoscale.provider.cache_clear()
    assert len(_instances(ec2_settings)) == 3


def _fill_queue(settings: config.Settings, messages: int) -> None:
    sqs, url = aws.client("sqs", settings), aws.queue_url(settings, settings.queue)
    for start in range(0, messages, 10):
        sqs.send_message_batch(QueueUrl=url, Entries=[
            {"Id": str(n), "MessageBody": f"image {n}"} for n in range(start, min(start + 10, messages))])


def test_the_controller_stays_responsive_while_ec2_throttles(local_aws, tmp_path, network, monkeypatch, caplog):
    """Issue 19: describes are shared for a tick, a nudge never waits behind a running decision, and
    a tick while EC2 answers RequestLimitExceeded is decided and recorded from the last answer."""
    import threading

    from daas import health, timeline
    from tests.aws_proxy import AwsProxy, Rule

    with AwsProxy(local_aws) as proxy:
        settings = make_settings(proxy.url, tmp_path, provider="ec2", scale_interval=2.0, scale_worker_rate=1.0,
                                 **network)
        _fill_queue(settings, 25)
        for name, value in config.to_env(settings).items():
            monkeypatch.setenv(name, value)
        autoscale.provider.cache_clear()
        autoscale.observed.cache_clear()
        describes = proxy.add(Rule("POST", "/", action="DescribeInstances"))
        try:
            assert autoscale.scale() == 3
            # One describe a tick: the decisions and housekeeping within it share the answer (a
            # launch makes the next one ask again).
            asked = describes.count
            assert autoscale.scale() == 0 and autoscale.scale() == 0
            autoscale.provider().workers()
            assert describes.count == asked + 1

            # A nudge while a decision waits on a slow describe returns at once; the running decision
            # decides once more when it is done, so the nudge's backlog is not missed.
            slow = proxy.add(Rule("POST", "/", action="DescribeInstances", hold=3.0))
            time.sleep(settings.scale_interval)
            decisions = len(timeline.read(settings.state_dir))
            deciding = threading.Thread(target=autoscale.scale)
            deciding.start()
            deadline = time.monotonic() + 10
            while not slow.count and time.monotonic() < deadline:
                time.sleep(0.05)
            started = time.monotonic()
            assert autoscale.scale() == 0
            assert time.monotonic() - started < 1.0, "the nudge waited behind the running decision"
            deciding.join(30)
            assert len(timeline.read(settings.state_dir)) == decisions + 2
            slow.hold = 0.0

            # Throttled for a while: the tick is still decided and recorded, from the last answer.
            describes.throttle_until = time.time() + 120
            time.sleep(settings.scale_interval)
            started = time.time()
            assert autoscale.scale() == 0
            tick = health.read(settings, health.TICK)
            assert tick["t"] >= started and tick["workers"]["starting"] == 3 and not tick["refused"]
            assert "EC2 throttled DescribeInstances" in caplog.text
        finally:
            autoscale.provider.cache_clear()
            autoscale.observed.cache_clear()


# -- the EC2 lifecycle: launches and ends -------------------------------------------------------------
def test_launches_are_idempotent_and_remembered(ec2_settings):
    template = {"LaunchTemplateName": "t", "Version": "1"}
    first, second = (ec2fleet.fleet_request(template, 5, "spot", ec2fleet.pools([], ["c7i.large"]), []) for _ in "ab")
    assert first["ClientToken"] and first["ClientToken"] != second["ClientToken"]  # retries never launch twice
    assert first["Type"] == "instant" and first["SpotOptions"]["AllocationStrategy"] == "price-capacity-optimized"
    provider = EC2Provider(ec2_settings)
    provider.launch(2)
    # A restarted controller remembers the launches DescribeInstances may not list yet.
    assert set(json.loads((ec2_settings.state_dir / "ec2-launches.json").read_text())) == {
        i["InstanceId"] for i in _instances(ec2_settings)}
    assert sum(EC2Provider(ec2_settings).counts()) == 2


def _joined(settings: config.Settings, instance_id: str) -> None:
    """What a worker on that instance does once it consumes (daas.lifecycle.Heartbeat)."""
    fleet.beat(settings, fleet.node_name(settings, 1234, instance_id), {"beat": time.time()})


def _state(settings: config.Settings, instance_id: str) -> str:
    return next(i["State"]["Name"] for i in _instances(settings) if i["InstanceId"] == instance_id)


def test_instances_that_never_join_or_stop_beating_are_terminated(local_aws, tmp_path, network):
    from daas import control

    settings = make_settings(local_aws, tmp_path, provider="ec2", ec2_join_timeout=1, heartbeat_interval=1, **network)
    provider = EC2Provider(settings)
    provider.launch(3)
    healthy, silent, never = sorted(i["InstanceId"] for i in _instances(settings))
    _joined(settings, healthy)
    _joined(settings, silent)
    time.sleep(1.5)  # past the join timeout: `never` sent no heartbeat
    _joined(settings, healthy)
    ended, _ = control.end_broken_workers(settings, provider)
    assert set(ended) == {never} and "never joined" in ended[never]
    time.sleep(3.2)  # `silent` misses three heartbeats (1 s apart); `healthy` beats on
    _joined(settings, healthy)
    ended, live = control.end_broken_workers(settings, provider)
    assert set(ended) == {silent} and "no heartbeat" in ended[silent]
    assert {_state(settings, i) for i in (never, silent)} <= {"shutting-down", "terminated"}
    assert _state(settings, healthy) == "running" and provider.counts() == (1, 0)
    assert live == {fleet.record_name(settings, fleet.node_name(settings, 1234, healthy))}
    assert set(fleet.heartbeats(settings)) == live  # the dead ones' records are forgotten


def test_an_instance_past_its_lifetime_is_terminated(local_aws, tmp_path, network):
    from daas import control

    settings = make_settings(local_aws, tmp_path, provider="ec2", ec2_join_timeout=1, max_lifetime=1, **network)
    provider = EC2Provider(settings)
    provider.launch(1)
    [instance] = [i["InstanceId"] for i in _instances(settings)]
    _joined(settings, instance)
    assert control.end_broken_workers(settings, provider)[0] == {}
    time.sleep(2.1)
    _joined(settings, instance)  # alive and beating, but too old
    ended, _ = control.end_broken_workers(settings, provider)
    assert "DAAS_MAX_LIFETIME" in ended[instance]
