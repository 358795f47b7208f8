"""The trust boundary for check answers: a box's ``check`` object becomes :class:`CheckFacts`.

A check answer is a summary answer plus ``check`` (natfleet/agent_check.py); natfleet.answer's
reader calls :func:`check_check` for it, with the same validators as every other field: known
tools, targets and families, interface names, bounded integers, lists and objects of the
right shape. Anything else is an :class:`~natfleet.answer.AnswerError` naming the field.

Example:
    >>> from natfleet import agent
    >>> raw = agent.handle({"mode": "check"}, agent.DumpSources({
    ...     "/proc/net/nf_conntrack": "", "/proc/sys/net/ipv4/ip_forward": "0\\n"}))
    >>> check_check(raw["check"]).forwarding_v4
    0
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from typing import Any, Optional

from natfleet import agent_check
from natfleet.answer import (
    U32,
    U64,
    _bad,
    _dict,
    _int,
    _list,
    _matching,
    _opt_int,
)

TOOLS = tuple(name for name, _argv in agent_check.COMMANDS)
TOOL_STATES = ("ok", "absent", "failed")
FAMILIES = ("ipv4", "ipv6", "inet")
_IFACE_RE = re.compile(r"^[A-Za-z0-9_.:@+*-]{1,15}$")
_CHAIN_RE = re.compile(r"^[A-Za-z0-9_.:@+-]{0,32}$")
CHECK_KEYS = frozenset(
    (
        "forwarding",
        "rp_filter",
        "default_route",
        "interfaces",
        "tools",
        "nat_rules",
        "conntrack",
        "mem_total_kb",
        "idle",
    )
)


@dataclass(frozen=True)
class NatRule:
    """One NAT rule (iptables or nftables) as the agent parsed it."""

    tool: str  # iptables, ip6tables, nft
    family: str  # ipv4, ipv6, inet
    chain: str
    target: str  # MASQUERADE, SNAT, DNAT, REDIRECT, NETMAP
    out: Optional[str] = None  # the output interface (or wildcard) it applies to; None: any
    out_negated: bool = False  # ``! -o IFACE``: every interface but that one
    random_fully: bool = False
    to_ports: Optional[tuple[int, int]] = None

    @property
    def source_nat(self) -> bool:
        return self.target in agent_check.SOURCE_NAT

    def covers(self, iface: Optional[str]) -> bool:
        """True when this rule applies to traffic leaving through ``iface``.

        >>> NatRule("iptables", "ipv4", "POSTROUTING", "MASQUERADE", "eth+").covers("eth0")
        True
        """
        if self.out is None or iface is None:
            return self.out is None
        name = self.out.rstrip("+*")
        wild = name != self.out
        hit = iface.startswith(name) if wild else iface == self.out
        return hit != self.out_negated


@dataclass(frozen=True)
class IdleFlows:
    """TCP ESTABLISHED flows, and those idle longer than ``after`` seconds (None: unknown)."""

    after: int = agent_check.IDLE_AFTER
    established: Optional[int] = None
    idle: Optional[int] = None
    max_idle: Optional[int] = None


@dataclass(frozen=True)
class CheckFacts:
    """What a box said for ``natfleet check`` (None: it could not tell)."""

    forwarding_v4: Optional[int] = None
    forwarding_v6: Optional[int] = None
    rp_filter_all: Optional[int] = None
    rp_filter_default: Optional[int] = None
    rp_filter: dict[str, int] = field(default_factory=dict)  # per interface
    default_route_v4: Optional[str] = None  # the default route's interface
    default_route_v6: Optional[str] = None
    interfaces: tuple[str, ...] = ()
    tools: dict[str, str] = field(default_factory=dict)  # tool -> ok | absent | failed
    nat_rules: tuple[NatRule, ...] = ()
    buckets: Optional[int] = None  # nf_conntrack_buckets
    acct: Optional[int] = None  # nf_conntrack_acct
    tcp_timeout_established: Optional[int] = None
    mem_total_kb: Optional[int] = None
    idle: IdleFlows = IdleFlows()

    def rp_filter_of(self, iface: str) -> Optional[int]:
        """The rp_filter the kernel applies on ``iface``: the larger of ``all`` and its own."""
        own = self.rp_filter.get(iface)
        known = [v for v in (self.rp_filter_all, own) if v is not None]
        return max(known) if known else None

    def to_json(self) -> dict[str, Any]:
        return {
            "forwarding": {"ipv4": self.forwarding_v4, "ipv6": self.forwarding_v6},
            "rp_filter": {
                "all": self.rp_filter_all,
                "default": self.rp_filter_default,
                "ifaces": dict(self.rp_filter),
            },
            "default_route": {"ipv4": self.default_route_v4, "ipv6": self.default_route_v6},
            "interfaces": list(self.interfaces),
            "tools": dict(self.tools),
            "nat_rules": [
                {**asdict(r), "to_ports": list(r.to_ports) if r.to_ports else None}
                for r in self.nat_rules
            ],
            "conntrack": {
                "buckets": self.buckets,
                "acct": self.acct,
                "tcp_timeout_established": self.tcp_timeout_established,
            },
            "mem_total_kb": self.mem_total_kb,
            "idle": asdict(self.idle),
        }


def _iface(value: Any, path: str) -> str:
    return _matching(value, path, _IFACE_RE, "an interface name")


def _opt_iface(value: Any, path: str) -> Optional[str]:
    return None if value is None else _iface(value, path)


def _bool(value: Any, path: str) -> bool:
    if not isinstance(value, bool):
        raise _bad(path, "true or false", value)
    return value


def _one_of(value: Any, path: str, choices: tuple[str, ...]) -> str:
    if not isinstance(value, str) or value not in choices:
        raise _bad(path, f"one of {', '.join(choices)}", value)
    return value


def _object(data: dict[str, Any], key: str, keys: tuple[str, ...]) -> dict[str, Any]:
    """``data[key]``: an object with exactly ``keys``."""
    value = _dict(data.get(key), f"check.{key}", len(keys))
    if set(value) != set(keys):
        raise _bad(f"check.{key}", f"the keys {', '.join(keys)}", sorted(value))
    return value


def check_rule(value: Any, path: str) -> NatRule:
    """One ``check.nat_rules[]`` entry."""
    rule = _dict(value, path, 8)
    ports = rule.get("to_ports")
    to_ports = None
    if ports is not None:
        items = _list(ports, f"{path}.to_ports", 2)
        if len(items) != 2:
            raise _bad(f"{path}.to_ports", "[low, high]", ports)
        low, high = (_int(p, f"{path}.to_ports[]", 0, 65535) for p in items)
        if low > high:
            raise _bad(f"{path}.to_ports", "[low, high]", ports)
        to_ports = (low, high)
    return NatRule(
        tool=_one_of(rule.get("tool"), f"{path}.tool", TOOLS),
        family=_one_of(rule.get("family"), f"{path}.family", FAMILIES),
        chain=_matching(rule.get("chain"), f"{path}.chain", _CHAIN_RE, "a chain name"),
        target=_one_of(rule.get("target"), f"{path}.target", agent_check.NAT_TARGETS),
        out=_opt_iface(rule.get("out"), f"{path}.out"),
        out_negated=_bool(rule.get("out_negated"), f"{path}.out_negated"),
        random_fully=_bool(rule.get("random_fully"), f"{path}.random_fully"),
        to_ports=to_ports,
    )


def check_check(value: Any) -> CheckFacts:
    """The ``check`` object of a check answer as :class:`CheckFacts`; raises AnswerError."""
    data = _dict(value, "check", len(CHECK_KEYS))
    if set(data) != CHECK_KEYS:
        raise _bad("check", f"the keys {', '.join(sorted(CHECK_KEYS))}", sorted(data))
    forwarding = _object(data, "forwarding", ("ipv4", "ipv6"))
    rp = _object(data, "rp_filter", ("all", "default", "ifaces"))
    route = _object(data, "default_route", ("ipv4", "ipv6"))
    conntrack = _object(data, "conntrack", ("buckets", "acct", "tcp_timeout_established"))
    idle = _object(data, "idle", ("after", "established", "idle", "max_idle"))
    tools = {
        _one_of(k, "check.tools key", TOOLS): _one_of(v, f"check.tools.{k}", TOOL_STATES)
        for k, v in _dict(data.get("tools"), "check.tools", len(TOOLS)).items()
    }
    limit = agent_check.IFACES_MAX
    rules = _list(data.get("nat_rules"), "check.nat_rules", agent_check.RULES_MAX)
    return CheckFacts(
        forwarding_v4=_opt_int(forwarding["ipv4"], "check.forwarding.ipv4", 0, U32),
        forwarding_v6=_opt_int(forwarding["ipv6"], "check.forwarding.ipv6", 0, U32),
        rp_filter_all=_opt_int(rp["all"], "check.rp_filter.all", 0, U32),
        rp_filter_default=_opt_int(rp["default"], "check.rp_filter.default", 0, U32),
        rp_filter={
            _iface(k, "check.rp_filter.ifaces key"): _int(v, f"check.rp_filter.ifaces.{k}", 0, U32)
            for k, v in _dict(rp["ifaces"], "check.rp_filter.ifaces", limit).items()
        },
        default_route_v4=_opt_iface(route["ipv4"], "check.default_route.ipv4"),
        default_route_v6=_opt_iface(route["ipv6"], "check.default_route.ipv6"),
        interfaces=tuple(
            _iface(n, "check.interfaces[]")
            for n in _list(data["interfaces"], "check.interfaces", limit)
        ),
        tools=tools,
        nat_rules=tuple(check_rule(r, f"check.nat_rules[{i}]") for i, r in enumerate(rules)),
        buckets=_opt_int(conntrack["buckets"], "check.conntrack.buckets", 0, U32),
        acct=_opt_int(conntrack["acct"], "check.conntrack.acct", 0, U32),
        tcp_timeout_established=_opt_int(
            conntrack["tcp_timeout_established"], "check.conntrack.tcp_timeout_established", 0, U32
        ),
        mem_total_kb=_opt_int(data["mem_total_kb"], "check.mem_total_kb", 0, U64),
        idle=IdleFlows(
            after=_int(idle["after"], "check.idle.after", 0, U32),
            established=_opt_int(idle["established"], "check.idle.established", 0, U64),
            idle=_opt_int(idle["idle"], "check.idle.idle", 0, U64),
            max_idle=_opt_int(idle["max_idle"], "check.idle.max_idle", 0, U32),
        ),
    )
