"""Findings from the AWS side: discovery's devices (source/dest check, route tables) and the
NAT gateways' CloudWatch rows (natfleet.cloudwatch.gateway_rows). No AWS call is made here.

Discovery must have run with the ``route`` and ``source-dest-check`` methods for the route
and source/dest findings (``methods``): without them nothing is known, and nothing is said.

Example:
    >>> from natfleet.models import Device
    >>> nat = Device("instance", "i-1", "us-east-1", name="nat-a", state="running",
    ...              found_by=["tag:Role=nat"])
    >>> [f.id for f in aws_findings([nat], [])["i-1"]]
    ['source-dest-check-on', 'instance-not-routed']
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from natfleet.check.findings import Finding, finding
from natfleet.check.thresholds import DEFAULTS, CheckConfig
from natfleet.config import METHODS
from natfleet.models import Device

STOPPED = ("stopped", "stopping")


def aws_findings(
    devices: Sequence[Device],
    gateway_rows: Sequence[Mapping[str, Any]],
    methods: Sequence[str] = METHODS,
    config: CheckConfig = DEFAULTS,
) -> dict[str, list[Finding]]:
    """Findings per device id (instances, missing route targets, NAT gateways)."""
    out: dict[str, list[Finding]] = {}
    for device in devices:
        if device.kind == "instance":
            found = list(_instance(device, methods))
        elif device.kind == "missing":
            found = list(_missing(device))
        else:
            continue
        if found:
            out.setdefault(device.id, []).extend(found)
    routed_vpcs = {
        d.vpc_id
        for d in devices
        if d.kind == "instance" and d.route_tables and d.state not in STOPPED
    }
    gateways = {d.id: d for d in devices if d.kind == "gateway"}
    for row in gateway_rows:
        gw_id = str(row.get("nat_gateway_id"))
        found = list(_gateway(row, gateways.get(gw_id), routed_vpcs, config))
        if found:
            out.setdefault(gw_id, []).extend(found)
    return out


def _instance(device: Device, methods: Sequence[str]) -> Iterator[Finding]:
    reasons = device.found_by
    live = device.state not in STOPPED
    if (
        "source-dest-check" in methods
        and live
        and not any(r.startswith("source-dest-check") for r in reasons)
    ):
        yield finding(
            "source-dest-check-on",
            f"{device.id}: SourceDestCheck is true on the instance and its ENIs",
            instance_id=device.id,
            state=device.state,
        )
    if not live and device.route_tables:
        yield finding(
            "route-to-stopped-instance",
            f"{', '.join(device.route_tables)} route(s) 0.0.0.0/0 to {device.id}, which is "
            f"{device.state}",
            instance_id=device.id,
            state=device.state,
            route_tables=";".join(device.route_tables),
        )
    elif device.blackhole_routes:
        yield finding(
            "route-blackhole",
            f"blackhole: {', '.join(device.blackhole_routes)}",
            instance_id=device.id,
            routes=";".join(device.blackhole_routes),
        )
    tagged = any(r.startswith("tag:") for r in reasons)
    if "route" in methods and tagged and not device.route_tables and live:
        yield finding(
            "instance-not-routed",
            f"{device.id} ({', '.join(reasons)}) is in no route table's default route",
            instance_id=device.id,
            found_by=";".join(reasons),
        )


def _missing(device: Device) -> Iterator[Finding]:
    yield finding(
        "route-to-missing-target",
        f"{', '.join(device.blackhole_routes)} -> {device.id} ({device.state})",
        target=device.id,
        state=device.state,
        routes=";".join(device.blackhole_routes),
        vpc_id=device.vpc_id,
    )


def _gateway(
    row: Mapping[str, Any], device: Any, routed_vpcs: set[str], config: CheckConfig
) -> Iterator[Finding]:
    from natfleet.compare import (  # boto3 (compare's import) only where AWS is read
        GATEWAY_CONNECTIONS_PER_ADDRESS,
        gateway_address_count,
        gateway_port_bound,
    )

    window = {"window_seconds": row.get("seconds")}
    sent = row.get("bytes_to_destination")
    vpc = row.get("vpc_id")
    if sent and vpc in routed_vpcs:
        yield finding(
            "natgw-carrying-traffic",
            f"{sent:,.0f} bytes out (BytesOutToDestination) in {vpc}, where route tables "
            "point at NAT instances",
            bytes_to_destination=sent,
            vpc_id=vpc,
            **window,
        )
    errors = row.get("error_port_allocation")
    if errors:
        worse = errors >= config.natgw_port_errors_critical
        yield finding(
            "natgw-port-allocation-errors",
            f"ErrorPortAllocation {errors:,.0f} in the window",
            "critical" if worse else "warning",
            error_port_allocation=errors,
            threshold=config.natgw_port_errors_critical,
            **window,
        )
    dropped, rate = row.get("packets_dropped"), row.get("drop_rate")
    if dropped:
        pct = None if rate is None else round(rate * 100, 4)
        worse = pct is not None and pct >= config.natgw_drop_rate_critical_pct
        yield finding(
            "natgw-packets-dropped",
            f"PacketsDropCount {dropped:,.0f} in the window"
            + (f" ({pct:g}% of packets in)" if pct is not None else ""),
            "critical" if worse else "warning",
            packets_dropped=dropped,
            drop_rate_pct=pct,
            **window,
        )
    peak = row.get("peak_active_connections")
    if peak is not None and device is not None:
        addresses = gateway_address_count(device)
        bound = gateway_port_bound(peak, addresses)
        if bound is not None and bound >= config.natgw_connections_warning_pct:
            yield finding(
                "natgw-connections-peak",
                f"peak {peak:,.0f} connections, {bound:.1f}% of "
                f"{GATEWAY_CONNECTIONS_PER_ADDRESS:,} x {addresses} address(es)",
                peak_active_connections=peak,
                addresses=addresses,
                pct=round(bound, 2),
                **window,
            )
