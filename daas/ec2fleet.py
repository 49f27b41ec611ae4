"""How the controller launches worker instances on EC2 (issue 19): EC2 Fleet in `instant` mode over
every capacity pool, spot first with an on-demand fallback.

Why EC2 Fleet (instant) and not an Auto Scaling group: the controller already decides how many
workers to add (daas.scaling) and workers end themselves when idle (daas.lifecycle), so what is
needed is one synchronous call that launches N instances from whichever pools have capacity and
says which it launched and why the rest failed. An instant fleet is that call: EC2 itself spreads
the request over the Overrides (every subnet, that is zone, times every instance type of
DAAS_EC2_SUBNETS and DAAS_EC2_INSTANCE_TYPES), moves past a pool out of capacity within the call,
picks spot pools by price and capacity (price-capacity-optimized) and answers with the instance ids
and the per-pool errors. An Auto Scaling group would add a second controller of the same count
(desired capacity, scale-in protection on every worker, a lifecycle call from each worker that
ends itself), and launches asynchronously. Nothing here loops over RunInstances.

DAAS_EC2_CAPACITY: `spot-first` (the default) asks for spot, then for on-demand for what spot did not
give, within the same decision; `spot` or `on-demand` ask for one kind only. Spot workers lose
nothing when taken back (daas.interruption).

CreateFleet takes its instance settings from a launch template only, user data included, so the
controller keeps a version of the workers' template with the user data its settings render
(daas.providers.render_user_data) and the workers' tags: made when the stack's template has a newer
version (a redeploy with a new AMI) or the settings change, named by a digest of its data, reused
otherwise. Without DAAS_EC2_LAUNCH_TEMPLATE it makes the template `<stack>-worker` itself from
DAAS_EC2_AMI, DAAS_EC2_SECURITY_GROUP and DAAS_EC2_INSTANCE_PROFILE.
"""
from __future__ import annotations

import base64
import hashlib
import json
import logging
import uuid

log = logging.getLogger(__name__)
ORDER = {"spot-first": ("spot", "on-demand"), "spot": ("spot",), "on-demand": ("on-demand",)}
OURS = "daas controller: user data and tags "  # the description of the versions made here


class LaunchRefused(Exception):
    """EC2 launched nothing: every pool refused (capacity, a price, a quota)."""


def pools(subnets: list[str], instance_types: list[str]) -> list[dict]:
    """The fleet's Overrides: every subnet with every instance type (no subnet: the template's)."""
    return [{"InstanceType": kind, **({"SubnetId": subnet} if subnet else {})}
            for subnet in (subnets or [""]) for kind in instance_types]


def fleet_request(template: dict, count: int, capacity: str, overrides: list[dict], tags: list[dict]) -> dict:
    """CreateFleet's arguments for `count` instances of one capacity kind."""
    target = {"TotalTargetCapacity": count, "DefaultTargetCapacityType": capacity,
              ("SpotTargetCapacity" if capacity == "spot" else "OnDemandTargetCapacity"): count}
    # The instances' tags are in the request as well as in the template's version (which alone can tag
    # the volumes: an instant fleet tags only instances and itself), so the controller's IAM condition
    # on aws:RequestTag sees them whether or not AWS counts a launch template's tags as requested.
    request = {"Type": "instant", "ClientToken": uuid.uuid4().hex,  # botocore's retries never launch twice
               "LaunchTemplateConfigs": [{"LaunchTemplateSpecification": template, "Overrides": overrides}],
               "TargetCapacitySpecification": target,
               "TagSpecifications": [{"ResourceType": "instance", "Tags": tags}]}
    if capacity == "spot":
        request["SpotOptions"] = {"AllocationStrategy": "price-capacity-optimized"}
    else:
        request["OnDemandOptions"] = {"AllocationStrategy": "lowest-price"}
    return request


def launched(answer: dict) -> tuple[list[str], list[str]]:
    """(instance ids, "<pool>: <code>: <message>" of each refusal) of a CreateFleet answer."""
    ids = [iid for item in answer.get("Instances", []) for iid in item.get("InstanceIds", [])]
    errors = [f"{_pool(error)}: {error.get('ErrorCode')}: {error.get('ErrorMessage', '')}"
              for error in answer.get("Errors", [])]
    return ids, errors


def _pool(error: dict) -> str:
    overrides = error.get("LaunchTemplateAndOverrides", {}).get("Overrides", {})
    where = "/".join(filter(None, (overrides.get("InstanceType"), overrides.get("SubnetId"))))
    return f"{error.get('Lifecycle', '?')} {where or 'any pool'}"


def launch(ec2, count: int, capacity: str, template: dict, overrides: list[dict], tags: list[dict],
           remember) -> list[str]:
    """Launch up to `count` instances, spot then on-demand as `capacity` says, in one decision;
    `remember(ids)` is called after each call that launched some. LaunchRefused if none."""
    ids, refusals = [], []
    for kind in ORDER[capacity]:
        if len(ids) == count:
            break
        new, errors = launched(ec2.create_fleet(**fleet_request(template, count - len(ids), kind, overrides, tags)))
        if new:
            remember(new)
        ids += new
        refusals += errors
    if refusals:
        log.warning("EC2 Fleet launched %d of %d workers; refused: %s", len(ids), count, "; ".join(refusals)[:1000])
    if not ids:
        raise LaunchRefused("; ".join(refusals)[:500] or "EC2 Fleet launched no instance and gave no reason")
    return ids


# -- the launch template version -------------------------------------------------------------------
def template_version(ec2, name: str, base: dict | None, user_data: str, tags: list[dict]) -> dict:
    """{"LaunchTemplateName", "Version"} of a version of `name` with this user data and these tags:
    the latest, if it is that; else a new one, made from `base` (the instance settings; None: from
    the template's latest version not made here: the stack's own, after a redeploy too).

    A version made here is named by a digest of what it adds (and of `base`) and by the version it
    was made from, not by a digest of its whole data as EC2 describes it: EC2 may describe a version
    with defaults filled in, and a digest of those would make a new version at every launch."""
    ours = {"UserData": base64.b64encode(user_data.encode()).decode(),
            "InstanceInitiatedShutdownBehavior": "terminate",  # an idle worker's power-off ends it
            "MetadataOptions": {"HttpTokens": "required", "HttpEndpoint": "enabled"},  # IMDSv2 only
            "TagSpecifications": [{"ResourceType": kind, "Tags": tags} for kind in ("instance", "volume")]}
    digest = hashlib.sha256(json.dumps([ours, base], sort_keys=True).encode()).hexdigest()[:16]
    latest = _version(ec2, name, "$Latest")
    made_here = latest.get("VersionDescription", "").startswith(OURS)
    source = latest["VersionDescription"].rsplit(" ", 1)[-1] if made_here else str(latest["VersionNumber"])
    description = f"{OURS}{digest} from version {source if base is None else 'settings'}"
    if made_here and latest["VersionDescription"] == description:
        return {"LaunchTemplateName": name, "Version": str(latest["VersionNumber"])}
    if base is None:
        base = request_shaped(ec2, _version(ec2, name, source)["LaunchTemplateData"])
    made = ec2.create_launch_template_version(LaunchTemplateName=name, VersionDescription=description,
                                              LaunchTemplateData={**base, **ours})["LaunchTemplateVersion"]
    log.info("launch template %s: version %s carries the workers' user data", name, made["VersionNumber"])
    return {"LaunchTemplateName": name, "Version": str(made["VersionNumber"])}


def _version(ec2, name: str, version: str) -> dict:
    return ec2.describe_launch_template_versions(LaunchTemplateName=name, Versions=[version])["LaunchTemplateVersions"][0]


def ensure_template(ec2, name: str, data: dict) -> None:
    """Make the launch template `name` (with `data`) unless it exists."""
    found = ec2.describe_launch_templates(Filters=[{"Name": "launch-template-name", "Values": [name]}])
    if not found["LaunchTemplates"]:
        ec2.create_launch_template(LaunchTemplateName=name, LaunchTemplateData=data)


def request_shaped(ec2, data: dict) -> dict:
    """A template version's data as DescribeLaunchTemplateVersions gives it, cut to what
    CreateLaunchTemplateVersion accepts (an answer carries read-only fields, e.g. MetadataOptions'
    State, that a request may not)."""
    shape = ec2.meta.service_model.operation_model("CreateLaunchTemplateVersion").input_shape.members[
        "LaunchTemplateData"]
    return _shaped(data, shape)


def _shaped(value, shape):
    if shape.type_name == "structure" and isinstance(value, dict):
        return {key: _shaped(item, shape.members[key]) for key, item in value.items() if key in shape.members}
    if shape.type_name == "list" and isinstance(value, list):
        return [_shaped(item, shape.member) for item in value]
    return value
