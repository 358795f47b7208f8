"""A finding, the severities, and the catalogue of every finding id ``natfleet check`` reports.

Ids are stable: scripts and alerts key on them (docs/json.md lists them). A finding carries
the values it was judged on (``evidence``: plain numbers and strings) and what to do.

Example:
    >>> f = finding("forwarding-off", "net.ipv4.ip_forward is 0", ip_forward=0)
    >>> f.severity, f.advice.split(";")[0]
    ('critical', 'sysctl -w net.ipv4.ip_forward=1')
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

SEVERITIES = ("critical", "warning", "info")  # worst first
RANK = {name: i for i, name in enumerate(SEVERITIES)}


@dataclass(frozen=True)
class Kind:
    """A finding id's catalogue entry: its usual severity, a title and the advice."""

    severity: str  # the usual one; some findings say when they are worse or milder
    title: str
    advice: str
    where: str = "box"  # box (the agent's facts), aws (EC2 API), gateway (CloudWatch)


CATALOGUE: dict[str, Kind] = {
    # forwarding and NAT rules (the box)
    "forwarding-off": Kind(
        "critical",
        "IPv4 forwarding is off: the box forwards nothing",
        "sysctl -w net.ipv4.ip_forward=1; persist it in /etc/sysctl.d/ (it is lost on reboot "
        "otherwise)",
    ),
    "ipv6-forwarding-off": Kind(
        "critical",
        "IPv6 forwarding is off although NAT66 rules exist",
        "sysctl -w net.ipv6.conf.all.forwarding=1 and persist it in /etc/sysctl.d/",
    ),
    "masquerade-missing": Kind(
        "critical",
        "no MASQUERADE or SNAT rule: traffic leaves untranslated and its replies never return",
        "add one for the default route's interface, e.g. iptables -t nat -A POSTROUTING -o "
        "IFACE -j MASQUERADE --random-fully, and make the service that installs it fail when "
        "it does not (fck-nat #132)",
    ),
    "masquerade-wrong-interface": Kind(
        "critical",
        "no MASQUERADE or SNAT rule covers the interface of the default route",
        "put the rule on the default route's interface (ip route show default), e.g. -o ens5 "
        "rather than -o eth0 on Nitro instances",
    ),
    "masquerade-unknown-interface": Kind(
        "warning",
        "a NAT rule names an interface that does not exist",
        "fix or remove the rule: it matches nothing (interface names differ by instance "
        "type: eth0, ens5, enX0)",
    ),
    "nat-rules-unknown": Kind(
        "info",
        "the NAT rules could not be read (no iptables-save or nft, or they failed)",
        "install iptables or nftables on the box, or check the rules by hand",
    ),
    "rp-filter-strict": Kind(
        "warning",
        "strict reverse-path filtering (rp_filter=1) drops asymmetric return traffic",
        "set rp_filter to 2 (loose) or 0 on the box's interfaces (net.ipv4.conf.all.rp_filter "
        "and net.ipv4.conf.IFACE.rp_filter; the kernel uses the larger)",
    ),
    # conntrack capacity (the box)
    "conntrack-fill-warning": Kind(
        "warning",
        "the conntrack table is filling up",
        "raise net.netfilter.nf_conntrack_max (and nf_conntrack_buckets), shorten idle "
        "timeouts, or spread the load over more NAT boxes",
    ),
    "conntrack-fill-critical": Kind(
        "critical",
        "the conntrack table is nearly full: new flows will be dropped",
        "raise net.netfilter.nf_conntrack_max now (watch dmesg for 'table full, dropping "
        "packet'), then find who fills it: natfleet summary --details",
    ),
    "conntrack-drops": Kind(
        "warning",
        "conntrack dropped or failed to insert entries (critical when it grew between reads)",
        "a full table (early_drop, drop) or NAT port clashes (insert_failed): see the fill and "
        "port findings; rerun with --interval 60 to see whether it is still happening",
    ),
    "conntrack-max-memory": Kind(
        "warning",
        "nf_conntrack_max is large for the box's memory",
        "lower nf_conntrack_max or use an instance with more memory: a full table could take "
        "this share of RAM",
    ),
    "conntrack-buckets": Kind(
        "warning",
        "nf_conntrack_max is many times nf_conntrack_buckets: long hash chains",
        "raise nf_conntrack_buckets (the module's hashsize) towards nf_conntrack_max",
    ),
    "conntrack-acct-off": Kind(
        "info",
        "conntrack accounting is off: no byte or packet counts per flow for triage",
        "sysctl -w net.netfilter.nf_conntrack_acct=1 (counts new flows from then on)",
    ),
    # ports (the box)
    "port-pressure": Kind(
        "warning",
        "many translated ports toward one destination from one NAT address "
        "(critical above the critical threshold)",
        "add NAT addresses (SNAT --to-source with several, or more boxes), spread "
        "destinations, or widen the port range; use --random-fully",
    ),
    "port-range-small": Kind(
        "warning",
        "ip_local_port_range is small",
        "widen it: sysctl -w net.ipv4.ip_local_port_range='1024 65535'",
    ),
    "snat-not-random-fully": Kind(
        "warning",
        "SNAT without --random-fully where port collisions are likely",
        "add --random-fully to the MASQUERADE/SNAT rule (nftables: fully-random): port "
        "clashes otherwise drop single SYNs silently (fck-nat #144)",
    ),
    # timeouts against a NAT gateway's behaviour (the box)
    "tcp-established-timeout": Kind(
        "warning",
        "idle ESTABLISHED flows are kept far longer than a NAT gateway keeps them",
        "lower net.netfilter.nf_conntrack_tcp_timeout_established (kernel default 432,000 s "
        "= 5 days; a NAT gateway resets idle flows after 350 s)",
    ),
    "idle-established": Kind(
        "info",
        "ESTABLISHED flows idle longer than 350 s, which a NAT gateway would have reset",
        "before moving to a NAT gateway, make those clients send TCP keepalives under 350 s",
    ),
    # ENA allowances (the box, ethtool -S)
    "ena-allowance-exceeded": Kind(
        "warning",
        "EC2 dropped packets at an ENA allowance (critical when it grew between reads)",
        "bw/pps: a bigger instance type or fewer flows per box; conntrack: the security "
        "group's connection tracking is full (fck-nat #39): allow 0.0.0.0/0 both ways to "
        "untrack, or a bigger instance",
    ),
    "ena-conntrack-allowance-low": Kind(
        "warning",
        "few EC2 security-group connection-tracking entries are left",
        "untrack the NAT traffic (security group rules allowing 0.0.0.0/0 both ways on all "
        "ports) or use a bigger instance type",
    ),
    "facts-unknown": Kind(
        "info",
        "some check facts could not be read on the box",
        "see the box's warnings (stderr): a garbled or missing /proc file, or the raw "
        "executor (no python3)",
    ),
    # AWS (EC2 API, from discovery)
    "source-dest-check-on": Kind(
        "critical",
        "the source/destination check is on: EC2 drops the traffic the box forwards",
        "aws ec2 modify-instance-attribute --instance-id ID --no-source-dest-check (or on "
        "the ENI the route uses)",
        "aws",
    ),
    "route-to-stopped-instance": Kind(
        "critical",
        "a route table sends the default route to a stopped NAT instance",
        "start the instance, or point the route at a running NAT box",
        "aws",
    ),
    "route-to-missing-target": Kind(
        "critical",
        "a route table sends the default route to an instance or ENI that is gone",
        "replace the route (aws ec2 replace-route) with a running NAT instance's ENI",
        "aws",
    ),
    "route-blackhole": Kind(
        "critical",
        "a default route to this NAT instance is a blackhole",
        "replace the route; a blackhole route drops everything its subnets send out",
        "aws",
    ),
    "instance-not-routed": Kind(
        "warning",
        "a NAT instance found by tag that no route table uses",
        "route a private subnet's 0.0.0.0/0 to it, or untag it; a standby is fine if intended",
        "aws",
    ),
    # NAT gateways (CloudWatch)
    "natgw-carrying-traffic": Kind(
        "warning",
        "a NAT gateway carries traffic in a VPC whose routes point at NAT instances",
        "failover or a leftover route: it costs per GB; check which route tables use it",
        "gateway",
    ),
    "natgw-port-allocation-errors": Kind(
        "warning",
        "the NAT gateway could not allocate source ports (critical above the threshold)",
        "too many connections to one destination: add secondary addresses to the gateway "
        "(up to 8) or spread destinations",
        "gateway",
    ),
    "natgw-packets-dropped": Kind(
        "warning",
        "the NAT gateway dropped packets (critical above the drop-rate threshold)",
        "look at the drop rate in natfleet gateways; persistent drops need AWS support",
        "gateway",
    ),
    "natgw-connections-peak": Kind(
        "warning",
        "peak connections approach 55,000 per address (the per-destination limit)",
        "if they go to one destination, add secondary addresses to the gateway",
        "gateway",
    ),
}


@dataclass(frozen=True)
class Finding:
    """One finding: a catalogue id, its severity, what was found, the values, the advice."""

    id: str
    severity: str
    message: str
    evidence: dict[str, Any] = field(default_factory=dict)
    advice: str = ""

    @property
    def rank(self) -> int:
        return RANK[self.severity]

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "severity": self.severity,
            "message": self.message,
            "evidence": dict(self.evidence),
            "advice": self.advice,
        }


def finding(kind_id: str, message: str, severity: Optional[str] = None, **evidence: Any) -> Finding:
    """A :class:`Finding` of catalogue id ``kind_id`` (severity: the catalogue's unless given).

    >>> finding("port-pressure", "93.75% of the ports", severity="critical").severity
    'critical'
    """
    return finding_of(kind_id, message, evidence, severity)


def finding_of(
    kind_id: str, message: str, evidence: dict[str, Any], severity: Optional[str] = None
) -> Finding:
    """:func:`finding` with the evidence as one dict."""
    kind = CATALOGUE[kind_id]
    level = severity or kind.severity
    if level not in RANK:
        raise ValueError(f"severity {level!r} is not one of {SEVERITIES}")
    return Finding(kind_id, level, message, evidence, kind.advice)


def reaches(found: Finding, level: str) -> bool:
    """True when ``found`` is at least as bad as ``level`` (``never``: nothing reaches it).

    >>> reaches(finding("conntrack-acct-off", "off"), "warning")
    False
    """
    return level != "never" and found.rank <= RANK[level]
