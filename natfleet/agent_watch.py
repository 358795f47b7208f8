"""natfleet agent, watch mode: stream a box's conntrack changes as JSON lines.

Stdlib only, Python 3.6+; shipped in the agent bundle (``remote.AGENT_MODULES``) and reached
from ``agent.main()`` for a request with ``"mode": "watch"``. It runs for ``duration``
seconds (or ``count`` intervals) and writes, one compact JSON object a line, flushed as it
goes (docs/json.md, "Watch"):

    {"agent":2,"ok":true,"watch":1,"mode":"interval","interval":2.0,...,"flows":17,"listed":17}
    {"event":"present","t":0.01,"flow":{"proto":"tcp","status":"ESTABLISHED","nat":"snat",...}}
    {"event":"update","t":2.01,"old":"SYN_SENT","flow":{...,"status":"ESTABLISHED",...}}
    {"event":"destroy","t":4.02,"flow":{...}}
    {"event":"tick","t":4.02,"seq":2,"flows":17,"count":18,"fill_pct":0.01,"new_per_s":0.5,...}
    {"event":"end","t":600.0,"reason":"duration"}

Two ways to see changes: compare table reads every ``interval`` (the default: a flow is
keyed by its original tuple and zone; a line whose text, timeout aside, did not change is
not parsed again), or follow the kernel's event stream (``events``: ``conntrack -E`` with a
large netlink buffer; each ENOBUFS it reports is counted in the tick's ``lost`` and followed
by a table read that catches up). The agent stops when the laptop goes away (its stdout
breaks), at the end, or on SIGTERM/SIGHUP, and its conntrack child dies with it.

With ``"encoding": "zlib"`` (what natfleet asks of a remote box) the same lines, from the
header on, travel as one zlib stream for the whole session, flushed with ``Z_SYNC_FLUSH``
after the header and after each batch of lines (an interval, a burst of kernel events), so
the laptop inflates each as it arrives; the ``end`` line (or an ``error`` event) closes the
stream. A failure before the header is one plain JSON line, as in every mode.
"""

import contextlib
import os
import select
import signal
import subprocess
import sys
import time
import zlib
from typing import IO, Any, Callable, Dict, FrozenSet, List, Optional, Set, Tuple

from natfleet import agent

WATCH_VERSION = 1
_STARTED: "Dict[int, Emitter]" = {}  # file descriptor: the Emitter that wrote a header there
WATCH_KEYS = ("interval", "duration", "count", "events", "encoding")
ENCODINGS = ("json", "zlib")  # the lines as they are, or one zlib stream of them
ZLIB_LEVEL = 6
INTERVAL_DEFAULT = 2.0
INTERVAL_MIN = 0.2
INTERVAL_MAX = 60.0  # the tick is also the heartbeat that notices a laptop gone away
DURATION_DEFAULT = 600
DURATION_MAX = 4 * 3600
COUNT_MAX = 1000000
LISTED_DEFAULT = 1000  # flows listed at the start ("present"); the request's limit overrides
EVENTS_PER_TICK = 20000  # change events one interval may send; the rest are counted
EVENT_BUFFER = 16 << 20  # bytes asked for conntrack's netlink socket (--buffer-size)
EVENTS_CMD = (
    "conntrack", "-E", "-o", "extended", "-e", "NEW,UPDATE,DESTROY",
    "--buffer-size", str(EVENT_BUFFER),
)  # fmt: skip
ENOBUFS_MARK = "ENOBUFS"
EVENT_TYPES = {"[NEW]": "new", "[UPDATE]": "update", "[DESTROY]": "destroy"}

Json = Dict[str, Any]
# (protocol number, orig src, orig dst, orig sport/id/srckey, orig dport/dstkey, zone)
Key = Tuple[int, str, str, Optional[str], Optional[str], int]
# (status, nat kind, l3, reply src, reply dst, reply sport/srckey, reply dport/id/dstkey)
Entry = Tuple[str, str, str, str, str, Optional[str], Optional[str]]


class Gone(Exception):
    """The laptop went away (stdout broke) or a signal asked the agent to stop."""


# --------------------------------------------------------------------------- request


class WatchOptions:
    """The watch keys of a request, checked (each error a bad_request naming its field).

    >>> WatchOptions({"interval": 0.5, "count": 3}).interval
    0.5
    >>> WatchOptions({"duration": 0})
    Traceback (most recent call last):
    ...
    natfleet.agent.AgentError: duration: must be an integer from 1 to 14400, not 0
    """

    def __init__(self, data: Json) -> None:
        interval = data.get("interval", INTERVAL_DEFAULT)
        if (
            not isinstance(interval, (int, float))
            or isinstance(interval, bool)
            or interval != interval
            or not INTERVAL_MIN <= interval <= INTERVAL_MAX
        ):
            raise agent._bad(
                "interval",
                f"must be a number of seconds from {INTERVAL_MIN:g} to {INTERVAL_MAX:g}, "
                f"not {agent._shown(interval)}",
            )
        self.interval = float(interval)
        duration = agent._int_field(data, "duration", 1, DURATION_MAX, DURATION_DEFAULT)
        self.duration = int(duration or DURATION_DEFAULT)
        self.count = agent._int_field(data, "count", 1, COUNT_MAX, None)
        self.events = data.get("events", False)
        if not isinstance(self.events, bool):
            raise agent._bad("events", f"must be true or false, not {agent._shown(self.events)}")
        self.encoding = data.get("encoding", "json")
        if self.encoding not in ENCODINGS:
            shown = agent._shown(self.encoding)
            raise agent._bad("encoding", f"must be json or zlib, not {shown}")


def watch_request(data: Any) -> Tuple[agent.Request, WatchOptions]:
    """A watch request: the listing's filters (agent.Request) and the watch keys."""
    if not isinstance(data, dict):
        raise agent.AgentError("bad_request", "the request must be a JSON object")
    rest = dict((k, v) for k, v in data.items() if k not in WATCH_KEYS and k != "mode")
    rest["mode"] = "list"
    return agent.Request(rest), WatchOptions(data)


# --------------------------------------------------------------------------- flows


def signature(line: str) -> int:
    """A hash of a table line without its timeout: equal for an entry that did not change.

    >>> a = "ipv4 2 tcp 6 100 ESTABLISHED src=192.0.2.1 dst=203.0.113.5 sport=1 dport=2 use=1"
    >>> signature(a) == signature(a.replace(" 100 ", " 99 "))
    True
    """
    i = line.find(" src=")
    if i < 0:
        return hash(line)
    j = line.rfind(" ", 0, i)
    if line[j + 1 : i].isdigit():  # no state (udp): the timeout ends the head
        return hash(line[:j] + line[i:])
    k = line.rfind(" ", 0, j)  # a state ends the head, the timeout before it
    if k >= 0 and line[k + 1 : j].isdigit():
        return hash(line[:k] + line[j:])
    return hash(line)


def _zone(line: str) -> int:
    i = line.rfind(" zone=")
    if i < 0:
        return 0
    text = line[i + 6 :].split(" ", 1)[0]
    return int(text) if text.isdigit() and len(text) <= 5 else 0


def event_line(line: str) -> Tuple[Optional[str], str]:
    """(event type, table line) from a ``conntrack -E -o extended`` line: the ``[NEW]``
    prefix off, the ``[USERSPACE] portid=..`` tail off, ``use=`` added as the table has it.

    >>> event_line(" [UPDATE] ipv4 2 udp 17 29 src=192.0.2.1 dst=203.0.113.53 sport=5 "
    ...     "dport=53 src=203.0.113.53 dst=198.51.100.1 sport=53 dport=5 mark=0")[0]
    'update'
    """
    text = line.strip()
    word, _, rest = text.partition(" ")
    kind = EVENT_TYPES.get(word)
    if kind is None:
        return None, text
    cut = rest.find(" [USERSPACE]")
    if cut >= 0:
        rest = rest[:cut]
    if " use=" not in rest:
        rest += " use=0"
    return kind, rest.strip()


class Tracker:
    """The watched flows as a compact ``key -> entry`` map (no Flow objects), the port
    pressure kept up to date as flows come and go, and what the current interval saw."""

    def __init__(
        self,
        request: agent.Request,
        own: "FrozenSet[str]",
        skip: Optional[Tuple[str, str, str, str]],
        port_range: Optional[List[int]],
    ) -> None:
        self.request = request
        self.own = own
        self.skip = skip
        self.range_size = port_range[1] - port_range[0] + 1 if port_range else None
        self.flows: Dict[Key, Entry] = {}
        self.sigs: Dict[int, Key] = {}
        self.rejected: Set[int] = set()
        self.pressure: Dict[Tuple[str, str, Optional[str], int], int] = {}
        self.fresh: List[Key] = []  # the flows the last table read parsed (new or changed)
        self.new = self.closed = self.malformed = self.lines = 0

    # ---- one line

    def parse(self, line: str) -> Optional[Tuple[Key, Entry]]:
        """(key, entry) for a watched flow, None for one the filters leave out; raises
        agent.Malformed."""
        fields = agent.parse_fields(line)
        nat = agent.nat_kind(fields, self.own)
        if self.skip is not None and fields[7:11] == self.skip:
            return None
        if not self.request.matches(fields, nat):
            return None
        intern = sys.intern
        pnum, _t, state, osrc, odst, osp, odp, rsrc, rdst, rsp, rdp, l3 = fields[:12]
        status = intern(agent.line_state(state, line))
        key = (pnum, intern(osrc), intern(odst), _i(osp), _i(odp), _zone(line))
        entry = (
            status,
            intern(nat),
            intern(l3 or "ipv4"),
            intern(rsrc),
            intern(rdst),
            _i(rsp),
            _i(rdp),
        )
        return key, entry

    # ---- the map

    def add(self, key: Key, entry: Entry) -> None:
        self.flows[key] = entry
        self._press(key, entry, 1)

    def remove(self, key: Key) -> Optional[Entry]:
        entry = self.flows.pop(key, None)
        if entry is not None:
            self._press(key, entry, -1)
        return entry

    def _press(self, key: Key, entry: Entry, n: int) -> None:
        if (entry[1] == "snat" or entry[1] == "snat+dnat") and key[0] in agent.PORT_PROTOS:
            pk = (entry[4], entry[3], entry[5], key[0])
            left = self.pressure.get(pk, 0) + n
            if left > 0:
                self.pressure[pk] = left
            else:
                self.pressure.pop(pk, None)

    def worst_pressure(self) -> Optional[Json]:
        if not self.pressure:
            return None
        (nat_ip, dst, dport, pnum), used = max(self.pressure.items(), key=lambda kv: kv[1])
        size = self.range_size
        return {
            "nat_ip": nat_ip,
            "dst": dst,
            "dport": int(dport or 0),
            "proto": agent.proto_name(pnum),
            "ports": used,
            "pct": round(100.0 * used / size, 2) if size else None,
        }

    # ---- a table read

    def read_table(self, sources: agent.Sources) -> Tuple[str, Dict[Key, Entry]]:
        """Read the table once: (source, the flows it holds now). Lines whose text did not
        change since the last read are not parsed again (their entry is the one before, the
        same object); the others' keys are in ``fresh``; new sigs replace the old ones."""
        source, stream = agent.open_table(sources)
        old_sigs, old_rejected, old_flows = self.sigs, self.rejected, self.flows
        sigs: Dict[int, Key] = {}
        rejected: Set[int] = set()
        now: Dict[Key, Entry] = {}
        fresh: List[Key] = []
        lines = 0
        with stream:
            for _first, text in agent._blocks(stream):
                for line in agent._lines(text):
                    lines += 1
                    sig = signature(line)
                    key = old_sigs.get(sig)
                    if key is not None:
                        entry = old_flows.get(key)
                        if entry is not None:
                            sigs[sig] = key
                            now[key] = entry
                            continue
                    if sig in old_rejected:
                        rejected.add(sig)
                        continue
                    if not line.strip() or agent._is_trailer(line):
                        lines -= 1
                        continue
                    try:
                        found = self.parse(line)
                    except agent.Malformed:
                        self.malformed += 1
                        continue
                    if found is None:
                        rejected.add(sig)
                        continue
                    sigs[sig] = found[0]
                    now[found[0]] = found[1]
                    fresh.append(found[0])
        self.sigs, self.rejected, self.lines, self.fresh = sigs, rejected, lines, fresh
        return source, now


def _i(value: Optional[str]) -> Optional[str]:
    return None if value is None else sys.intern(value)


def flow_json(key: Key, entry: Entry) -> Json:
    """An event's ``flow``: the original and reply tuples, NAT kind, status and zone.

    >>> flow_json((6, "192.0.2.1", "203.0.113.5", "40000", "443", 0),
    ...     ("SYN_SENT", "snat", "ipv4", "203.0.113.5", "198.51.100.1", "443", "61000"))["reply"]
    {'src': '203.0.113.5', 'dst': '198.51.100.1', 'sport': 443, 'dport': 61000}
    """
    pnum, osrc, odst, osp, odp, zone = key
    status, nat, l3, rsrc, rdst, rsp, rdp = entry
    orig: Json = {"src": osrc, "dst": odst}
    reply: Json = {"src": rsrc, "dst": rdst}
    if pnum in agent.ICMP_PROTOS:
        if osp is not None and osp.isdigit():
            orig["id"] = int(osp)
        if rdp is not None and rdp.isdigit():
            reply["id"] = int(rdp)
    elif pnum == agent.GRE:
        if osp is not None:
            orig.update(srckey=osp, dstkey=odp)
            reply.update(srckey=rsp, dstkey=rdp)
    elif osp is not None and osp.isdigit() and odp is not None and odp.isdigit():
        orig.update(sport=int(osp), dport=int(odp))
        reply.update(sport=int(rsp or 0), dport=int(rdp or 0))
    return {
        "proto": agent.proto_name(pnum),
        "l3": l3,
        "nat": nat,
        "status": status,
        "orig": orig,
        "reply": reply,
        "zone": zone,
    }


# --------------------------------------------------------------------------- output


class Emitter:
    """Writes JSON lines to a file descriptor, a batch at each :meth:`flush`; with
    ``compress`` one zlib stream, sync-flushed at each flush and ended by :meth:`finish`. A
    broken pipe (the laptop went away) raises Gone.

    >>> read, write = os.pipe()
    >>> out = Emitter(write, compress=True)
    >>> out.line({"event": "end"}); out.finish(); os.close(write)
    >>> zlib.decompress(os.read(read, 1000))
    b'{"event":"end"}\\n'
    """

    def __init__(
        self, fd: int, clock: Callable[[], float] = time.monotonic, compress: bool = False
    ) -> None:
        self.fd = fd
        self.clock = clock
        self.started = clock()
        self.pending: List[bytes] = []
        self.changes = 0
        self.dropped = 0
        self.z = zlib.compressobj(ZLIB_LEVEL) if compress else None
        self.sent = 0  # bytes written to fd

    def at(self) -> float:
        return round(self.clock() - self.started, 3)

    def line(self, obj: Json) -> None:
        self.pending.append(agent.encode(obj).encode("ascii") + b"\n")

    def change(self, obj: Json) -> None:
        """A change event, unless this interval already sent EVENTS_PER_TICK (counted)."""
        if self.changes >= EVENTS_PER_TICK:
            self.dropped += 1
            return
        self.changes += 1
        self.line(obj)

    def flush(self, last: bool = False) -> None:
        """Write the pending lines (compressed: sync-flushed, or the stream ended if
        ``last``)."""
        data = b"".join(self.pending)
        self.pending = []
        if self.z is not None:
            if not data and not last:
                return
            data = self.z.compress(data) + self.z.flush(
                zlib.Z_FINISH if last else zlib.Z_SYNC_FLUSH
            )
        view = memoryview(data)
        try:
            while view:
                view = view[os.write(self.fd, view) :]
        except OSError:
            raise Gone("stdout closed") from None
        self.sent += len(data)

    def finish(self) -> None:
        """The pending lines, and the end of the stream: nothing may follow."""
        self.flush(last=True)


def diff_into(tracker: Tracker, now: Dict[Key, Entry], out: Emitter) -> None:
    """Emit what changed between the tracker's flows and ``now`` (the last table read: only
    its ``fresh`` flows can be new or changed); make ``now`` current."""
    old = tracker.flows
    t = out.at()
    for key in tracker.fresh:
        entry = now.get(key)
        if entry is None:
            continue
        before = old.get(key)
        if before is None:
            tracker.new += 1
            out.change({"event": "new", "t": t, "flow": flow_json(key, entry)})
            tracker.add(key, entry)
        elif before is not entry:
            if before[0] != entry[0]:
                event = {"event": "update", "t": t, "old": before[0], "flow": flow_json(key, entry)}
                out.change(event)
            tracker.remove(key)
            tracker.add(key, entry)
    for key in [key for key in old if key not in now]:
        gone = tracker.remove(key)
        if gone is not None:
            tracker.closed += 1
            out.change({"event": "destroy", "t": t, "flow": flow_json(key, gone)})


def apply_event(tracker: Tracker, kind: str, line: str, out: Emitter) -> None:
    """One ``conntrack -E`` event: new, update (only a changed status is sent) or destroy."""
    try:
        found = tracker.parse(line)
    except agent.Malformed:
        tracker.malformed += 1
        return
    if found is None:
        return
    key, entry = found
    t = out.at()
    before = tracker.flows.get(key)
    if kind == "destroy":
        gone = tracker.remove(key) or entry
        tracker.closed += 1
        out.change({"event": "destroy", "t": t, "flow": flow_json(key, gone)})
    elif before is None:
        tracker.add(key, entry)
        tracker.new += 1
        out.change({"event": "new", "t": t, "flow": flow_json(key, entry)})
    elif before[0] != entry[0]:
        tracker.remove(key)
        tracker.add(key, entry)
        out.change({"event": "update", "t": t, "old": before[0], "flow": flow_json(key, entry)})
    else:
        tracker.remove(key)
        tracker.add(key, entry)


class Figures:
    """Per-interval box figures: fill, rates, deltas of the incident counters."""

    def __init__(self, sources: agent.Sources) -> None:
        self.sources = sources
        self.last_stats = self._stats()
        self.last_at = time.monotonic()
        self.last_cpu = time.process_time()

    def _stats(self) -> Optional[Dict[str, int]]:
        try:
            return agent.parse_stat(self.sources.read(agent.STAT_PATH))
        except ValueError:
            return None

    def tick(self, tracker: Tracker, out: Emitter, seq: int, lost: int) -> Json:
        now = time.monotonic()
        span = max(now - self.last_at, 1e-3)
        stats = self._stats()
        try:
            count = agent.read_int(self.sources, agent.COUNT_PATH)
            most = agent.read_int(self.sources, agent.MAX_PATH)
        except ValueError:
            count = most = None
        cpu = time.process_time()
        tick: Json = {
            "event": "tick",
            "t": out.at(),
            "seq": seq,
            "flows": len(tracker.flows),
            "count": count,
            "max": most,
            "fill_pct": agent._percent(count, most),
            "new": tracker.new,
            "closed": tracker.closed,
            "new_per_s": round(tracker.new / span, 2),
            "closed_per_s": round(tracker.closed / span, 2),
            "pressure": tracker.worst_pressure(),
            "lost": lost,
            "dropped": out.dropped,
            "malformed": tracker.malformed,
            "cpu": round(max(0.0, cpu - self.last_cpu), 3),
        }
        for name in ("insert_failed", "drop", "early_drop"):
            before = (self.last_stats or {}).get(name)
            after = (stats or {}).get(name)
            ok = before is not None and after is not None and after >= before
            tick[name] = after - before if ok else None  # type: ignore[operator]
        self.last_stats, self.last_at, self.last_cpu = stats, now, cpu
        tracker.new = tracker.closed = tracker.malformed = 0
        out.changes = out.dropped = 0
        return tick


# --------------------------------------------------------------------------- the run


class _Events:
    """The ``conntrack -E`` child: its lines as they come, its ENOBUFS reports counted."""

    def __init__(self, sources: agent.Sources) -> None:
        self.proc: "Optional[subprocess.Popen[bytes]]" = None  # noqa: UP037 (3.6)
        self.out_rest = b""
        self.err_rest = b""
        self.lost = 0
        self.said: List[str] = []
        if isinstance(sources, agent.LocalSources) and sources.root == "/":
            try:
                self.proc = subprocess.Popen(
                    list(EVENTS_CMD),
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    preexec_fn=_die_with_parent,
                )
            except OSError:
                self.proc = None
        if self.proc is None:
            raise agent.AgentError(
                "no_table",
                "--events needs conntrack-tools on the box ('conntrack -E'); "
                "watch without --events compares table reads instead",
            )

    def wait(self, seconds: float) -> Tuple[List[str], int]:
        """Event lines that arrived within ``seconds`` and the ENOBUFS reports; raises
        AgentError when conntrack exited."""
        proc = self.proc
        assert proc is not None and proc.stdout is not None and proc.stderr is not None
        lines: List[str] = []
        lost = 0
        ready, _, _ = select.select([proc.stdout, proc.stderr], [], [], max(0.0, seconds))
        ended = False
        for stream in ready:
            data = os.read(stream.fileno(), 1 << 20)
            if not data:
                ended = True
                continue
            if stream is proc.stdout:
                parts = (self.out_rest + data).split(b"\n")
                self.out_rest = parts.pop()
                lines.extend(p.decode("ascii", "replace") for p in parts)
            else:
                parts = (self.err_rest + data).split(b"\n")
                self.err_rest = parts.pop()
                for part in parts:
                    text = part.decode("ascii", "replace")
                    if ENOBUFS_MARK in text:
                        lost += 1
                    elif text.strip() and not text.startswith(("NOTICE", "This message")):
                        self.said.append(text.strip())
        if ended and proc.poll() is not None:
            raise agent.AgentError(
                "agent",
                "conntrack -E exited (status {}): {}".format(
                    proc.returncode, "; ".join(self.said[-3:]) or "no message"
                ),
            )
        return lines, lost

    def stop(self) -> None:
        proc = self.proc
        if proc is None:
            return
        if proc.poll() is None:
            with contextlib.suppress(OSError):
                proc.kill()
        with contextlib.suppress(Exception):
            proc.wait(5)
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()


def _die_with_parent() -> None:
    """In the conntrack child: SIGKILL when the agent dies, however it dies (Linux prctl)."""
    try:
        import ctypes

        ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except Exception:
        pass


def _stop_on_signal(signum: int, frame: Any) -> None:
    raise Gone(f"signal {signum}")


def watch(data: Any, sources: agent.Sources, fd: int, skip_own: bool = True) -> None:
    """Serve a watch request on ``fd``; raises AgentError before the header, Gone when the
    laptop goes away. Nothing is left running when it returns or raises."""
    request, options = watch_request(data)
    warnings: List[str] = []
    facts = agent.host_facts(sources, warnings)
    session = None
    if skip_own:
        session = agent._fact(
            warnings, "natfleet's own session", None, agent.find_own_session, sources
        )
    tracker = Tracker(
        request, frozenset(facts["addresses"]), agent.session_skip(session), facts["port_range"]
    )
    out = Emitter(fd, compress=options.encoding == "zlib")
    end = out.started + options.duration
    events = _Events(sources) if options.events else None
    try:
        source, now = tracker.read_table(sources)
        for key, entry in now.items():
            tracker.add(key, entry)
        listed = min(len(now), request.limit or LISTED_DEFAULT)
        header: Json = {"agent": agent.AGENT_VERSION, "ok": True, "watch": WATCH_VERSION}
        header.update(facts)
        agent._cap_warnings(warnings)
        header.update(
            warnings=warnings,
            source="conntrack -E" if events else source,
            mode="events" if events else "interval",
            interval=options.interval,
            duration=options.duration,
            intervals=options.count,
            flows=len(now),
            listed=listed,
            lines=tracker.lines,
            own_session=agent.session_json(session),
        )
        out.line(agent.printable_answer(header))
        for n, (key, entry) in enumerate(now.items()):
            if n >= listed:
                break
            out.line({"event": "present", "t": out.at(), "flow": flow_json(key, entry)})
        out.flush()
        _STARTED[fd] = out
        figures = Figures(sources)
        seq = 0
        reason = "duration"
        next_tick = out.started + options.interval
        lost_total = 0
        while True:
            lost = 0
            while True:
                left = next_tick - time.monotonic()
                if events is None:
                    if left > 0:
                        time.sleep(min(left, max(0.0, end - time.monotonic())))
                    break
                lines, more = events.wait(min(max(left, 0.0), 0.5))
                for line in lines:
                    kind, text = event_line(line)
                    if kind is not None:
                        apply_event(tracker, kind, text, out)
                lost += more
                out.flush()
                if left <= 0:
                    break
            if events is None or lost:
                _, now = tracker.read_table(sources)  # events lost: catch up from the table
                diff_into(tracker, now, out)
            seq += 1
            lost_total += lost
            out.line(figures.tick(tracker, out, seq, lost))
            out.flush()
            if options.count is not None and seq >= options.count:
                reason = "count"
                break
            if time.monotonic() >= end:
                break
            next_tick += options.interval
        out.line({"event": "end", "t": out.at(), "reason": reason, "lost": lost_total})
        out.finish()
    finally:
        if events is not None:
            events.stop()


def main(
    data: Any, sources: Optional[agent.Sources] = None, stdout: Optional[IO[Any]] = None
) -> int:
    """The watch mode of ``agent.main()``: 0 at the end, 1 when the laptop went away."""
    out = stdout or sys.stdout
    try:
        out.flush()
    except OSError:
        return 1
    fd = out.fileno()
    for signum in (signal.SIGTERM, signal.SIGHUP):
        with contextlib.suppress(ValueError, OSError):  # not the main thread
            signal.signal(signum, _stop_on_signal)
    try:
        watch(data, sources or agent.LocalSources("/"), fd)
    except Gone:
        return 1
    except Exception as exc:
        failure = agent._failure_for(exc)
        started = _STARTED.pop(fd, None)
        try:
            if started is None:  # before the header: the plain failure line of every mode
                os.write(fd, (agent.encode(failure) + "\n").encode("ascii"))
                return 0
            started.pending = []  # after the header: an error event ends the stream
            started.line({"event": "error", "error": failure["error"]})
            started.finish()
        except (OSError, Gone):
            return 1
    finally:
        _STARTED.pop(fd, None)
    return 0
