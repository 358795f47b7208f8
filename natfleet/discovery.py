"""Find NAT instances and NAT gateways in AWS, saying how each was found.

NAT instances are found three ways, each recorded in ``Device.found_by``:

- ``tag:Role=nat``: a tag rule matched (``describe_instances`` with ``tag:KEY`` filters);
- ``route:rtb-0123 0.0.0.0/0`` or ``route:rtb-0456 0.0.0.0/0 via eni-0789``: a route table
  sends a default route (``0.0.0.0/0`` or ``::/0``) to the instance or to an ENI attached to it;
- ``source-dest-check:off`` (or ``source-dest-check:off eni-0789`` for a secondary ENI).

An instance found several ways is one :class:`Device` listing every reason. NAT gateways are
``found_by=["nat-gateway"]``. A default route whose target is gone (terminated instance,
deleted or detached ENI, deleted gateway) is reported as a ``kind="missing"`` device carrying
the route in ``blackhole_routes``; a route AWS marks ``blackhole`` to a live target is listed in
that device's ``blackhole_routes`` too. Instances that are terminated or shutting down are
ignored unless a route still points at them.

The session is always handed in (the lab and tests hand in a moto one); clients come from
:mod:`natfleet.aws`. Every list call goes through a paginator.

Example:
    >>> devices = discover(session, ["eu-west-1"], tags=["Role=nat"], vpc_ids=["vpc-0abc"])
    >>> [(d.id, d.found_by) for d in devices]
    [('i-0123', ['tag:Role=nat', 'route:rtb-0456 0.0.0.0/0', 'source-dest-check:off']),
     ('nat-0789', ['nat-gateway'])]
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Optional

import boto3

from natfleet import aws
from natfleet.config import METHODS, parse_tag
from natfleet.errors import UsageError
from natfleet.models import Device, HostError, Target

log = logging.getLogger(__name__)

DEFAULT_ROUTES = ("0.0.0.0/0", "::/0")
LIVE_STATES = ("pending", "running", "stopping", "stopped")
DEAD_STATES = ("shutting-down", "terminated")
GATEWAY_STATES = ("pending", "available")
_CHUNK = 200  # filter values per request
_MAX_REGION_THREADS = 8


@dataclass(frozen=True)
class RouteHit:
    """One default route of a route table, with its target.

    Example:
        >>> RouteHit("rtb-0456", "0.0.0.0/0", vpc_id="vpc-1", eni_id="eni-0789").reason
        'route:rtb-0456 0.0.0.0/0 via eni-0789'
    """

    route_table_id: str
    destination: str
    vpc_id: str = ""
    instance_id: Optional[str] = None
    eni_id: Optional[str] = None
    nat_gateway_id: Optional[str] = None
    blackhole: bool = False

    @property
    def reason(self) -> str:
        via = f" via {self.eni_id}" if self.eni_id else ""
        return f"route:{self.route_table_id} {self.destination}{via}"


def default_routes(route_tables: Iterable[dict[str, Any]]) -> list[RouteHit]:
    """Default routes to an instance, an ENI or a NAT gateway, from ``describe_route_tables``.

    Client-side, since moto does not implement ``route.instance-id`` filters.

    Example:
        >>> default_routes([{"RouteTableId": "rtb-1", "VpcId": "vpc-1", "Routes": [
        ...     {"DestinationCidrBlock": "0.0.0.0/0", "InstanceId": "i-1", "State": "blackhole"}]}])
        [RouteHit(route_table_id='rtb-1', destination='0.0.0.0/0', vpc_id='vpc-1',
                  instance_id='i-1', eni_id=None, nat_gateway_id=None, blackhole=True)]
    """
    hits = []
    for table in route_tables:
        for route in table.get("Routes", []):
            dest = route.get("DestinationCidrBlock") or route.get("DestinationIpv6CidrBlock")
            if dest not in DEFAULT_ROUTES:
                continue
            target = {
                "instance_id": route.get("InstanceId"),
                "eni_id": route.get("NetworkInterfaceId"),
                "nat_gateway_id": route.get("NatGatewayId"),
            }
            if not any(target.values()):
                continue  # internet gateway, transit gateway, peering...
            if target["nat_gateway_id"]:
                target["instance_id"] = target["eni_id"] = None
            hits.append(
                RouteHit(
                    route_table_id=table["RouteTableId"],
                    destination=dest,
                    vpc_id=table.get("VpcId", ""),
                    blackhole=route.get("State") == "blackhole",
                    **target,
                )
            )
    return hits


def discover(
    session: boto3.Session,
    regions: Optional[Sequence[str]] = None,
    *,
    tags: Sequence[str] = ("Role=nat",),
    methods: Sequence[str] = METHODS,
    vpc_ids: Sequence[str] = (),
    instance_ids: Sequence[str] = (),
    gateways: bool = True,
    profile: Optional[str] = None,
) -> list[Device]:
    """NAT instances and gateways in ``regions`` (None: the session's; ``["all"]``: every one).

    ``tags`` are ``KEY=VALUE`` rules (any matching rule counts; ``KEY=`` any value);
    ``methods`` picks among ``tag``, ``route``, ``source-dest-check``; ``vpc_ids`` and
    ``instance_ids`` narrow every method. Regions are scanned in parallel.

    Example:
        >>> discover(session, ["us-east-1"], methods=["route"])[0].found_by
        ['route:rtb-0123 0.0.0.0/0']
    """
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise UsageError(f"discovery method {unknown[0]!r} is not one of {', '.join(METHODS)}")
    rules = [parse_tag(t) for t in tags]
    names = aws.resolve_regions(session, regions)
    # Clients are made here, in one thread: boto3 sessions are not thread-safe.
    clients = [(region, aws.client(session, "ec2", region)) for region in names]
    scan = _Scan(rules, tuple(methods), tuple(vpc_ids), tuple(instance_ids), gateways, profile)
    if len(clients) == 1:
        results = [scan.region(*clients[0])]
    else:
        with ThreadPoolExecutor(max_workers=min(_MAX_REGION_THREADS, len(clients))) as pool:
            results = list(pool.map(lambda rc: scan.region(*rc), clients))
    return [d for devices in results for d in devices]


@dataclass(frozen=True)
class _Scan:
    """One discovery's settings, applied to one region at a time."""

    rules: list[tuple[str, str]]
    methods: tuple[str, ...]
    vpc_ids: tuple[str, ...]
    instance_ids: tuple[str, ...]
    gateways: bool
    profile: Optional[str]

    def region(self, region: str, ec2: Any) -> list[Device]:
        found = _Found(region, self.profile)
        if "tag" in self.methods:
            for key, value in self.rules:
                tag = [{"Name": f"tag:{key}", "Values": [value]}] if value else []
                key_only = [] if value else [{"Name": "tag-key", "Values": [key]}]
                for inst in self._instances(ec2, tag + key_only):
                    found.instance(inst, f"tag:{key}={value}")
        if "source-dest-check" in self.methods:
            self._source_dest_check(ec2, found)
        if "route" in self.methods or self.gateways:
            self._routes(ec2, found)
        if self.gateways and not self.instance_ids:
            vpc = _vpc_filter(self.vpc_ids)
            states = [{"Name": "state", "Values": list(GATEWAY_STATES)}]
            for page in aws.paginate(ec2, "describe_nat_gateways", Filter=vpc + states):
                for gw in page.get("NatGateways", []):
                    found.gateway(gw)
        found.attach_gateway_routes()
        devices = found.devices()
        log.debug("discovery in %s: %d device(s)", region, len(devices))
        return devices

    def _instances(
        self, ec2: Any, filters: list[dict[str, Any]], live: bool = True
    ) -> Iterator[dict[str, Any]]:
        base = _vpc_filter(self.vpc_ids)
        if self.instance_ids:
            base.append({"Name": "instance-id", "Values": list(self.instance_ids)})
        if live:
            base.append({"Name": "instance-state-name", "Values": list(LIVE_STATES)})
        for page in aws.paginate(ec2, "describe_instances", Filters=base + filters):
            for reservation in page.get("Reservations", []):
                yield from reservation.get("Instances", [])

    def _by_id(self, ec2: Any, ids: Iterable[str]) -> dict[str, dict[str, Any]]:
        """Instances by id, any state; missing ids are simply absent (no NotFound error)."""
        wanted = sorted(set(ids))
        if self.instance_ids:
            wanted = [i for i in wanted if i in self.instance_ids]
        out: dict[str, dict[str, Any]] = {}
        for chunk in _chunks(wanted):
            flt = [{"Name": "instance-id", "Values": chunk}]
            for inst in self._instances(ec2, flt, live=False):
                out[inst["InstanceId"]] = inst
        return out

    def _enis(self, ec2: Any, filters: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        for page in aws.paginate(ec2, "describe_network_interfaces", Filters=filters):
            yield from page.get("NetworkInterfaces", [])

    def _source_dest_check(self, ec2: Any, found: _Found) -> None:
        off = [{"Name": "source-dest-check", "Values": ["false"]}]
        for inst in self._instances(ec2, off):
            if inst.get("SourceDestCheck") is False:
                found.instance(inst, "source-dest-check:off")
        # A secondary ENI (the fck-nat/alterNAT "static ENI") can have the check off alone.
        enis = {}
        for eni in self._enis(ec2, _vpc_filter(self.vpc_ids) + off):
            owner = (eni.get("Attachment") or {}).get("InstanceId")
            if owner and eni.get("SourceDestCheck") is False:
                enis[eni["NetworkInterfaceId"]] = owner
        owners = self._by_id(ec2, enis.values())
        for eni_id, owner in sorted(enis.items()):
            attached = owners.get(owner)
            if (
                attached
                and _state(attached) in LIVE_STATES
                and not found.has(owner, "source-dest-check")
            ):
                found.instance(attached, f"source-dest-check:off {eni_id}")

    def _routes(self, ec2: Any, found: _Found) -> None:
        tables = (
            table
            for page in aws.paginate(
                ec2, "describe_route_tables", Filters=_vpc_filter(self.vpc_ids)
            )
            for table in page.get("RouteTables", [])
        )
        hits = default_routes(tables)
        found.gateway_routes = [h for h in hits if h.nat_gateway_id]
        if "route" not in self.methods:
            return
        # AWS names the instance too when the ENI is attached; moto names only the target.
        eni_ids = sorted({h.eni_id for h in hits if h.eni_id and not h.instance_id})
        eni_owner: dict[str, str] = {}
        for chunk in _chunks(eni_ids):
            for eni in self._enis(ec2, [{"Name": "network-interface-id", "Values": chunk}]):
                owner = (eni.get("Attachment") or {}).get("InstanceId")
                eni_owner[eni["NetworkInterfaceId"]] = owner or ""  # "": detached
        instance_hits = [h for h in hits if h.instance_id or h.eni_id]
        owners = [h.instance_id or eni_owner.get(h.eni_id or "", "") for h in instance_hits]
        instances = self._by_id(ec2, [o for o in owners if o])
        for hit, owner in zip(instance_hits, owners):
            inst = instances.get(owner)
            if self.instance_ids and owner not in self.instance_ids:
                continue
            if inst is None or _state(inst) in DEAD_STATES:
                detached = hit.eni_id in eni_owner and not owner
                state = _state(inst) or ("detached" if detached else "missing")
                found.missing(hit, owner, state)
            else:
                found.instance(inst, hit.reason, hit)


class _Found:
    """Devices found in one region, merged by id."""

    def __init__(self, region: str, profile: Optional[str]) -> None:
        self.region = region
        self.profile = profile
        self.by_id: dict[str, Device] = {}
        self.gateway_routes: list[RouteHit] = []

    def has(self, device_id: str, reason_prefix: str) -> bool:
        device = self.by_id.get(device_id)
        return bool(device and any(r.startswith(reason_prefix) for r in device.found_by))

    def _add(self, device: Device, reason: str, hit: Optional[RouteHit] = None) -> Device:
        device = self.by_id.setdefault(device.id, device)
        if reason not in device.found_by:
            device.found_by.append(reason)
        if hit is not None:
            if hit.route_table_id not in device.route_tables:
                device.route_tables.append(hit.route_table_id)
            if hit.blackhole and hit.reason not in device.blackhole_routes:
                device.blackhole_routes.append(hit.reason)
        return device

    def instance(self, inst: dict[str, Any], reason: str, hit: Optional[RouteHit] = None) -> None:
        self._add(instance_device(inst, self.region, self.profile), reason, hit)

    def gateway(self, gw: dict[str, Any]) -> None:
        self._add(gateway_device(gw, self.region, self.profile), "nat-gateway")

    def missing(self, hit: RouteHit, owner: str, state: str) -> None:
        """A default route to something gone: a blackhole, whatever AWS's State says."""
        target = owner or hit.eni_id or hit.instance_id or hit.nat_gateway_id or ""
        device = Device(
            kind="missing",
            id=target,
            region=self.region,
            vpc_id=hit.vpc_id,
            state=state,
            profile=self.profile,
        )
        self._add(device, hit.reason, RouteHit(**{**hit.__dict__, "blackhole": True}))

    def attach_gateway_routes(self) -> None:
        for hit in self.gateway_routes:
            gw_id = hit.nat_gateway_id or ""
            if gw_id in self.by_id:
                device = self.by_id[gw_id]
                if hit.route_table_id not in device.route_tables:
                    device.route_tables.append(hit.route_table_id)
                if hit.blackhole and hit.reason not in device.blackhole_routes:
                    device.blackhole_routes.append(hit.reason)
            elif hit.blackhole:
                self.missing(hit, gw_id, "deleted")

    def devices(self) -> list[Device]:
        order = {"instance": 0, "gateway": 1, "missing": 2}
        return sorted(self.by_id.values(), key=lambda d: (order.get(d.kind, 3), d.name, d.id))


def instance_device(inst: dict[str, Any], region: str, profile: Optional[str] = None) -> Device:
    """A Device from one ``describe_instances`` instance (no ``found_by`` yet)."""
    tags = _tags(inst.get("Tags"))
    return Device(
        kind="instance",
        id=inst["InstanceId"],
        region=region,
        name=tags.get("Name", ""),
        vpc_id=inst.get("VpcId", ""),
        subnet_id=inst.get("SubnetId", ""),
        private_ip=inst.get("PrivateIpAddress") or None,
        public_ip=inst.get("PublicIpAddress") or None,
        instance_type=inst.get("InstanceType"),
        state=_state(inst),
        tags=tags,
        profile=profile,
    )


def gateway_device(gw: dict[str, Any], region: str, profile: Optional[str] = None) -> Device:
    """A Device from one ``describe_nat_gateways`` gateway."""
    tags = _tags(gw.get("Tags"))
    addrs = gw.get("NatGatewayAddresses", [])
    public = [a["PublicIp"] for a in addrs if a.get("PublicIp")]
    private = [a["PrivateIp"] for a in addrs if a.get("PrivateIp")]
    return Device(
        kind="gateway",
        id=gw["NatGatewayId"],
        region=region,
        name=tags.get("Name", ""),
        vpc_id=gw.get("VpcId", ""),
        subnet_id=gw.get("SubnetId", ""),
        private_ip=private[0] if private else None,
        public_ip=public[0] if public else None,
        state=gw.get("State", ""),
        addresses=public + private,
        tags=tags,
        profile=profile,
    )


def devices_to_targets(devices: Iterable[Device], address: str = "private") -> list[Target]:
    """One SSH :class:`Target` per live NAT instance (gateways and missing targets skipped).

    An instance without an address of that kind (stopped, or no public IP) is still returned,
    with ``host=""``: the caller reports it as a failed target rather than dropping it
    silently (:func:`targets_and_errors` does exactly that).

    Example:
        >>> devices_to_targets([Device("instance", "i-1", "us-east-1", name="nat-a",
        ...                            private_ip="10.0.1.5")])
        [Target(name='nat-a', host='10.0.1.5', kind='ssh', user=None, port=None,
                instance_id='i-1', region='us-east-1', path=None)]
    """
    if address not in ("private", "public"):
        raise UsageError(f"address must be 'private' or 'public', not {address!r}")
    return [
        Target(
            name=d.name or d.id,
            host=(d.private_ip if address == "private" else d.public_ip) or "",
            instance_id=d.id,
            region=d.region,
        )
        for d in devices
        if d.kind == "instance" and d.state not in DEAD_STATES
    ]


def targets_and_errors(
    devices: Iterable[Device], address: str = "private"
) -> tuple[list[Target], list[HostError]]:
    """:func:`devices_to_targets` split into reachable targets and ready-made errors.

    Example:
        >>> targets, errors = targets_and_errors(devices, "public")
        >>> errors[0].message
        'no public IP address (instance running): try --address private'
    """
    devices = list(devices)
    states = {d.id: d.state for d in devices}
    targets: list[Target] = []
    errors: list[HostError] = []
    other = "public" if address == "private" else "private"
    for t in devices_to_targets(devices, address):
        state = states.get(t.instance_id or "", "")  # (never a dead one: not a target)
        if state in ("stopped", "stopping"):
            errors.append(
                HostError(
                    target=t,
                    message=f"the instance is {state}: start it to read its table",
                    kind="connect",
                )
            )
            continue
        if t.host:
            targets.append(t)
            continue
        label = "IP address" if address == "public" else "address"
        errors.append(
            HostError(
                target=t,
                message=f"no {address} {label} (instance {state or 'unknown'}): "
                f"try --address {other}",
                kind="connect",
            )
        )
    return targets, errors


def _state(inst: Optional[dict[str, Any]]) -> str:
    return str(((inst or {}).get("State") or {}).get("Name", ""))


def _tags(tags: Optional[list[dict[str, str]]]) -> dict[str, str]:
    return {t["Key"]: t.get("Value", "") for t in tags or []}


def _vpc_filter(vpc_ids: Sequence[str]) -> list[dict[str, Any]]:
    return [{"Name": "vpc-id", "Values": list(vpc_ids)}] if vpc_ids else []


def _chunks(items: Sequence[str]) -> Iterator[list[str]]:
    for i in range(0, len(items), _CHUNK):
        yield list(items[i : i + _CHUNK])
