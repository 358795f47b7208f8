"""The trust boundary for watch streams: every line a box sends while watched is checked here.

A watching box sends a header (its host facts and the watch's settings), then one JSON event
a line (natfleet/agent_watch.py, docs/json.md "Watch"). :class:`WatchReader` is fed the
stream as it arrives and hands each checked record to a callback, under caps per line, per
interval (between two ticks) and per session; anything that does not check raises
:class:`natfleet.answer.AnswerError` and ends that box's watch. The checks reuse answer.py's
validators, so an address is canonical, a state is a known one, a number is in range.

A stream asked for with ``"encoding": "zlib"`` is inflated here as it arrives, at most
:data:`natfleet.answer_wire.STEP` bytes at a time (``zlib.decompressobj`` with
``max_length``), and every cap counts the inflated bytes: a small stream that inflates to
gigabytes stops at the interval cap. A stream that does not inflate (corrupt) or stops inside
a line or after its end line without closing its zlib stream (cut short) is an AnswerError.
A failure before the header may come plain (its first byte ``{``): it is read as such, and
a header that comes plain is an error.

Example:
    >>> seen = []
    >>> reader = WatchReader("nat-a", seen.append)
    >>> reader.feed(b'{"agent":2,"ok":true,"watch":1,"hostname":"nat-a","mode":"interval",'
    ...     b'"interval":2.0,"duration":60,"intervals":null,"flows":0,"listed":0}\\n'
    ...     b'{"event":"end","t":60.0,"reason":"duration","lost":0}\\n')
    >>> [type(r).__name__ for r in seen], reader.ended
    (['WatchStart', 'WatchEnd'], True)
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Callable, Optional, Union

from natfleet import agent, agent_watch, answer_wire
from natfleet.answer import (
    AGENT_VERSION,
    U32,
    AnswerError,
    HostFacts,
    OwnSession,
    PortPressure,
    _addr,
    _bad,
    _dict,
    _int,
    _list,
    _matching,
    _num,
    _opt_int,
    _opt_num,
    _proto,
    _text,
    agent_failure,
    check_facts,
    check_own_session,
    check_port_pressure,
    decode_line,
)
from natfleet.errors import TargetError

KiB, MiB = 1 << 10, 1 << 20
STATUSES = agent.STATES | frozenset(("UNREPLIED", "ASSURED", "REPLIED", "OFFLOAD", "HW_OFFLOAD"))
FLOW_EVENTS = ("present", "new", "update", "destroy")
END_REASONS = ("duration", "count")


@dataclass(frozen=True)
class WatchLimits:
    """Caps on one watched box: a header line, an event line, the bytes between two ticks
    (an interval's changes; the box itself sends at most 20,000 change events an interval),
    and the whole session."""

    header_bytes: int = 1 * MiB
    line_bytes: int = 64 * KiB
    interval_bytes: int = 16 * MiB
    session_bytes: int = 2048 * MiB


@dataclass(frozen=True)
class WatchFlow:
    """A flow as a watch event names it: original and reply tuples, NAT kind, status."""

    proto: str
    l3: str
    nat: str
    status: str
    osrc: str
    odst: str
    osport: Optional[int]
    odport: Optional[int]
    rsrc: str
    rdst: str
    rsport: Optional[int]
    rdport: Optional[int]
    zone: int = 0

    @property
    def key(self) -> tuple[Any, ...]:
        """The original tuple and zone: what identifies a flow on its box."""
        return (self.proto, self.osrc, self.odst, self.osport, self.odport, self.zone)

    def shown(self) -> tuple[tuple[str, Optional[int]], ...]:
        """(source, NAT host, destination) as (address, port), like Flow.shown()."""
        source = (self.osrc, self.osport)
        if self.nat == "snat":
            return source, (self.rdst, self.rdport), (self.odst, self.odport)
        if self.nat == "dnat":
            return source, (self.odst, self.odport), (self.rsrc, self.rsport)
        if self.nat == "snat+dnat":
            return source, (self.rdst, self.rdport), (self.rsrc, self.rsport)
        return source, ("", None), (self.odst, self.odport)

    def to_json(self) -> dict[str, Any]:
        (_s, (nat_ip, nat_port), _d) = self.shown()
        orig: dict[str, Any] = {"src": self.osrc, "dst": self.odst}
        reply: dict[str, Any] = {"src": self.rsrc, "dst": self.rdst}
        if self.osport is not None:
            orig.update(sport=self.osport, dport=self.odport)
            reply.update(sport=self.rsport, dport=self.rdport)
        elif self.odport is not None:  # ICMP: the id
            orig["id"], reply["id"] = self.odport, self.rdport
            nat_port = None
        return {
            "proto": self.proto,
            "l3": self.l3,
            "nat": self.nat,
            "status": self.status,
            "orig": orig,
            "reply": reply,
            "zone": self.zone,
            "nat_ip": nat_ip or None,
            "nat_port": nat_port,
        }


@dataclass(frozen=True)
class WatchStart:
    """The header: the box's facts and how it watches."""

    facts: HostFacts
    mode: str  # interval | events
    interval: float
    duration: int
    intervals: Optional[int]
    flows: int
    listed: int
    warnings: tuple[str, ...] = ()
    own_session: Optional[OwnSession] = None


@dataclass(frozen=True)
class FlowEvent:
    """A flow present at the start, new, changed state (``old`` -> ``flow.status``) or gone."""

    kind: str
    at: float  # seconds since the box started watching
    flow: WatchFlow
    old: Optional[str] = None


@dataclass(frozen=True)
class Tick:
    """One interval's box figures (None where the box cannot tell)."""

    seq: int
    at: float
    flows: int
    count: Optional[int]
    max: Optional[int]
    fill_pct: Optional[float]
    new: int
    closed: int
    new_per_s: float
    closed_per_s: float
    insert_failed: Optional[int]
    drop: Optional[int]
    early_drop: Optional[int]
    pressure: Optional[PortPressure]
    lost: int
    dropped: int
    malformed: int
    cpu: float


@dataclass(frozen=True)
class WatchEnd:
    """The box ended its watch as asked (the duration passed or the count was reached)."""

    at: float
    reason: str
    lost: int


Record = Union[WatchStart, FlowEvent, Tick, WatchEnd]


def _port(value: Any, path: str) -> Optional[int]:
    return None if value is None else _int(value, path, 0, 65535)


def check_flow(value: Any, path: str = "flow") -> WatchFlow:
    """An event's ``flow`` (agent_watch.flow_json); raises AnswerError."""
    f = _dict(value, path, 16)
    unknown = set(f) - {"proto", "l3", "nat", "status", "orig", "reply", "zone"}
    if unknown:
        raise _bad(path, "the documented flow keys", sorted(unknown)[0])
    l3 = f.get("l3")
    if l3 not in ("ipv4", "ipv6"):
        raise _bad(f"{path}.l3", "ipv4 or ipv6", l3)
    if f.get("nat") not in agent.NAT_KINDS:
        raise _bad(f"{path}.nat", "a NAT kind", f.get("nat"))
    status = f.get("status")
    if not isinstance(status, str) or status not in STATUSES:
        raise _bad(f"{path}.status", "a conntrack state or UNREPLIED/ASSURED/REPLIED", status)
    ends = []
    for side in ("orig", "reply"):
        t = _dict(f.get(side), f"{path}.{side}", 8)
        extra = set(t) - {"src", "dst", "sport", "dport", "id", "srckey", "dstkey"}
        if extra:
            raise _bad(f"{path}.{side}", "src, dst and ports, id or GRE keys", sorted(extra)[0])
        src, dst = (
            _addr(t.get("src"), f"{path}.{side}.src"),
            _addr(t.get("dst"), f"{path}.{side}.dst"),
        )
        for addr in (src, dst):
            if (":" in addr) is not (l3 == "ipv6"):
                raise _bad(f"{path}.{side}", f"{l3} addresses", addr)
        if "srckey" in t:
            for k in ("srckey", "dstkey"):
                _matching(t.get(k), f"{path}.{side}.{k}", _GRE_KEY, "a GRE key")
        sport = _port(t.get("sport"), f"{path}.{side}.sport")
        dport = _port(t.get("dport", t.get("id")), f"{path}.{side}.dport")
        ends.append((src, dst, sport, dport))
    (osrc, odst, osp, odp), (rsrc, rdst, rsp, rdp) = ends
    return WatchFlow(
        proto=_proto(f.get("proto"), f"{path}.proto"),
        l3=l3,
        nat=f["nat"],
        status=status,
        osrc=osrc,
        odst=odst,
        osport=osp,
        odport=odp,
        rsrc=rsrc,
        rdst=rdst,
        rsport=rsp,
        rdport=rdp,
        zone=_int(f.get("zone", 0), f"{path}.zone", 0, 65535),
    )


_GRE_KEY = re.compile(r"^0x[0-9a-fA-F]{1,8}$")


def check_pressure(value: Any) -> Optional[PortPressure]:
    if value is None:
        return None
    return check_port_pressure(value, "tick.pressure", 8)


def check_tick(d: dict[str, Any]) -> Tick:
    def count(key: str) -> int:
        return _int(d.get(key, 0), f"tick.{key}", 0, U32)

    return Tick(
        seq=_int(d.get("seq"), "tick.seq", 0, U32),
        at=_num(d.get("t"), "tick.t", 0.0, 1e7),
        flows=count("flows"),
        count=_opt_int(d.get("count"), "tick.count", 0, U32),
        max=_opt_int(d.get("max"), "tick.max", 0, U32),
        fill_pct=_opt_num(d.get("fill_pct"), "tick.fill_pct", 0.0, 1e9),
        new=count("new"),
        closed=count("closed"),
        new_per_s=_num(d.get("new_per_s", 0), "tick.new_per_s", 0.0, 1e9),
        closed_per_s=_num(d.get("closed_per_s", 0), "tick.closed_per_s", 0.0, 1e9),
        insert_failed=_opt_int(d.get("insert_failed"), "tick.insert_failed"),
        drop=_opt_int(d.get("drop"), "tick.drop"),
        early_drop=_opt_int(d.get("early_drop"), "tick.early_drop"),
        pressure=check_pressure(d.get("pressure")),
        lost=count("lost"),
        dropped=count("dropped"),
        malformed=count("malformed"),
        cpu=_num(d.get("cpu", 0.0), "tick.cpu", 0.0, 1e7),
    )


def check_start(data: dict[str, Any]) -> WatchStart:
    if data.get("watch") != agent_watch.WATCH_VERSION:
        raise _bad("watch", f"version {agent_watch.WATCH_VERSION}", data.get("watch"))
    mode = data.get("mode")
    if mode not in ("interval", "events"):
        raise _bad("mode", "interval or events", mode)
    warnings = tuple(
        _text(w, "warnings[]") for w in _list(data.get("warnings", []), "warnings", 100)
    )
    return WatchStart(
        facts=check_facts(data),
        mode=mode,
        interval=_num(data.get("interval"), "interval", 0.0, agent_watch.INTERVAL_MAX),
        duration=_int(data.get("duration"), "duration", 1, agent_watch.DURATION_MAX),
        intervals=_opt_int(data.get("intervals"), "intervals", 1, agent_watch.COUNT_MAX),
        flows=_int(data.get("flows"), "flows", 0, U32),
        listed=_int(data.get("listed"), "listed", 0, U32),
        warnings=warnings,
        own_session=check_own_session(data.get("own_session")),
    )


class WatchReader:
    """Reads one box's watch stream as it arrives; ``on_record(record)`` gets each checked
    :data:`Record` in order. Raises AnswerError (or the agent's own error) at the first
    line that breaks a rule, so the transport stops at once."""

    def __init__(
        self,
        label: str,
        on_record: Callable[[Record], None],
        limits: WatchLimits = WatchLimits(),
        encoding: str = "json",
    ) -> None:
        if encoding not in agent_watch.ENCODINGS:
            raise ValueError(f"unknown watch encoding {encoding!r}")
        self.label = label
        self.on_record = on_record
        self.limits = limits
        self.received = 0  # bytes as they came (compressed or not)
        self.inflated = 0  # bytes of lines: what the caps count
        self.interval_received = 0
        # the inflater's own cap is never the one met: every piece (at most STEP bytes) is
        # counted against the session cap first, with that cap's message
        self._inflater: Optional[answer_wire.Inflater] = None
        if encoding == "zlib":
            cap = limits.session_bytes + answer_wire.STEP
            self._inflater = answer_wire.Inflater(cap, "watch stream")
        self._sniffed = encoding != "zlib"
        self._failure_only = False  # asked for zlib, sent plain: only a failure may come so
        self.started: Optional[WatchStart] = None
        self.ended = False
        self._rest = b""
        self._present = 0

    def feed(self, chunk: bytes) -> None:
        """Take the next bytes of the stream as they came; raises at the first broken rule."""
        self.received += len(chunk)
        if not self._sniffed and chunk:
            self._sniffed = True
            if chunk[:1] == b"{":  # a plain failure line from before the watch began
                self._inflater = None
                self._failure_only = True
        if self._inflater is None:
            self._lines(chunk)
            return
        for piece in self._inflater.feed(chunk):
            self._lines(piece)

    def _lines(self, chunk: bytes) -> None:
        self.inflated += len(chunk)
        self.interval_received += len(chunk)
        if self.inflated > self.limits.session_bytes:
            raise AnswerError(f"the watch sent more than {self.limits.session_bytes:,} bytes")
        if self.started is not None and self.interval_received > self.limits.interval_bytes:
            raise AnswerError(
                f"one interval of the watch sent more than {self.limits.interval_bytes:,} bytes"
            )
        lines = (self._rest + chunk).split(b"\n")
        self._rest = lines.pop()
        self._check_length(self._rest)
        for line in lines:
            self._line(line)

    def _check_length(self, line: bytes) -> None:
        cap = self.limits.header_bytes if self.started is None else self.limits.line_bytes
        if len(line) > cap:
            raise AnswerError(f"a line of the watch is longer than {cap:,} bytes")

    def _line(self, line: bytes) -> None:
        self._check_length(line)
        if not line.strip():
            return
        if self.ended:
            raise AnswerError("a line after the watch's end")
        data = decode_line(line, "a watch line")
        if not isinstance(data, dict):
            raise _bad("a watch line", "a JSON object", data)
        if self.started is None:
            if data.get("agent") != AGENT_VERSION:
                raise _bad("agent", f"version {AGENT_VERSION}", data.get("agent"))
            if data.get("ok") is False:
                raise agent_failure(data)
            if data.get("ok") is not True:
                raise _bad("ok", "true or false", data.get("ok"))
            if self._failure_only:
                raise AnswerError("asked for a zlib-compressed watch, the box sent plain lines")
            self.started = check_start(data)
            self.on_record(self.started)
            return
        self.on_record(self._event(data))

    def _event(self, d: dict[str, Any]) -> Record:
        kind = d.get("event")
        if kind == "error":
            raise agent_failure(d)
        if kind == "tick":
            self.interval_received = 0
            return check_tick(d)
        if kind == "end":
            self.ended = True
            reason = d.get("reason")
            if reason not in END_REASONS:
                raise _bad("end.reason", "duration or count", reason)
            return WatchEnd(
                _num(d.get("t"), "end.t", 0.0, 1e7),
                reason,
                _int(d.get("lost", 0), "end.lost", 0, U32),
            )
        if kind not in FLOW_EVENTS:
            raise _bad("event", "present, new, update, destroy, tick, end or error", kind)
        if kind == "present":
            self._present += 1
            assert self.started is not None
            if self._present > self.started.listed:
                raise AnswerError("more present flows than the header announced")
        old = None
        if kind == "update":
            old = d.get("old")
            if not isinstance(old, str) or old not in STATUSES:
                raise _bad("update.old", "a conntrack state", old)
        return FlowEvent(
            kind, _num(d.get("t"), f"{kind}.t", 0.0, 1e7), check_flow(d.get("flow")), old
        )

    def finish(self) -> None:
        """After the stream closed: raises when it did not end as the watch asked."""
        inflater = self._inflater
        if inflater is not None and (self.ended or self._rest.strip()):
            inflater.finish()  # a compressed stream cut inside a line or before its close
        if self._rest.strip():
            rest, self._rest = self._rest, b""
            self._line(rest)
        if self.started is None:
            raise AnswerError("the box answered nothing")
        if not self.ended:
            raise TargetError(f"{self.label}: the watch stopped before its end", kind="agent")
