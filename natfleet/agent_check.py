"""natfleet agent, check mode: the facts ``natfleet check`` judges, read on the box.

Stdlib only, Python 3.6+, shipped in the agent bundle (``remote.AGENT_MODULES``) and reached
from ``agent.run()`` for a ``{"mode": "check"}`` request. A check answer is a summary answer
(one table walk) plus ``"check"``: forwarding, rp_filter, the default route's interface, the
interfaces there are, the NAT rules (``iptables-save -t nat``, ``ip6tables-save -t nat``,
``nft list ruleset``: fixed argv, read-only, with a timeout), conntrack sizing and accounting,
the TCP established timeout, MemTotal, and the ESTABLISHED flows idle longer than 350 s,
counted in the summary's own walk (:class:`CheckSummary`). Every read goes through the
agent's sources object; a fact that cannot be read is null with a warning, and a tool that
is not installed is ``"absent"``, a fact like any other.

Example:
    >>> src = agent.DumpSources({"/proc/sys/net/ipv4/ip_forward": "1\\n"})
    >>> facts = read_facts(src, [])
    >>> facts["forwarding"]["ipv4"], facts["tools"]["nft"]
    (1, 'absent')
"""

from typing import Any, Dict, List, Optional, Tuple

from natfleet import agent

Json = Dict[str, Any]

IDLE_AFTER = 350  # seconds: a NAT gateway resets a connection idle this long
FORWARD_V4 = "/proc/sys/net/ipv4/ip_forward"
FORWARD_V6 = "/proc/sys/net/ipv6/conf/all/forwarding"
CONF_V4 = "/proc/sys/net/ipv4/conf"
NETFILTER = "/proc/sys/net/netfilter/"
BUCKETS_PATH = NETFILTER + "nf_conntrack_buckets"
ACCT_PATH = NETFILTER + "nf_conntrack_acct"
ESTABLISHED_PATH = NETFILTER + "nf_conntrack_tcp_timeout_established"
ROUTE_V4 = "/proc/net/route"
ROUTE_V6 = "/proc/net/ipv6_route"
MEMINFO = "/proc/meminfo"
COMMANDS = (
    ("iptables", ("iptables-save", "-t", "nat")),
    ("ip6tables", ("ip6tables-save", "-t", "nat")),
    ("nft", ("nft", "list", "ruleset")),
)
TOOL_DIRS = ("/usr/sbin", "/sbin", "/usr/bin", "/bin", "/usr/local/sbin")
COMMAND_TIMEOUT = 5.0
RULES_MAX = 500  # NAT rules kept (a NAT box has a handful)
IFACES_MAX = 1024
NAT_TARGETS = ("MASQUERADE", "SNAT", "DNAT", "REDIRECT", "NETMAP")
SOURCE_NAT = ("MASQUERADE", "SNAT")
_IFACE_OK = agent._IFACE_CHARS + "+*"  # iptables' ``eth+`` and nft's ``eth*`` wildcards


def iface_name(name: str) -> Optional[str]:
    """An interface name or wildcard as the kernel and iptables write them, else None.

    >>> iface_name("ens5"), iface_name("eth+"), iface_name("a b")
    ('ens5', 'eth+', None)
    """
    if 0 < len(name) <= 15 and not name.strip(_IFACE_OK):
        return name
    return None


def _number(text: Optional[str], most: str = agent.U32_MAX) -> Optional[int]:
    return agent.parse_int(text, most)


def parse_default_route(text: Optional[str]) -> Optional[str]:
    """The interface of the IPv4 default route (the up one with the lowest metric).

    >>> parse_default_route("Iface\\tDestination\\tGateway\\tFlags\\tRefCnt\\tUse\\tMetric\\t"
    ...     "Mask\\nwan0\\t00000000\\t016433C6\\t0003\\t0\\t0\\t0\\t00000000\\n")
    'wan0'
    """
    best = None  # type: Optional[Tuple[int, str]]
    for number, line in enumerate((text or "").splitlines(), 1):
        fields = line.split()
        if number == 1 or not fields:
            continue
        if len(fields) < 8:
            raise ValueError(f"line {number} has {len(fields)} fields, not 8 or more")
        iface, dest, flags, metric, mask = fields[0], fields[1], fields[3], fields[6], fields[7]
        if dest != "00000000" or mask != "00000000":
            continue
        if flags.strip(agent._HEX) or not metric.isdecimal() or len(metric) > 10:
            raise ValueError(f"line {number}: flags {flags[:20]!r}, metric {metric[:20]!r}")
        if not int(flags, 16) & 1 or iface_name(iface) is None or iface == "*":
            continue
        if best is None or int(metric) < best[0]:
            best = (int(metric), iface)
    return best[1] if best else None


def parse_default_route6(text: Optional[str]) -> Optional[str]:
    """The interface of the IPv6 default route ``::/0`` that is up and not a reject route.

    >>> parse_default_route6("00000000000000000000000000000000 00 " + "0" * 32 + " 00 "
    ...     "fe800000000000000000000000000001 00000400 00000001 00000000 00000003 wan0\\n")
    'wan0'
    """
    best = None  # type: Optional[Tuple[int, str]]
    for number, line in enumerate((text or "").splitlines(), 1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != 10:
            raise ValueError(f"line {number} has {len(fields)} fields, not 10")
        if fields[0] != "0" * 32 or fields[1] != "00":
            continue
        metric, flags, iface = fields[5], fields[8], fields[9]
        if metric.strip(agent._HEX) or flags.strip(agent._HEX) or len(flags) > 8:
            raise ValueError(f"line {number}: metric {metric[:20]!r}, flags {flags[:20]!r}")
        bits = int(flags, 16)
        if not bits & 1 or bits & 0x200 or iface == "lo" or iface_name(iface) is None:
            continue  # down, or RTF_REJECT (unreachable)
        if best is None or int(metric, 16) < best[0]:
            best = (int(metric, 16), iface)
    return best[1] if best else None


def parse_meminfo(text: Optional[str]) -> Optional[int]:
    """MemTotal in kB.

    >>> parse_meminfo("MemTotal:        1003420 kB\\nMemFree: 1 kB\\n")
    1003420
    """
    for line in (text or "").splitlines():
        if line.startswith("MemTotal:"):
            fields = line.split()
            if len(fields) != 3 or fields[2] != "kB":
                raise ValueError(f"{line[:60]!r} is not 'MemTotal: N kB'")
            return _number(fields[1], agent.U64_MAX)
    return None


def _rule(tool: str, family: str, chain: str, target: str) -> Json:
    return {
        "tool": tool,
        "family": family,
        "chain": chain,
        "target": target,
        "out": None,  # -o / oifname: the interface the rule is for (None: any)
        "out_negated": False,  # ``! -o wan0``: every interface but that one
        "random_fully": False,
        "to_ports": None,  # [low, high] from --to-ports / --to-source ...:low-high
    }


def _ports(spec: str) -> Optional[List[int]]:
    """``61000-61031`` or ``198.51.100.1:61000-61031`` -> [61000, 61031]; None without one."""
    tail = spec.rsplit(":", 1)[1] if ":" in spec and "]" not in spec.rsplit(":", 1)[1] else ""
    if not tail and "-" in spec and "." not in spec and ":" not in spec:
        tail = spec
    if not tail:
        return None
    low, _, high = tail.partition("-")
    high = high or low
    if not (agent._number_ok(low, agent.PORT_MAX) and agent._number_ok(high, agent.PORT_MAX)):
        raise ValueError(f"{spec[:40]!r} is not a port range")
    return [int(low), int(high)]


def parse_iptables_save(text: Optional[str], tool: str = "iptables") -> List[Json]:
    """The NAT rules (MASQUERADE, SNAT, DNAT, REDIRECT, NETMAP) of ``iptables-save -t nat``.

    >>> [rule] = parse_iptables_save("*nat\\n-A POSTROUTING -s 198.18.1.0/24 -o wan0 "
    ...     "-j MASQUERADE --random-fully\\nCOMMIT\\n")
    >>> rule["target"], rule["out"], rule["random_fully"]
    ('MASQUERADE', 'wan0', True)
    """
    family = "ipv6" if tool == "ip6tables" else "ipv4"
    rules: List[Json] = []
    table = None
    for line in (text or "").splitlines():
        line = line.strip()
        if line.startswith("*"):
            table = line[1:]
            continue
        if table != "nat" or not line.startswith("-A "):
            continue
        words = line.split()
        if "-j" not in words or words.index("-j") + 1 >= len(words):
            continue  # a rule that jumps nowhere (a counter): not NAT
        target = words[words.index("-j") + 1]
        if target not in NAT_TARGETS:
            continue
        rule = _rule(tool, family, words[1][:32], target)
        for i, word in enumerate(words[:-1]):
            following = words[i + 1]
            if word in ("-o", "--out-interface"):
                rule["out"] = iface_name(following)
                if rule["out"] is None:
                    raise ValueError(f"{following[:40]!r} is not an interface name")
                rule["out_negated"] = i > 0 and words[i - 1] == "!"
            elif word in ("--to-ports", "--to-source", "--to-destination", "--to"):
                rule["to_ports"] = _ports(following)
        rule["random_fully"] = "--random-fully" in words
        rules.append(rule)
    return rules[:RULES_MAX]


def _nft_family(header: str) -> Optional[str]:
    words = header.split()
    if len(words) >= 3 and words[0] == "table":
        return {"ip": "ipv4", "ip6": "ipv6", "inet": "inet"}.get(words[1])
    return None


def parse_nft_ruleset(text: Optional[str]) -> List[Json]:
    """The masquerade, snat, dnat and redirect statements of ``nft list ruleset``; tables
    that iptables-nft manages are left out (``iptables-save`` reports them already).

    >>> [rule] = parse_nft_ruleset('table ip nat {\\n chain post {\\n  type nat hook '
    ...     'postrouting priority srcnat; policy accept;\\n  oifname "ens5" masquerade '
    ...     'fully-random\\n }\\n}\\n')
    >>> rule["target"], rule["out"], rule["random_fully"], rule["family"]
    ('MASQUERADE', 'ens5', True, 'ipv4')
    """
    rules: List[Json] = []
    family = None  # type: Optional[str]
    chain = ""
    compat = False
    for raw in (text or "").splitlines():
        line = raw.strip()
        if line.startswith("table "):
            family, chain, compat = _nft_family(line), "", False
            continue
        if line.startswith("# Warning: table") and "iptables-nft" in line:
            compat = True
            continue
        if line.startswith("chain "):
            chain = line.split()[1][:32] if len(line.split()) > 1 else ""
            continue
        if family is None or compat or not line or line.startswith(("type ", "#", "}")):
            continue
        words = line.replace("{", " { ").replace("}", " } ").replace(",", " ").split()
        target = None
        for word in ("masquerade", "snat", "dnat", "redirect"):
            if word in words:
                target = "MASQUERADE" if word == "masquerade" else word.upper()
                break
        if target is None:
            continue
        rule = _rule("nft", family, chain, target)
        for key in ("oifname", "oif"):
            if key in words:
                i = words.index(key) + 1
                if i < len(words) and words[i] == "!=":
                    rule["out_negated"] = True
                    i += 1
                name = words[i].strip('"') if i < len(words) else ""
                if name == "{":  # a set of interfaces: the first stands for them
                    name = words[i + 1].strip('"') if i + 1 < len(words) else ""
                rule["out"] = iface_name(name)
                if rule["out"] is None:
                    raise ValueError(f"{name[:40]!r} is not an interface name")
        rule["random_fully"] = "fully-random" in words
        if "to" in words:
            after = words[words.index("to") + 1 :]
            if after:
                rule["to_ports"] = _ports(after[0] if after[0] != ":" else after[0] + after[1])
        rules.append(rule)
    return rules[:RULES_MAX]


PARSERS = {
    "iptables": lambda text: parse_iptables_save(text, "iptables"),
    "ip6tables": lambda text: parse_iptables_save(text, "ip6tables"),
    "nft": parse_nft_ruleset,
}


def _tool_present(sources: agent.Sources, name: str) -> bool:
    return any(sources.exists(folder + "/" + name) for folder in TOOL_DIRS)


def read_rules(sources: agent.Sources, warnings: List[str]) -> Tuple[Dict[str, str], List[Json]]:
    """({tool: "ok" | "absent" | "failed"}, NAT rules) from the three read-only commands."""
    tools: Dict[str, str] = {}
    rules: List[Json] = []
    for tool, argv in COMMANDS:
        if isinstance(sources, agent.LocalSources):
            text = sources.command(argv, timeout=COMMAND_TIMEOUT)
        else:
            text = sources.command(argv)
        if text is None:
            tools[tool] = "failed" if _tool_present(sources, argv[0]) else "absent"
            continue
        what = " ".join(argv)
        found = agent._fact(warnings, what, None, PARSERS[tool], text)
        tools[tool] = "ok" if found is not None else "failed"
        rules.extend(found or [])
    return tools, rules[:RULES_MAX]


def read_rp_filter(sources: agent.Sources, warnings: List[str], ifaces: List[str]) -> Json:
    """rp_filter of ``all``, ``default`` and every interface (0 off, 1 strict, 2 loose)."""

    def value(name: str) -> Optional[int]:
        path = f"{CONF_V4}/{name}/rp_filter"
        return agent._fact(warnings, path, None, agent._parsed, _number, sources.read, path)

    per = {}
    for name in ifaces:
        found = value(name)
        if found is not None:
            per[name] = found
    return {"all": value("all"), "default": value("default"), "ifaces": per}


def read_facts(sources: agent.Sources, warnings: List[str]) -> Json:
    """Every check fact but the table walk's (see :func:`facts_json`); never raises."""

    def fact(path: str, parse: Any = _number) -> Any:
        return agent._fact(warnings, path, None, agent._parsed, parse, sources.read, path)

    ifaces = [n for n in sources.listdir(agent.SYS_NET) if iface_name(n)][:IFACES_MAX]
    tools, rules = read_rules(sources, warnings)
    return {
        "forwarding": {"ipv4": fact(FORWARD_V4), "ipv6": fact(FORWARD_V6)},
        "rp_filter": read_rp_filter(sources, warnings, ifaces),
        "default_route": {
            "ipv4": fact(ROUTE_V4, parse_default_route),
            "ipv6": fact(ROUTE_V6, parse_default_route6),
        },
        "interfaces": ifaces,
        "tools": tools,
        "nat_rules": rules,
        "conntrack": {
            "buckets": fact(BUCKETS_PATH),
            "acct": fact(ACCT_PATH),
            "tcp_timeout_established": fact(ESTABLISHED_PATH),
        },
        "mem_total_kb": fact(MEMINFO, parse_meminfo),
    }


def prepare(request: Any, sources: agent.Sources, warnings: List[str]) -> Json:
    """Read the check facts before the table walk and tell the walk which remaining
    timeout marks an ESTABLISHED flow idle for more than :data:`IDLE_AFTER` seconds."""
    facts = read_facts(sources, warnings)
    established = facts["conntrack"]["tcp_timeout_established"]
    request.idle_cutoff = established - IDLE_AFTER if established is not None else None
    return facts


class CheckSummary(agent.Summary):
    """A Summary that also counts TCP ESTABLISHED flows and those idle longer than
    IDLE_AFTER seconds (remaining timeout below ``cutoff``), in the same walk."""

    def __init__(self, top: int = 10, cutoff: Optional[int] = None) -> None:
        agent.Summary.__init__(self, top)
        self.cutoff = cutoff
        self.established = 0
        self.idle = 0
        self.least: Optional[int] = None  # the smallest remaining timeout of an idle flow

    def add(self, fields: Any, nat: str, line: str) -> None:
        agent.Summary.add(self, fields, nat, line)
        if fields[2] == "ESTABLISHED" and fields[0] == 6:
            self.established += 1
            left = fields[1]
            if self.cutoff is not None and left is not None and left < self.cutoff:
                self.idle += 1
                if self.least is None or left < self.least:
                    self.least = left

    def state(self) -> Json:
        found = agent.Summary.state(self)
        found["check"] = (self.established, self.idle, self.least)
        return found

    def merge(self, state: Json) -> None:
        agent.Summary.merge(self, state)
        established, idle, least = state["check"]
        self.established += established
        self.idle += idle
        if least is not None and (self.least is None or least < self.least):
            self.least = least


def facts_json(facts: Json, walked: Any) -> Json:
    """The ``check`` object of the answer: the facts and what the walk counted."""
    out = dict(facts)
    established = facts["conntrack"]["tcp_timeout_established"]
    idle: Json = {"after": IDLE_AFTER, "established": None, "idle": None, "max_idle": None}
    if isinstance(walked, CheckSummary):
        idle["established"] = walked.established
        if walked.cutoff is not None and established is not None:
            idle["idle"] = walked.idle
            if walked.least is not None:
                idle["max_idle"] = max(0, established - walked.least)
    out["idle"] = idle
    return out
