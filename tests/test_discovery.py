"""natfleet.discovery and natfleet.aws against in-process moto (never real AWS).

The world built by :func:`world`: one VPC and
- nat-tag:   tagged Role=nat only
- nat-route: named by a route table's 0.0.0.0/0 (InstanceId target) only
- nat-eni:   named by a route table's 0.0.0.0/0 through its ENI only
- nat-sdc:   source/dest check off only
- nat-all:   tagged, routed to and check off (one device, three reasons)
- web:       an ordinary instance (never found)
- gone:      terminated, still the target of a route (a blackhole)
- a NAT gateway with an EIP in a public subnet, used by one route table.
"""

from __future__ import annotations

import json
from pathlib import Path

import boto3
import pytest
from botocore.stub import Stubber

from natfleet import aws, discovery
from natfleet.discovery import (
    RouteHit,
    default_routes,
    devices_to_targets,
    discover,
    targets_and_errors,
)
from natfleet.errors import AwsError, UsageError
from natfleet.models import Device

DATA = Path(__file__).parent / "data" / "aws"
AMI = "ami-760aaa0f"  # Amazon Linux in moto
REGION = "us-east-1"


def _run(ec2, subnet: str, name: str, tags: dict[str, str] | None = None, **kw) -> dict:
    all_tags = [{"Key": "Name", "Value": name}] + [
        {"Key": k, "Value": v} for k, v in (tags or {}).items()
    ]
    return ec2.run_instances(
        ImageId=AMI,
        MinCount=1,
        MaxCount=1,
        SubnetId=subnet,
        InstanceType="t4g.nano",
        TagSpecifications=[{"ResourceType": "instance", "Tags": all_tags}],
        **kw,
    )["Instances"][0]


def _default_route(ec2, vpc: str, **target) -> str:
    rtb = ec2.create_route_table(VpcId=vpc)["RouteTable"]["RouteTableId"]
    ec2.create_route(RouteTableId=rtb, DestinationCidrBlock="0.0.0.0/0", **target)
    return rtb


def world(session) -> dict[str, str]:
    """Build the world described in the module docstring; returns names -> ids."""
    ec2 = session.client("ec2", region_name=REGION)
    vpc = ec2.create_vpc(CidrBlock="10.0.0.0/16")["Vpc"]["VpcId"]
    private = ec2.create_subnet(VpcId=vpc, CidrBlock="10.0.1.0/24")["Subnet"]["SubnetId"]
    public = ec2.create_subnet(VpcId=vpc, CidrBlock="10.0.0.0/24")["Subnet"]["SubnetId"]
    ids = {"vpc": vpc}
    nat = {"Role": "nat"}
    for name, tags in [
        ("nat-tag", nat),
        ("nat-route", None),
        ("nat-eni", None),
        ("nat-sdc", None),
        ("nat-all", nat),
        ("web", {"Role": "web"}),
        ("gone", None),
    ]:
        inst = _run(ec2, private, name, tags)
        ids[name] = inst["InstanceId"]
        ids[name + ":eni"] = inst["NetworkInterfaces"][0]["NetworkInterfaceId"]
    for name in ("nat-sdc", "nat-all"):
        ec2.modify_instance_attribute(InstanceId=ids[name], SourceDestCheck={"Value": False})
    ids["rtb-route"] = _default_route(ec2, vpc, InstanceId=ids["nat-route"])
    ids["rtb-eni"] = _default_route(ec2, vpc, NetworkInterfaceId=ids["nat-eni:eni"])
    ids["rtb-all"] = _default_route(ec2, vpc, InstanceId=ids["nat-all"])
    ids["rtb-gone"] = _default_route(ec2, vpc, InstanceId=ids["gone"])
    ec2.terminate_instances(InstanceIds=[ids["gone"]])
    eip = ec2.allocate_address(Domain="vpc")
    gw = ec2.create_nat_gateway(SubnetId=public, AllocationId=eip["AllocationId"])["NatGateway"]
    ids["nat-gw"] = gw["NatGatewayId"]
    ids["eip"] = eip["PublicIp"]
    ids["rtb-gw"] = _default_route(ec2, vpc, NatGatewayId=ids["nat-gw"])
    return ids


def _by_name(devices: list[Device]) -> dict[str, Device]:
    return {d.name or d.id: d for d in devices}


def test_every_way_of_finding_and_merging(session):
    ids = world(session)
    found = _by_name(discover(session))
    assert set(found) == {
        "nat-tag",
        "nat-route",
        "nat-eni",
        "nat-sdc",
        "nat-all",
        ids["gone"],
        ids["nat-gw"],
    }
    assert found["nat-tag"].found_by == ["tag:Role=nat"]
    assert found["nat-route"].found_by == [f"route:{ids['rtb-route']} 0.0.0.0/0"]
    assert found["nat-route"].route_tables == [ids["rtb-route"]]
    assert found["nat-eni"].found_by == [
        f"route:{ids['rtb-eni']} 0.0.0.0/0 via {ids['nat-eni:eni']}"
    ]
    assert found["nat-sdc"].found_by == ["source-dest-check:off"]
    # one device, all reasons, in method order
    assert found["nat-all"].found_by == [
        "tag:Role=nat",
        "source-dest-check:off",
        f"route:{ids['rtb-all']} 0.0.0.0/0",
    ]
    assert found["nat-all"].kind == "instance"
    assert found["nat-all"].state == "running"
    assert found["nat-all"].instance_type == "t4g.nano"
    assert found["nat-all"].private_ip.startswith("10.0.1.")
    assert found["nat-all"].tags == {"Name": "nat-all", "Role": "nat"}
    assert found["nat-all"].blackhole_routes == []


def test_route_to_a_terminated_instance_is_a_blackhole(session):
    ids = world(session)
    gone = _by_name(discover(session))[ids["gone"]]
    reason = f"route:{ids['rtb-gone']} 0.0.0.0/0"
    assert (gone.kind, gone.state, gone.found_by) == ("missing", "terminated", [reason])
    assert gone.blackhole_routes == [reason]
    assert gone.route_tables == [ids["rtb-gone"]]


def test_gateway_with_vpc_subnet_addresses_and_routes(session):
    ids = world(session)
    gw = _by_name(discover(session))[ids["nat-gw"]]
    assert gw.kind == "gateway"
    assert gw.found_by == ["nat-gateway"]
    assert gw.vpc_id == ids["vpc"]
    assert gw.public_ip == ids["eip"]
    assert ids["eip"] in gw.addresses and gw.private_ip in gw.addresses
    assert gw.route_tables == [ids["rtb-gw"]]
    assert gw.state == "available"


def test_methods_tags_and_filters(session):
    ids = world(session)
    only_tags = _by_name(discover(session, methods=["tag"], gateways=False))
    assert set(only_tags) == {"nat-tag", "nat-all"}
    web = _by_name(discover(session, tags=["Role=web"], methods=["tag"], gateways=False))
    assert web["web"].found_by == ["tag:Role=web"]
    any_role = discover(session, tags=["Role="], methods=["tag"], gateways=False)
    assert {d.name for d in any_role} == {"nat-tag", "nat-all", "web"}
    assert any_role[0].found_by == ["tag:Role="]
    one = discover(session, instance_ids=[ids["nat-eni"]])
    assert [d.name for d in one] == ["nat-eni"]  # no gateways when instances are named
    assert discover(session, vpc_ids=["vpc-00000000"]) == []
    with pytest.raises(UsageError, match="'dns' is not one of"):
        discover(session, methods=["dns"])


def test_secondary_eni_with_check_off(session):
    ec2 = session.client("ec2", region_name=REGION)
    vpc = ec2.create_vpc(CidrBlock="10.1.0.0/16")["Vpc"]["VpcId"]
    subnet = ec2.create_subnet(VpcId=vpc, CidrBlock="10.1.0.0/24")["Subnet"]["SubnetId"]
    inst = _run(ec2, subnet, "fck-nat")
    eni = ec2.create_network_interface(SubnetId=subnet)["NetworkInterface"]["NetworkInterfaceId"]
    ec2.attach_network_interface(
        NetworkInterfaceId=eni, InstanceId=inst["InstanceId"], DeviceIndex=1
    )
    ec2.modify_network_interface_attribute(NetworkInterfaceId=eni, SourceDestCheck={"Value": False})
    (dev,) = discover(session, methods=["source-dest-check"], gateways=False)
    assert (dev.name, dev.found_by) == ("fck-nat", [f"source-dest-check:off {eni}"])


def test_default_routes_from_a_real_shaped_answer():
    tables = json.loads((DATA / "route_tables_blackhole.json").read_text())["RouteTables"]
    assert default_routes(tables) == [
        RouteHit("rtb-0a1", "0.0.0.0/0", "vpc-0v1", instance_id="i-0live", eni_id="eni-0live"),
        RouteHit("rtb-0a2", "0.0.0.0/0", "vpc-0v1", eni_id="eni-0gone", blackhole=True),
        RouteHit("rtb-0a2", "::/0", "vpc-0v1", instance_id="i-0v6"),
        RouteHit("rtb-0a3", "0.0.0.0/0", "vpc-0v1", nat_gateway_id="nat-0dead", blackhole=True),
    ]
    assert default_routes(tables)[1].reason == "route:rtb-0a2 0.0.0.0/0 via eni-0gone"


def test_pagination_many_instances(session, monkeypatch):
    ec2 = session.client("ec2", region_name=REGION)
    for _ in range(23):
        ec2.run_instances(
            ImageId=AMI,
            MinCount=1,
            MaxCount=1,
            TagSpecifications=[
                {"ResourceType": "instance", "Tags": [{"Key": "Role", "Value": "nat"}]}
            ],
        )
    pages = []
    real = aws.paginate

    def small_pages(client, operation, **kwargs):
        for page in real(client, operation, PaginationConfig={"PageSize": 5}, **kwargs):
            pages.append(operation)
            yield page

    monkeypatch.setattr(aws, "paginate", small_pages)
    devices = discover(session, methods=["tag"], gateways=False)
    assert len(devices) == 23
    assert pages.count("describe_instances") == 5  # 5+5+5+5+3


def test_regions_all_uses_enabled_regions_only(session):
    regions = aws.list_regions(session)
    assert "us-east-1" in regions and "eu-west-1" in regions
    assert "ap-east-1" not in regions  # moto lists it as not-opted-in
    assert aws.resolve_regions(session, None) == ["us-east-1"]
    assert aws.resolve_regions(session, ["eu-west-1", "eu-west-1"]) == ["eu-west-1"]


def test_discover_across_regions(session):
    for region, name in (("us-east-1", "nat-use1"), ("eu-west-1", "nat-euw1")):
        session.client("ec2", region_name=region).run_instances(
            ImageId=AMI,
            MinCount=1,
            MaxCount=1,
            TagSpecifications=[
                {
                    "ResourceType": "instance",
                    "Tags": [{"Key": "Role", "Value": "nat"}, {"Key": "Name", "Value": name}],
                }
            ],
        )
    devices = discover(session, ["all"], methods=["tag"], profile="lab")
    assert sorted((d.region, d.name, d.profile) for d in devices) == [
        ("eu-west-1", "nat-euw1", "lab"),
        ("us-east-1", "nat-use1", "lab"),
    ]


def test_devices_to_targets_and_errors():
    devices = [
        Device("instance", "i-1", REGION, name="nat-a", private_ip="10.0.1.5", state="running"),
        Device("instance", "i-2", REGION, private_ip="10.0.1.6", public_ip="198.51.100.6"),
        Device("instance", "i-3", REGION, name="nat-c", state="stopped"),
        Device("instance", "i-5", REGION, private_ip="10.0.1.7", state="stopped"),
        Device("gateway", "nat-1", REGION, private_ip="10.0.0.9"),
        Device("missing", "i-4", REGION, state="terminated"),
        Device("instance", "i-6", REGION, private_ip="10.0.1.8", state="shutting-down"),
        Device("instance", "i-7", REGION, public_ip="198.51.100.7", state="stopping"),
    ]
    targets = devices_to_targets(devices)
    assert [(t.name, t.host, t.instance_id, t.region) for t in targets] == [
        ("nat-a", "10.0.1.5", "i-1", REGION),
        ("i-2", "10.0.1.6", "i-2", REGION),
        ("nat-c", "", "i-3", REGION),
        ("i-5", "10.0.1.7", "i-5", REGION),
        ("i-7", "", "i-7", REGION),
    ]
    ok, errors = targets_and_errors(devices, "public")
    assert [t.host for t in ok] == ["198.51.100.6"]
    assert [(e.target.instance_id, e.message) for e in errors] == [
        ("i-1", "no public IP address (instance running): try --address private"),
        ("i-3", "the instance is stopped: start it to read its table"),
        ("i-5", "the instance is stopped: start it to read its table"),  # not tried over SSH
        ("i-7", "the instance is stopping: start it to read its table"),
    ]
    ok, errors = targets_and_errors(devices, "private")
    assert [t.host for t in ok] == ["10.0.1.5", "10.0.1.6"]
    assert [e.target.instance_id for e in errors] == ["i-3", "i-5", "i-7"]
    with pytest.raises(UsageError):
        devices_to_targets(devices, "ipv6")


# --- errors: what the user is told ------------------------------------------------------


def test_missing_credentials_says_what_to_do(monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # belt and braces: nowhere
    session = aws.make_session(region=REGION)
    with pytest.raises(AwsError) as info:
        discover(session)
    assert str(info.value) == aws.NO_CREDENTIALS
    assert "set AWS_PROFILE or run 'aws configure'" in str(info.value)
    assert "--host/--local" in str(info.value)


def test_unknown_profile_and_no_region():
    with pytest.raises(AwsError, match="AWS profile 'nope' not found"):
        aws.make_session(profile="nope")
    with pytest.raises(AwsError, match="no AWS region: pass --region"):
        aws.resolve_regions(aws.make_session())


def _stubbed(service: str):
    session = aws.static_session("testing", "testing", REGION)
    client = aws.client(session, service)
    return session, client, Stubber(client)


def test_access_denied_names_the_iam_action(monkeypatch):
    session, ec2, stub = _stubbed("ec2")
    stub.add_response("describe_instances", {"Reservations": []})
    stub.add_client_error(
        "describe_route_tables",
        service_error_code="UnauthorizedOperation",
        service_message="You are not authorized to perform this operation.",
        http_status_code=403,
    )
    monkeypatch.setattr(discovery.aws, "client", lambda *a, **k: ec2)
    with stub, pytest.raises(AwsError) as info:
        discover(session, methods=["tag", "route"], gateways=False)
    assert str(info.value) == (
        "access denied for ec2:DescribeRouteTables in us-east-1: grant it to your role or "
        "user (config/iam-policy.json lists every action natfleet needs)"
    )


def test_access_denied_cloudwatch_action_name():
    _, cw, stub = _stubbed("cloudwatch")
    stub.add_client_error(
        "get_metric_data", service_error_code="AccessDenied", http_status_code=403
    )
    with stub, pytest.raises(AwsError, match="access denied for cloudwatch:GetMetricData"):
        list(aws.paginate(cw, "get_metric_data", MetricDataQueries=[], StartTime=0, EndTime=1))


def test_endpoint_unreachable(monkeypatch):
    session = aws.static_session("testing", "testing", REGION)
    ec2 = aws.client(session, "ec2", endpoint_url="http://127.0.0.1:9")
    from botocore.exceptions import EndpointConnectionError

    def refuse(**kwargs):
        raise EndpointConnectionError(endpoint_url="https://ec2.nowhere-1.amazonaws.com/")

    monkeypatch.setattr(ec2, "describe_regions", refuse)
    with pytest.raises(AwsError, match="cannot reach https://ec2.nowhere-1.amazonaws.com/"):
        aws.call(ec2, "describe_regions")


def test_policy_lists_exactly_the_calls_made(session):
    """Every API call a discovery + metrics run makes is in config/iam-policy.json, and back."""
    import datetime as dt

    from natfleet import cloudwatch

    world(session)
    made: set[str] = set()
    real_client = aws.client

    def recording_client(*args, **kwargs):
        c = real_client(*args, **kwargs)
        prefix = {"monitoring": "cloudwatch"}.get(
            c.meta.service_model.endpoint_prefix, c.meta.service_model.endpoint_prefix
        )
        c.meta.events.register(
            "before-call", lambda model, **kw: made.add(f"{prefix}:{model.name}")
        )
        return c

    mp = pytest.MonkeyPatch()
    mp.setattr(aws, "client", recording_client)
    try:
        devices = discover(session, ["all"])
        now = dt.datetime.now(dt.timezone.utc)
        ids = [d.id for d in devices if d.kind == "instance"]
        cloudwatch.instance_metrics(session, REGION, ids, now - dt.timedelta(hours=1), now)
        _read_through_ssm_and_eic(session, devices)
    finally:
        mp.undo()
    policy = json.loads((DATA.parent.parent.parent / "config" / "iam-policy.json").read_text())
    actions = {a for st in policy["Statement"] for a in st["Action"]}
    # s3:GetObject is made only for an answer past 24,000 characters with --ssm-output-s3:
    # tests/test_ssm_lab.py records it on a lab box with a big table
    assert made == actions - {"s3:GetObject"}
    s3_only = [st for st in policy["Statement"] if "s3:GetObject" in st["Action"]]
    assert [st["Action"] for st in s3_only] == [["s3:GetObject"]]


def _read_through_ssm_and_eic(session, devices):
    """One summary through SSM Run Command (the lab's runner plays the box, here) and one
    Instance Connect push, with S3 output configured, as `--via ssm --ssm-output-s3` and
    `--eic` make them."""
    import subprocess
    import tempfile
    from pathlib import Path

    from natfleet.eic import EicExecutor
    from natfleet.fleet import ReadOptions, run_fleet
    from natfleet.lab import ssm as lab_ssm
    from natfleet.ssh import SshConnector, SshOptions
    from natfleet.ssm import SsmExecutor, SsmOptions

    [nat] = [d for d in devices if d.kind == "instance" and d.state == "running"][:1]
    target = discovery.devices_to_targets([nat])[0]
    with tempfile.TemporaryDirectory() as folder:
        undo = lab_ssm.install(folder)
        try:
            lab_ssm.write_runner(Path(folder), {nat.private_ip: {}}, not_exist_seconds=0.1)
            options = SsmOptions(output_s3="natfleet-out/runs", gather_seconds=0)
            executor = SsmExecutor(options, {None: session})
            [result] = run_fleet([target], {"mode": "info"}, executor, ReadOptions(timeout=30))
            key = Path(folder) / "id_ed25519"
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)],
                           check=True)  # fmt: skip
            connector = SshConnector(SshOptions(user="ec2-user", identity_files=(str(key),)))
            eic = EicExecutor(connector, {None: session})
            eic._push(target, "ec2-user", key.with_suffix(".pub").read_text().strip())
        finally:
            undo()
    assert result.target == target


def test_client_uses_adaptive_retries(session):
    ec2 = aws.client(session, "ec2")
    # botocore turns max_attempts=10 (retries) into 11 attempts in all
    assert ec2.meta.config.retries == {"mode": "adaptive", "total_max_attempts": 11}
    assert isinstance(session, boto3.Session)
