"""watch: the box side (agent_watch) on saved tables, and the boundary (answer_watch)."""

from __future__ import annotations

import json
import os

import pytest

from natfleet import agent, agent_watch
from natfleet.answer import AnswerError
from natfleet.answer_watch import FlowEvent, Tick, WatchEnd, WatchReader, WatchStart
from natfleet.errors import TargetError, UsageError
from natfleet.models import Target
from natfleet.watch import watch_fleet, watch_request
from tests.boxes import Script, ScriptedExecutor

DATA = os.path.join(os.path.dirname(__file__), "data", "watch")


def _table(name: str) -> agent.DumpSources:
    with open(os.path.join(DATA, name)) as handle:
        return agent.DumpSources({agent.TABLE_PROC: handle.read()})


def _events(tracker, sources):
    read, write = os.pipe()
    out = agent_watch.Emitter(write)
    _, now = tracker.read_table(sources)
    agent_watch.diff_into(tracker, now, out)
    out.flush()
    os.close(write)
    with os.fdopen(read) as lines:
        return [json.loads(line) for line in lines]


def test_interval_diff_reports_each_change_with_old_and_new_state():
    request, _ = agent_watch.watch_request({"mode": "watch"})
    tracker = agent_watch.Tracker(request, frozenset(), None, [32768, 60999])
    assert {e["event"] for e in _events(tracker, _table("before.txt"))} == {"new"}
    assert len(tracker.flows) == 3  # translated only: the routed SSH session is left out
    events = _events(tracker, _table("after.txt"))
    by_kind = {(e["event"], e["flow"]["proto"]): e for e in events}
    assert sorted(by_kind) == [("destroy", "udp"), ("new", "icmp"), ("update", "tcp")]
    update = by_kind["update", "tcp"]
    assert (update["old"], update["flow"]["status"]) == ("SYN_SENT", "ESTABLISHED")
    assert update["flow"]["orig"]["sport"] == 40000
    assert update["flow"]["reply"]["dst"] == "198.18.90.65"  # the NAT address
    assert by_kind["destroy", "udp"]["flow"]["status"] == "UNREPLIED"
    assert tracker.malformed == 1  # the bad line is counted, not lost
    assert tracker.worst_pressure()["ports"] == 2  # two TCP ports toward 198.18.90.70:8000


def test_unchanged_lines_are_not_parsed_again(monkeypatch):
    request, _ = agent_watch.watch_request({"mode": "watch"})
    tracker = agent_watch.Tracker(request, frozenset(), None, None)
    _events(tracker, _table("before.txt"))
    calls = []
    real = agent.parse_fields
    monkeypatch.setattr(agent, "parse_fields", lambda line: calls.append(line) or real(line))
    assert _events(tracker, _table("before.txt")) == []
    assert calls == []  # same text (timeouts aside): no parse, no event


def test_event_lines_from_conntrack_e():
    kind, line = agent_watch.event_line(
        "    [NEW] ipv4     2 tcp      6 120 SYN_SENT src=192.0.2.1 dst=203.0.113.5 "
        "sport=40000 dport=443 [UNREPLIED] src=203.0.113.5 dst=198.51.100.1 sport=443 "
        "dport=61000 mark=0 [USERSPACE] portid=26603 progname=conntrack"
    )
    assert kind == "new"
    assert agent.parse_fields(line)[2] == "SYN_SENT"


@pytest.mark.parametrize(
    "request_, field",
    [
        ({"interval": 0}, "interval"),
        ({"interval": "2"}, "interval"),
        ({"duration": 99999}, "duration"),
        ({"count": 0}, "count"),
        ({"events": "yes"}, "events"),
        ({"bogus": 1}, "bogus"),
    ],
)
def test_bad_watch_requests_name_their_field(request_, field):
    with pytest.raises(agent.AgentError) as caught:
        agent_watch.watch_request({"mode": "watch", **request_})
    assert str(caught.value).startswith(field)
    with pytest.raises(UsageError):
        watch_request(**{k: v for k, v in request_.items() if k != "bogus"} or {"interval": 0})


HEADER = {
    "agent": 2, "ok": True, "watch": 1, "hostname": "nat-a", "mode": "interval",
    "interval": 1.0, "duration": 60, "intervals": 2, "flows": 1, "listed": 1,
}  # fmt: skip
FLOW = {
    "proto": "tcp", "l3": "ipv4", "nat": "snat", "status": "SYN_SENT", "zone": 0,
    "orig": {"src": "198.18.90.10", "dst": "198.18.90.70", "sport": 40000, "dport": 8000},
    "reply": {"src": "198.18.90.70", "dst": "198.18.90.65", "sport": 8000, "dport": 40000},
}  # fmt: skip
TICK = {"event": "tick", "t": 1.0, "seq": 1, "flows": 1, "count": 1, "max": 100, "new": 0,
        "closed": 0, "new_per_s": 0, "closed_per_s": 0, "lost": 0, "pressure": None}  # fmt: skip


def _stream(*objs) -> bytes:
    return b"".join(json.dumps(o).encode() + b"\n" for o in objs)


def test_reader_checks_every_record():
    seen = []
    reader = WatchReader("nat-a", seen.append)
    update = {"event": "update", "t": 0.5, "old": "SYN_SENT",
              "flow": dict(FLOW, status="ESTABLISHED")}  # fmt: skip
    data = _stream(HEADER, {"event": "present", "t": 0, "flow": FLOW}, update, TICK,
                   {"event": "end", "t": 2, "reason": "count", "lost": 0})  # fmt: skip
    for i in range(0, len(data), 7):  # in small chunks, as a transport delivers them
        reader.feed(data[i : i + 7])
    reader.finish()
    assert [type(r) for r in seen] == [WatchStart, FlowEvent, FlowEvent, Tick, WatchEnd]
    assert (seen[2].old, seen[2].flow.status, seen[2].flow.rdst) == (
        "SYN_SENT", "ESTABLISHED", "198.18.90.65",
    )  # fmt: skip


@pytest.mark.parametrize(
    "bad, says",
    [
        ({"event": "new", "t": 0, "flow": dict(FLOW, status="\x1b[2J")}, "flow.status"),
        ({"event": "new", "t": 0, "flow": dict(FLOW, orig={"src": "x", "dst": "y"})}, "orig.src"),
        ({"event": "update", "t": 0, "old": "HACKED", "flow": FLOW}, "update.old"),
        ({"event": "tick", "t": 0, "seq": -1}, "tick.seq"),
        ({"event": "boom"}, "event"),
        ({"event": "present", "t": 0, "flow": FLOW}, "present flows"),  # one more than listed
    ],
)
def test_reader_rejects_what_does_not_check(bad, says):
    reader = WatchReader("nat-a", lambda record: None)
    reader.feed(_stream(HEADER, {"event": "present", "t": 0, "flow": FLOW}))
    with pytest.raises(AnswerError) as caught:
        reader.feed(_stream(bad))
    assert says in str(caught.value)


def test_reader_caps_lines_and_intervals():
    from natfleet.answer_watch import WatchLimits

    reader = WatchReader("nat-a", lambda r: None, WatchLimits(line_bytes=100, interval_bytes=600))
    reader.feed(_stream(HEADER))
    with pytest.raises(AnswerError, match="longer than 100"):
        reader.feed(b"x" * 101)
    reader = WatchReader("nat-a", lambda r: None, WatchLimits(interval_bytes=2000))
    reader.feed(_stream(HEADER, {"event": "present", "t": 0, "flow": FLOW}))
    with pytest.raises(AnswerError, match="one interval"):
        for _ in range(20):
            reader.feed(_stream({"event": "new", "t": 0, "flow": FLOW}))


def test_a_stream_that_stops_early_is_an_error():
    reader = WatchReader("nat-a", lambda r: None)
    reader.feed(_stream(HEADER, TICK))
    with pytest.raises(TargetError, match="stopped before its end"):
        reader.finish()


def test_a_box_failing_mid_watch_is_an_event_and_the_others_go_on():
    import zlib

    good = zlib.compress(_stream(HEADER, {"event": "present", "t": 0, "flow": FLOW}, TICK,
                         {"event": "end", "t": 2, "reason": "count", "lost": 0}))  # fmt: skip
    z = zlib.compressobj()  # a remote box's stream is zlib; this one stops inside a line
    bad = z.compress(_stream(HEADER, {"event": "present", "t": 0, "flow": FLOW}, TICK)[:-20])
    bad += z.flush(zlib.Z_SYNC_FLUSH)
    executor = ScriptedExecutor({"nat-a": Script(good), "nat-b": Script(bad)})
    targets = [Target("nat-a", host="nat-a"), Target("nat-b", host="nat-b")]
    events = list(watch_fleet(targets, watch_request(count=2), executor))
    errors = [e for e in events if e.error is not None]
    assert [e.target.name for e in errors] == ["nat-b"]
    assert errors[0].error.kind == "answer"
    ends = [e for e in events if isinstance(e.record, WatchEnd)]
    assert [e.target.name for e in ends] == ["nat-a"]


def test_saved_tables_cannot_be_watched():
    with pytest.raises(UsageError, match="cannot be watched"):
        list(watch_fleet([Target("t.txt", kind="file", path="t.txt")], watch_request()))


@pytest.mark.parametrize("name", ["agent_watch", "answer_watch", "snapshot"])
def test_docstring_examples_run(name):
    import doctest
    import importlib

    result = doctest.testmod(importlib.import_module(f"natfleet.{name}"))
    assert result.attempted > 0 and result.failed == 0
