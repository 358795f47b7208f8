"""The trust boundary: a box's answer becomes typed, checked records here, or an error.

A box is untrusted. What it prints is read as it arrives (:class:`AnswerReader`, fed by a
transport), under a byte cap counted on the decoded stream and a cap per line, then checked
field by field: known protocols, states, NAT kinds and flags; canonical addresses; integers
and finite numbers in range; strings bounded; lists and dicts of the right shape. Anything that
does not fit raises :class:`AnswerError` (kind ``answer``), which the fleet turns into that
box's error row. Past this module nothing needs ``.get(...) or {}`` on a box's data, and
nothing here prints: the output layer escapes every string.

The wire format (docs/json.md, agent version 2): a header line (one JSON object), then, in
list mode, as many row lines as the header's ``rows`` says; or a compact answer (one zlib
stream, rows in column blocks), inflated and checked by natfleet/answer_wire.py.

Example:
    >>> reader = AnswerReader("nat-a", {"mode": "summary"}, cap=1 << 20)
    >>> reader.feed(b'{"agent":2,"ok":true,"hostname":"nat-a","source":"/proc/net/nf_'
    ...             b'conntrack","count":0,"max":262144,"stats":null,"port_range":[32768,'
    ...             b'60999],"addresses":[],"ena":{},"lines":0,"matched":0,"malformed":'
    ...             b'{"count":0,"examples":[]},"warnings":[],"seconds":0.01,"summary":'
    ...             b'{"flows":0,"by_state":{},"by_proto":{},"by_nat":{"snat":0,"dnat":0,'
    ...             b'"snat+dnat":0,"local":0,"routed":0},"tcp_snat_established":0,'
    ...             b'"top_sources":[],"top_destinations":[],"top_error":0,'
    ...             b'"port_range_size":28232,"port_pressure":[],"fill_pct":0.0}}\\n')
    >>> answer = reader.finish()
    >>> answer.facts.port_range, answer.summary.by_nat["snat"]
    ((32768, 60999), 0)
"""

from __future__ import annotations

import json
import math
import re
import zlib  # noqa: F401 (the examples use it)
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Optional

from natfleet import agent
from natfleet.agent import Flow
from natfleet.errors import TargetError
from natfleet.limits import MESSAGE_CAP, capped

AGENT_VERSION = agent.AGENT_VERSION
AGENT_ERROR_KINDS = frozenset(("permission", "no_table", "bad_request", "agent"))
PROTOCOLS = frozenset(agent.PROTO_NAMES.values())
FLAGS = frozenset(token[1:-1] for token in agent.FLAG_TOKENS)
U32 = (1 << 32) - 1
U64 = (1 << 64) - 1
TEXT_CAP = 1000  # characters kept of a free-text field (warnings, malformed examples)
NAME_CAP = 253  # a DNS name
LIST_CAP = 100_000  # entries in any list or dict of a header
_KEY_RE = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
_IFACE_RE = re.compile(r"^[A-Za-z0-9_.:@-]{1,15}$")
_STATE_KEY_RE = re.compile(r"^[a-z0-9]{1,10}:[A-Z_0-9]{1,20}$")
_NAT_KIND_RE = re.compile("^(" + "|".join(re.escape(k) for k in agent.NAT_KINDS) + ")$")
_PROTO_KEY_RE = re.compile(r"^[a-z0-9]{1,10}$")
_ENA_KEY_RE = re.compile("^(" + "|".join(agent.ENA_KEYS) + ")$")


class AnswerError(TargetError):
    """A box's answer is not what the agent sends: too big, not JSON, or a field that does
    not check. The message names the field and what was wrong (never the whole value)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, kind="answer")


# --------------------------------------------------------------------------- records


@dataclass(frozen=True)
class MalformedLines:
    """Table lines the agent could not parse: how many, and a few (line number, text)."""

    count: int = 0
    examples: tuple[tuple[int, str], ...] = ()


@dataclass(frozen=True)
class HostFacts:
    """What a box says about itself (None: the box could not tell)."""

    hostname: Optional[str] = None
    source: Optional[str] = None  # the table read: /proc/net/nf_conntrack, conntrack -L ...
    count: Optional[int] = None  # nf_conntrack_count
    max: Optional[int] = None  # nf_conntrack_max
    stats: Optional[dict[str, int]] = None  # /proc/net/stat/nf_conntrack, summed
    port_range: Optional[tuple[int, int]] = None  # ip_local_port_range
    addresses: tuple[str, ...] = ()
    ena: dict[str, dict[str, int]] = field(default_factory=dict)  # iface -> ENA counters


@dataclass(frozen=True)
class OwnSession:
    """natfleet's own SSH session as the box's conntrack entry sees it (original tuple)."""

    src: str
    sport: int
    dst: str
    dport: int
    proto: str = "tcp"


@dataclass(frozen=True)
class PortPressure:
    """Translated source ports in use from one NAT address toward one destination."""

    nat_ip: str
    dst: str
    dport: int
    proto: str
    ports: int
    pct: Optional[float]  # of ip_local_port_range; None when the range is unknown


@dataclass(frozen=True)
class Summary:
    """One box's summary (docs/json.md, "The summary")."""

    flows: int
    fill_pct: Optional[float]
    by_state: dict[str, int]  # "tcp:ESTABLISHED" -> flows
    by_proto: dict[str, int]
    by_nat: dict[str, int]  # every NAT kind, 0 when none
    tcp_snat_established: int
    top_sources: tuple[tuple[str, int], ...]
    top_destinations: tuple[tuple[str, int], ...]
    top_error: int
    port_range_size: Optional[int]
    port_pressure: tuple[PortPressure, ...]

    def to_json(self) -> dict[str, Any]:
        return {
            "flows": self.flows,
            "fill_pct": self.fill_pct,
            "by_state": dict(self.by_state),
            "by_proto": dict(self.by_proto),
            "by_nat": dict(self.by_nat),
            "tcp_snat_established": self.tcp_snat_established,
            "top_sources": [list(pair) for pair in self.top_sources],
            "top_destinations": [list(pair) for pair in self.top_destinations],
            "top_error": self.top_error,
            "port_range_size": self.port_range_size,
            "port_pressure": [vars(p).copy() for p in self.port_pressure],
        }


@dataclass
class Answer:
    """One box's checked answer. ``flows`` in list mode, ``summary`` in summary mode;
    ``names`` only what this box resolved for addresses in its own rows."""

    facts: HostFacts
    lines: int = 0
    matched: int = 0
    malformed: MalformedLines = MalformedLines()
    warnings: list[str] = field(default_factory=list)
    seconds: float = 0.0
    cpu: Optional[float] = None  # the agent's CPU seconds, workers included (None: not said)
    executor: str = "python"
    summary: Optional[Summary] = None
    flows: Sequence[Flow] = field(default_factory=list)  # a list, or answer_wire.WireRows
    names: dict[str, str] = field(default_factory=dict)
    own_session: Optional[OwnSession] = None  # natfleet's own SSH session on the box
    own_flows: int = 0  # entries left out of counts and rows: that session
    ordered: bool = False  # flows already in the request's order (this process's agent made them)
    check: Optional[Any] = None  # check mode: natfleet.answer_check.CheckFacts

    def to_json(self) -> dict[str, Any]:
        """The box's answer as natfleet prints it in JSON (docs/json.md), without rows."""
        facts = self.facts
        data: dict[str, Any] = {
            "hostname": facts.hostname,
            "source": facts.source,
            "count": facts.count,
            "max": facts.max,
            "stats": facts.stats,
            "port_range": list(facts.port_range) if facts.port_range else None,
            "addresses": list(facts.addresses),
            "ena": facts.ena,
            "lines": self.lines,
            "matched": self.matched,
            "malformed": {
                "count": self.malformed.count,
                "examples": [{"line": n, "text": t} for n, t in self.malformed.examples],
            },
            "warnings": list(self.warnings),
            "seconds": self.seconds,
            "cpu": self.cpu,
            "executor": self.executor,
            "own_session": vars(self.own_session).copy() if self.own_session else None,
            "own_flows": self.own_flows,
        }
        if self.summary is not None:
            data["summary"] = self.summary.to_json()
        if self.check is not None:
            data["check"] = self.check.to_json()
        return data


# --------------------------------------------------------------------------- checks


def _what(value: Any) -> str:
    """A short description of a bad value (never the whole of it: it may be huge)."""
    if isinstance(value, str):
        return f"a string of {len(value)} characters" if len(value) > 40 else repr(value)
    if isinstance(value, (list, dict)):
        return f"a {'list' if isinstance(value, list) else 'object'} of {len(value)}"
    return "null" if value is None else repr(value)[:40]


def _bad(path: str, expected: str, value: Any) -> AnswerError:
    return AnswerError(f"{path}: expected {expected}, got {_what(value)}")


def _int(value: Any, path: str, low: int = 0, high: int = U64) -> int:
    if type(value) is not int or not low <= value <= high:
        raise _bad(path, f"an integer {low}..{high}", value)
    return value


def _opt_int(value: Any, path: str, low: int = 0, high: int = U64) -> Optional[int]:
    return None if value is None else _int(value, path, low, high)


def _num(value: Any, path: str, low: float = 0.0, high: float = 1e12) -> float:
    if type(value) not in (int, float) or not math.isfinite(value) or not low <= value <= high:
        raise _bad(path, f"a finite number {low:g}..{high:g}", value)
    return float(value)


def _opt_num(value: Any, path: str, low: float = 0.0, high: float = 1e12) -> Optional[float]:
    return None if value is None else _num(value, path, low, high)


def _str(value: Any, path: str, cap: int = NAME_CAP) -> str:
    if not isinstance(value, str) or len(value) > cap:
        raise _bad(path, f"a string of at most {cap} characters", value)
    return value


def _opt_str(value: Any, path: str, cap: int = NAME_CAP) -> Optional[str]:
    return None if value is None else _str(value, path, cap)


def _text(value: Any, path: str, cap: int = TEXT_CAP) -> str:
    """Free text (a warning, a malformed line's example, an error message): printable, as
    the agent writes it (agent.printable_answer), and kept up to ``cap`` characters."""
    if not isinstance(value, str):
        raise _bad(path, "a string", value)
    if not value.isprintable():
        raise _bad(path, "printable text (the agent escapes what is not)", value)
    return capped(value, cap)


def _name(value: Any, path: str, cap: int = NAME_CAP) -> Optional[str]:
    """A host name or table source: printable, at most ``cap`` characters, or null."""
    text = _opt_str(value, path, cap)
    if text is not None and not text.isprintable():
        raise _bad(path, "printable text (the agent escapes what is not)", text)
    return text


def _list(value: Any, path: str, cap: int = LIST_CAP) -> list[Any]:
    if not isinstance(value, list) or len(value) > cap:
        raise _bad(path, f"a list of at most {cap:,}", value)
    return value


def _dict(value: Any, path: str, cap: int = LIST_CAP) -> dict[str, Any]:
    if not isinstance(value, dict) or len(value) > cap:
        raise _bad(path, f"an object of at most {cap:,} keys", value)
    return value


def _matching(value: Any, path: str, pattern: re.Pattern[str], what: str) -> str:
    if not isinstance(value, str) or not pattern.fullmatch(value):
        raise _bad(path, what, value)
    return value


def _addr(value: Any, path: str) -> str:
    """A canonical IP address (the agent's cached canonical form: equal addresses of many
    rows share one string)."""
    if not isinstance(value, str) or len(value) > 45:
        raise _bad(path, "an IP address", value)
    try:
        return agent.canonical_address(value)
    except ValueError:
        raise _bad(path, "an IP address", value) from None


def _proto(value: Any, path: str) -> str:
    """A protocol name the agent uses: tcp, udp, ... or a number the kernel does not name."""
    if isinstance(value, str) and (value in PROTOCOLS or (value.isdigit() and len(value) <= 3)):
        if value.isdigit() and int(value) > 255:
            raise _bad(path, "a protocol", value)
        return value
    raise _bad(path, "a protocol", value)


def _counts(value: Any, path: str, key_re: re.Pattern[str], what: str) -> dict[str, int]:
    return {
        _matching(k, f"{path} key", key_re, what): _int(v, f"{path}.{k}")
        for k, v in _dict(value, path).items()
    }


# --------------------------------------------------------------------------- header


def check_facts(data: dict[str, Any]) -> HostFacts:
    """The host facts of a header (``hostname``, ``count``, ``stats``, ``ena``, ...)."""
    stats = data.get("stats")
    port_range = data.get("port_range")
    if port_range is not None:
        low, high = (_int(v, "port_range", 0, 65535) for v in _list(port_range, "port_range", 2))
        if len(port_range) != 2 or low > high:
            raise _bad("port_range", "[low, high]", port_range)
        port_range = (low, high)
    ena: dict[str, dict[str, int]] = {}
    for iface, counters in _dict(data.get("ena", {}), "ena", 256).items():
        name = _matching(iface, "ena interface", _IFACE_RE, "an interface name")
        ena[name] = {
            _matching(
                k,
                f"ena.{name} key",
                re.compile("^(" + "|".join(agent.ENA_KEYS) + ")$"),
                "an ENA counter name",
            ): _int(v, f"ena.{name}.{k}")
            for k, v in _dict(counters, f"ena.{name}", 64).items()
        }
    return HostFacts(
        hostname=_name(data.get("hostname"), "hostname"),
        source=_name(data.get("source"), "source", 4096),
        count=_opt_int(data.get("count"), "count", 0, U32),
        max=_opt_int(data.get("max"), "max", 0, U32),
        stats=None if stats is None else _counts(stats, "stats", _KEY_RE, "a counter name"),
        port_range=port_range,
        addresses=tuple(
            _addr(a, "addresses[]") for a in _list(data.get("addresses", []), "addresses")
        ),
        ena=ena,
    )


def check_port_pressure(
    value: Any, path: str, cap: int, where: Optional[str] = None
) -> PortPressure:
    """One port-pressure record (a summary's, a watch tick's): at most ``cap`` keys; errors
    name its fields ``path.nat_ip`` ..., and the record itself ``where`` (default ``path``).

    >>> check_port_pressure({"nat_ip": "198.51.100.1", "dst": "203.0.113.5", "dport": 443,
    ...     "proto": "tcp", "ports": 3, "pct": 0.01}, "tick.pressure", 8).ports
    3
    """
    p = _dict(value, where or path, cap)
    return PortPressure(
        nat_ip=_addr(p.get("nat_ip"), f"{path}.nat_ip"),
        dst=_addr(p.get("dst"), f"{path}.dst"),
        dport=_int(p.get("dport"), f"{path}.dport", 0, 65535),
        proto=_proto(p.get("proto"), f"{path}.proto"),
        ports=_int(p.get("ports"), f"{path}.ports", 0, 1 << 24),
        pct=_opt_num(p.get("pct"), f"{path}.pct", 0.0, 1e9),
    )


def check_summary(data: Any) -> Summary:
    """The ``summary`` object of a summary answer."""
    s = _dict(data, "summary", 64)
    by_nat = _counts(s.get("by_nat"), "summary.by_nat", _NAT_KIND_RE, "a NAT kind")

    def top(key: str) -> tuple[tuple[str, int], ...]:
        pairs = []
        for pair in _list(s.get(key), f"summary.{key}", 1000):
            items = _list(pair, f"summary.{key}[]", 2)
            if len(items) != 2:
                raise _bad(f"summary.{key}[]", "[address, flows]", pair)
            pairs.append((_addr(items[0], f"summary.{key}[]"), _int(items[1], f"summary.{key}[]")))
        return tuple(pairs)

    pressure = []
    for item in _list(s.get("port_pressure"), "summary.port_pressure", 1000):
        pressure.append(check_port_pressure(item, "port_pressure", 16, "summary.port_pressure[]"))
    return Summary(
        flows=_int(s.get("flows"), "summary.flows"),
        fill_pct=_opt_num(s.get("fill_pct"), "summary.fill_pct", 0.0, 1e9),
        by_state=_counts(s.get("by_state"), "summary.by_state", _STATE_KEY_RE, "proto:STATE"),
        by_proto=_counts(s.get("by_proto"), "summary.by_proto", _PROTO_KEY_RE, "a protocol"),
        by_nat={kind: by_nat.get(kind, 0) for kind in agent.NAT_KINDS},
        tcp_snat_established=_int(s.get("tcp_snat_established"), "summary.tcp_snat_established"),
        top_sources=top("top_sources"),
        top_destinations=top("top_destinations"),
        top_error=_int(s.get("top_error", 0), "summary.top_error"),
        port_range_size=_opt_int(s.get("port_range_size"), "summary.port_range_size", 0, 65536),
        port_pressure=tuple(pressure),
    )


def check_own_session(data: Any) -> Optional[OwnSession]:
    """The agent's ``own_session`` (null when it found none)."""
    if data is None:
        return None
    d = _dict(data, "own_session", 8)
    if d.get("proto") != "tcp":
        raise _bad("own_session.proto", "tcp", d.get("proto"))
    return OwnSession(
        src=_addr(d.get("src"), "own_session.src"),
        sport=_int(d.get("sport"), "own_session.sport", 0, 65535),
        dst=_addr(d.get("dst"), "own_session.dst"),
        dport=_int(d.get("dport"), "own_session.dport", 0, 65535),
    )


def check_malformed(data: Any) -> MalformedLines:
    m = _dict(data, "malformed", 8)
    examples = []
    for item in _list(m.get("examples", []), "malformed.examples", 100):
        ex = _dict(item, "malformed.examples[]", 4)
        examples.append(
            (
                _int(ex.get("line"), "malformed.examples[].line"),
                _text(ex.get("text"), "malformed.examples[].text", 200),
            )
        )
    return MalformedLines(count=_int(m.get("count"), "malformed.count"), examples=tuple(examples))


def agent_failure(data: dict[str, Any]) -> TargetError:
    """The error of an ``ok: false`` answer: a known kind, a message capped and checked."""
    error = _dict(data.get("error"), "error", 8)
    kind = error.get("kind")
    message = _text(error.get("message", ""), "error.message", MESSAGE_CAP)
    if kind not in AGENT_ERROR_KINDS:
        return AnswerError(f"ok: false with an unknown error kind {_what(kind)}: {message}")
    return TargetError(message or "the agent answered ok: false without a message", kind=kind)


# --------------------------------------------------------------------------- rows

_ROW_KEYS = frozenset(
    (
        "proto", "l3", "state", "nat", "orig", "reply", "flags", "timeout", "gre",
        "packets_orig", "bytes_orig", "packets_reply", "bytes_reply", "mark", "zone",
        "zone_orig", "zone_reply", "use", "delta_time", "secctx",
    )
)  # fmt: skip
_U32_KEYS = ("mark", "use", "delta_time")
_ZONE_KEYS = ("zone", "zone_orig", "zone_reply")
_U64_KEYS = ("packets_orig", "bytes_orig", "packets_reply", "bytes_reply")
_HEX_KEY = re.compile(r"^0x[0-9a-fA-F]{1,8}$")


def _tuple_of(value: Any, path: str, proto: str, version: int) -> dict[str, Any]:
    t = _dict(value, path, 8)
    out: dict[str, Any] = {}
    for end in ("src", "dst"):
        addr = _addr(t.get(end), f"{path}.{end}")
        if (6 if ":" in addr else 4) != version:
            raise _bad(f"{path}.{end}", f"an IPv{version} address", addr)
        out[end] = addr
    keys = set(t) - {"src", "dst"}
    if keys == {"sport", "dport"}:
        out["sport"] = _int(t["sport"], f"{path}.sport", 0, 65535)
        out["dport"] = _int(t["dport"], f"{path}.dport", 0, 65535)
    elif keys == {"type", "code", "id"} and proto in ("icmp", "icmpv6"):
        out["type"] = _int(t["type"], f"{path}.type", 0, 255)
        out["code"] = _int(t["code"], f"{path}.code", 0, 255)
        out["id"] = _int(t["id"], f"{path}.id", 0, 65535)
    elif keys == {"srckey", "dstkey"} and proto == "gre":
        out["srckey"] = _matching(t["srckey"], f"{path}.srckey", _HEX_KEY, "a GRE key")
        out["dstkey"] = _matching(t["dstkey"], f"{path}.dstkey", _HEX_KEY, "a GRE key")
    elif keys:
        raise _bad(path, "ports, ICMP type/code/id or GRE keys", sorted(keys))
    if proto in ("tcp", "udp", "udplite", "sctp") and "sport" not in out:
        raise _bad(path, f"ports for {proto}", value)
    return out


def check_row(value: Any, path: str = "row") -> Flow:
    """One listing row (docs/json.md, "A row") as a Flow; raises AnswerError.

    >>> check_row({"proto": "tcp", "l3": "ipv4", "state": "ESTABLISHED", "nat": "snat",
    ...     "orig": {"src": "192.0.2.10", "dst": "203.0.113.5", "sport": 40000, "dport": 443},
    ...     "reply": {"src": "203.0.113.5", "dst": "198.51.100.1", "sport": 443,
    ...               "dport": 61000}, "flags": ["ASSURED"]}).shown()[1]
    ('198.51.100.1', '61000')
    """
    row = _dict(value, path, 32)
    unknown = set(row) - _ROW_KEYS
    if unknown:
        raise _bad(path, "the documented row keys", sorted(unknown)[0])
    proto = _proto(row.get("proto"), f"{path}.proto")
    l3 = row.get("l3")
    if l3 not in ("ipv4", "ipv6"):
        raise _bad(f"{path}.l3", "ipv4 or ipv6", l3)
    version = 4 if l3 == "ipv4" else 6
    state = row.get("state")
    if state is not None and (not isinstance(state, str) or state not in agent.STATES):
        raise _bad(f"{path}.state", "a TCP, SCTP or DCCP state or null", state)
    nat = row.get("nat")
    if nat not in agent.NAT_KINDS:
        raise _bad(f"{path}.nat", "a NAT kind", nat)
    flags = _list(row.get("flags", []), f"{path}.flags", 4)
    for flag in flags:
        if flag not in FLAGS:
            raise _bad(f"{path}.flags[]", "a conntrack flag", flag)
    clean: dict[str, Any] = {
        "proto": proto,
        "l3": l3,
        "state": state,
        "nat": nat,
        "orig": _tuple_of(row.get("orig"), f"{path}.orig", proto, version),
        "reply": _tuple_of(row.get("reply"), f"{path}.reply", proto, version),
        "flags": list(flags),
    }
    if "timeout" in row:
        clean["timeout"] = _int(row["timeout"], f"{path}.timeout", 0, U32)
    if "gre" in row:
        gre = _dict(row["gre"], f"{path}.gre", 2)
        clean["gre"] = {
            k: _int(gre.get(k), f"{path}.gre.{k}", 0, U32) for k in ("timeout", "stream_timeout")
        }
    for key in _U64_KEYS:
        if key in row:
            clean[key] = _int(row[key], f"{path}.{key}")
    for key in _U32_KEYS:
        if key in row:
            clean[key] = _int(row[key], f"{path}.{key}", 0, U32)
    for key in _ZONE_KEYS:
        if key in row:
            clean[key] = _int(row[key], f"{path}.{key}", 0, 65535)
    if "secctx" in row:
        clean["secctx"] = _str(row["secctx"], f"{path}.secctx", 256)
    return CheckedFlow.checked(clean)


_SHARED: dict[Any, Any] = {}
_SHARED_MAX = 1 << 17


def _shared(value: Any) -> Any:
    """One object for equal small values (ports, states, ...) across rows: bounded memory."""
    found = _SHARED.get(value)
    if found is None:
        if len(_SHARED) >= _SHARED_MAX:
            _SHARED.clear()
        found = _SHARED[value] = value
    return found


class CheckedFlow(Flow):
    """A Flow from a checked row, kept small (a listing of a million rows must not become a
    million dicts): equal small values are shared, and the optional keys are one shared
    tuple; :meth:`to_json` builds the row again.

    >>> row = {"proto": "icmp", "l3": "ipv4", "state": None, "nat": "snat", "flags": [],
    ...        "orig": {"src": "192.0.2.1", "dst": "203.0.113.9", "type": 8, "code": 0, "id": 7},
    ...        "reply": {"src": "203.0.113.9", "dst": "198.51.100.1", "type": 0, "code": 0,
    ...                  "id": 7}, "mark": 0, "use": 2}
    >>> CheckedFlow.checked(row).to_json() == row
    True
    """

    __slots__ = ("_flag_tuple", "_extra")
    _flag_tuple: tuple[str, ...]
    _extra: tuple[tuple[str, Any], ...]

    @classmethod
    def checked(cls, clean: dict[str, Any]) -> CheckedFlow:
        flow = cls.from_json(clean)
        assert isinstance(flow, CheckedFlow)  # from_json makes the class it is called on
        flow.row = None
        flow._flag_tuple = _shared(tuple(clean["flags"]))
        for name in ("proto", "state", "nat", "l3", "osp", "odp", "rsp", "rdp", "timeout"):
            setattr(flow, name, _shared(getattr(flow, name)))
        extra = [(k, v) for k, v in clean.items() if k not in _FLOW_KEYS]
        orig, reply = clean["orig"], clean["reply"]
        if "type" in orig:
            extra.append(("icmp", (orig["type"], orig["code"], reply["type"], reply["code"])))
        flow._extra = _shared(tuple(extra))
        return flow

    def flags(self) -> list[str]:
        return list(self._flag_tuple)

    def to_json(self) -> dict[str, Any]:
        orig: dict[str, Any] = {"src": self.osrc, "dst": self.odst}
        reply: dict[str, Any] = {"src": self.rsrc, "dst": self.rdst}
        extra = dict(self._extra)
        icmp = extra.pop("icmp", None)
        if icmp is not None:
            orig.update(type=icmp[0], code=icmp[1], id=int(self.osp or 0))
            reply.update(type=icmp[2], code=icmp[3], id=int(self.rdp or 0))
        elif self.osp is not None and self.proto == "gre":
            orig.update(srckey=self.osp, dstkey=self.odp)
            reply.update(srckey=self.rsp, dstkey=self.rdp)
        elif self.osp is not None:
            orig.update(sport=int(self.osp), dport=int(self.odp or 0))
            reply.update(sport=int(self.rsp or 0), dport=int(self.rdp or 0))
        row: dict[str, Any] = {
            "proto": self.proto,
            "l3": self.l3,
            "state": self.state,
            "nat": self.nat,
            "orig": orig,
            "reply": reply,
            "flags": list(self._flag_tuple),
        }
        if self.timeout is not None:
            row["timeout"] = self.timeout
        if self.gre is not None:
            row["gre"] = dict(self.gre)
        row.update(extra)
        return row


_FLOW_KEYS = frozenset(
    ("proto", "l3", "state", "nat", "orig", "reply", "flags", "timeout", "gre")
)  # fmt: skip


def check_names(
    data: Any, flows: Sequence[Flow], wanted: Optional[set[str]] = None
) -> dict[str, str]:
    """A box's reverse lookups: host names (never an address) for addresses of its own
    rows (``flows``, or the addresses ``wanted``), as the agent sends them; anything else is
    an AnswerError (one box cannot name another box's addresses)."""
    names = _dict(data, "names")
    if wanted is None:
        wanted = set()
        for flow in flows:
            wanted.update((flow.osrc, flow.odst, flow.rsrc, flow.rdst))
    for addr, name in names.items():
        if addr not in wanted:
            raise _bad("names", "names for addresses of the box's own rows", addr)
        if not isinstance(name, str) or not agent.is_host_name(name):
            raise _bad(f"names.{addr}", "a host name", name)
    return dict(names)


# --------------------------------------------------------------------------- decoding


def _reject_constant(token: str) -> Any:
    raise AnswerError(f"not strict JSON: {token} is not a number")


def decode_line(line: bytes, what: str) -> Any:
    """One JSON line of an answer; NaN/Infinity, bad UTF-8 and deep nesting are errors."""
    try:
        return json.loads(line.decode("utf-8"), parse_constant=_reject_constant)
    except UnicodeDecodeError:
        raise AnswerError(f"{what} is not UTF-8 text") from None
    except RecursionError:
        raise AnswerError(f"{what} is nested too deeply") from None
    except ValueError as exc:
        if isinstance(exc, AnswerError):
            raise
        start = line[:60].decode("utf-8", "replace")
        raise AnswerError(f"{what} is not JSON ({exc.args[0][:80]}): starts {start!r}") from None


def is_zlib(data: bytes) -> bool:
    """Whether ``data`` starts with a zlib header (deflate, 32 KiB window, RFC 1950): a
    compressed answer; a plain one starts with ``{``.

    >>> is_zlib(zlib.compress(b"{}")), is_zlib(b'{"agent":2}'), is_zlib(b"xx")
    (True, False, False)
    """
    return len(data) >= 2 and data[0] == 0x78 and (data[0] << 8 | data[1]) % 31 == 0


class AnswerReader:
    """Reads one box's answer as it arrives and checks it into an :class:`Answer`.

    ``cap`` bounds the bytes accepted (after any decompression), ``line_cap`` one line.
    ``feed`` raises AnswerError as soon as the answer breaks a rule, so a transport can stop
    reading at once. ``request`` is the laptop's own request: the names a box sends are kept
    only when the laptop asked for them.
    """

    def __init__(
        self,
        label: str,
        request: dict[str, Any],
        cap: int,
        line_cap: int = 1 << 20,
    ) -> None:
        self.label = label
        self.mode = request.get("mode", "list")
        self.resolve = bool(request.get("resolve")) and self.mode == "list"
        self.limit = request.get("limit")
        self.cap = cap
        self.line_cap = min(line_cap, cap)
        self.received = 0
        self._rest = b""
        self._header: Optional[dict[str, Any]] = None
        self._failure: Optional[TargetError] = None
        self._rows_expected = 0
        self._flows: list[Flow] = []
        self._done: Optional[Answer] = None
        self.sort = request.get("sort")
        self._inflater: Optional[Any] = None  # answer_wire.Inflater: a compressed answer
        self._chunks: Optional[list[bytes]] = None  # its bytes as they came, while needed
        self._body: Optional[Any] = None  # answer_wire.CompactBody: compact row blocks
        self._header_bytes = 0
        self._ordered = False  # feed_local: the agent here sorted the flows
        self._start = b""  # the first byte, until a second tells whether it is compressed

    # ---- feeding

    def feed(self, chunk: bytes) -> None:
        """Take the next bytes of the answer; raises AnswerError on the first broken rule.
        An answer that starts with a zlib header (0x78) is compressed (natfleet/agent_wire.py):
        it is inflated here, the caps counting the inflated bytes."""
        if not self.received and self._inflater is None:
            chunk = self._start + chunk
            if len(chunk) < 2:  # too little to tell a zlib stream from a plain answer
                self._start = chunk
                return
            self._start = b""
            if is_zlib(chunk):
                from natfleet.answer_wire import Inflater

                self._inflater = Inflater(self.cap)
                self._chunks = []
        if self._inflater is not None:
            self._feed_compressed(chunk)
            return
        self.received += len(chunk)
        if self.received > self.cap:
            raise AnswerError(
                f"the answer is larger than the cap of {self.cap:,} bytes for a "
                f"{self.mode} answer (raise it with --max-answer-mb or [limits] in the config)"
            )
        lines = (self._rest + chunk).split(b"\n")
        self._rest = lines.pop()
        if len(self._rest) > self.line_cap:
            raise AnswerError(f"a line of the answer is longer than {self.line_cap:,} bytes")
        for line in lines:
            self._line(line)

    def _feed_compressed(self, chunk: bytes) -> None:
        assert self._inflater is not None
        self.received += len(chunk)
        if self.received > self.cap + (self.cap >> 6) + 4096:  # zlib's worst case, and more
            raise AnswerError(f"the compressed answer is larger than {self.cap:,} bytes")
        if self._chunks is not None:
            self._chunks.append(chunk)
        for piece in self._inflater.feed(chunk):
            if self._body is not None:
                continue  # row blocks: checked once the stream is whole (finish)
            lines = (self._rest + piece).split(b"\n")
            self._rest = lines.pop()
            for line in lines:
                self._line(line)
                if self._body is not None:  # the header of a compact answer: blocks follow
                    self._rest = b""
                    break
            if len(self._rest) > self.line_cap:
                raise AnswerError(f"a line of the answer is longer than {self.line_cap:,} bytes")

    def _line(self, line: bytes) -> None:
        if len(line) > self.line_cap:
            raise AnswerError(f"a line of the answer is longer than {self.line_cap:,} bytes")
        if self._header is None and self._failure is None:
            if not line.strip():
                raise AnswerError("the answer starts with an empty line")
            data = decode_line(line, "the answer's first line")
            if not isinstance(data, dict):
                raise _bad("the answer", "a JSON object", data)
            self._header_bytes = len(line) + 1
            self._take_header(data)
            return
        if len(self._flows) >= self._rows_expected or self._failure is not None:
            if line.strip():
                raise AnswerError("more lines than the answer's header announced")
            return
        self._flows.append(check_row(decode_line(line, "a row"), f"rows[{len(self._flows)}]"))

    def _take_header(self, data: dict[str, Any]) -> None:
        version = data.get("agent")
        if version != AGENT_VERSION:
            raise _bad("agent", f"version {AGENT_VERSION}", version)
        ok = data.get("ok")
        if ok is False:
            self._failure = agent_failure(data)
            return
        if ok is not True:
            raise _bad("ok", "true or false", ok)
        self._header = data
        if self.mode == "list":
            high = self.limit if isinstance(self.limit, int) else U32
            self._rows_expected = _int(data.get("rows"), "rows", 0, high)
        elif "rows" in data:
            raise _bad("rows", f"none in a {self.mode} answer", data["rows"])
        encoding = data.get("encoding")
        if encoding is not None:  # rows in column blocks: natfleet/answer_wire.py
            if encoding != "compact" or self.mode != "list" or self._chunks is None:
                raise _bad("encoding", "compact, in a compressed list answer", encoding)
            from natfleet.answer_wire import CompactBody

            names = data.get("names") is not None
            self._body = CompactBody(
                self._rows_expected, self.sort, self.line_cap, names, self._header_bytes
            )
            self._body.chunks = self._chunks
        else:
            self._chunks = None  # nothing to decode again: the checked records are kept

    def feed_raw_answer(self, answer: dict[str, Any]) -> None:
        """Take an answer the agent code produced here from a box's raw dump (or a local or
        file target): the same checks, from a dict with ``rows`` a list."""
        if self.received or self._header is not None or self._failure is not None:
            raise AnswerError("an answer was already given")
        rows = answer.get("rows")
        header = {k: v for k, v in answer.items() if k != "rows"}
        if self.mode == "list" and answer.get("ok") is True:
            header["rows"] = len(_list(rows, "rows", U32))
        self._take_header(header)
        if self._failure is None:
            for i, row in enumerate(rows or ()):
                self._flows.append(check_row(row, f"rows[{i}]"))

    def feed_local(self, answer: dict[str, Any], flows: list[Flow]) -> None:
        """Take a listing this process's own agent code made (``agent.run`` on this machine's
        table or a dump file): the header is checked as a box's; the flows, made here by the
        agent's own parser (as ``natfleet local`` shows them), are taken as they are."""
        if self.received or self._header is not None or self._failure is not None:
            raise AnswerError("an answer was already given")
        header = agent.printable_answer(dict(answer))
        header["rows"] = len(flows)
        self._take_header(header)
        self._flows = flows
        self._ordered = True

    # ---- finishing

    def finish(self) -> Answer:
        """The checked answer; raises AnswerError, or the agent's own error (ok: false)."""
        if self._done is not None:
            return self._done
        if self._start:  # a single byte: a plain answer of one byte
            start, self._start = self._start, b""
            self.received += len(start)
            self._rest += start
        if self._inflater is not None:
            self._inflater.finish()  # cut short, or corrupt (zlib's checksum), said first
        if self._body is not None:
            self._body.check()  # every block, from the kept bytes
        if self._rest.strip():
            rest, self._rest = self._rest, b""
            self._line(rest)
        if self._failure is not None:
            raise self._failure
        if self._header is None:
            raise AnswerError("the box answered nothing")
        if self._body is None and len(self._flows) < self._rows_expected:
            raise AnswerError(
                f"the answer was cut short: {len(self._flows):,} of "
                f"{self._rows_expected:,} rows arrived"
            )
        self._done = self._build(self._header)
        return self._done

    def _build(self, data: dict[str, Any]) -> Answer:
        warnings = [
            _text(w, "warnings[]") for w in _list(data.get("warnings", []), "warnings", 100)
        ]
        names: dict[str, str] = {}
        flows: Sequence[Flow] = self._flows
        wanted = None
        if self._body is not None:
            from natfleet.answer_wire import WireRows

            flows = WireRows(self._body)
            wanted = self._body.referenced
        if data.get("names") is not None:
            checked = check_names(data["names"], flows, wanted)
            names = checked if self.resolve else {}  # only what natfleet asked for
        summary = None
        if self.mode in ("summary", "check"):
            summary = check_summary(data.get("summary"))
        check = None
        if self.mode == "check":  # its own checks: natfleet/answer_check.py
            from natfleet.answer_check import check_check

            check = check_check(data.get("check"))
        executor = data.get("executor", "python")
        if executor not in ("python", "raw"):
            raise _bad("executor", "python or raw", executor)
        return Answer(
            facts=check_facts(data),
            lines=_int(data.get("lines", 0), "lines"),
            matched=_int(data.get("matched", 0), "matched"),
            malformed=check_malformed(data.get("malformed", {"count": 0})),
            warnings=warnings,
            seconds=_num(data.get("seconds", 0.0), "seconds", 0.0, 1e7),
            cpu=_opt_num(data.get("cpu"), "cpu", 0.0, 1e7),
            executor=executor,
            summary=summary,
            flows=flows,
            ordered=self._ordered or self._body is not None,  # compact: checked at receipt
            names=names,
            own_session=check_own_session(data.get("own_session")),
            own_flows=_int(data.get("own_flows", 0), "own_flows", 0, U32),
            check=check,
        )


def check_answer(
    label: str, request: dict[str, Any], answer: dict[str, Any], cap: int = 1 << 62
) -> Answer:
    """An in-process agent answer (``agent.handle``) checked like a remote one.

    >>> check_answer("dump", {"mode": "info"}, agent.handle({"mode": "info"},
    ...     agent.DumpSources())).facts.count is None
    True
    """
    reader = AnswerReader(label, request, cap)
    reader.feed_raw_answer(answer)
    return reader.finish()
