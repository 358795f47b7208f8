"""watch with ``"encoding": "zlib"``: the agent's watch on saved tables sends one zlib stream,
sync-flushed per batch, and the boundary inflates it under its caps (counted inflated)."""

from __future__ import annotations

import io
import json
import os
import tempfile
import zlib

import pytest

from natfleet import agent, agent_watch
from natfleet.answer import AnswerError
from natfleet.answer_watch import FlowEvent, Tick, WatchEnd, WatchLimits, WatchReader, WatchStart
from natfleet.errors import TargetError
from natfleet.models import Target
from natfleet.watch import watch_fleet, watch_request
from tests.boxes import Script, ScriptedExecutor

DATA = os.path.join(os.path.dirname(__file__), "data", "watch")
SYNC_MARK = b"\x00\x00\xff\xff"  # the empty stored block Z_SYNC_FLUSH ends with


class Tables(agent.DumpSources):
    """The saved tables in turn, one a read (the last one again and again)."""

    def __init__(self, *names: str) -> None:
        super().__init__()
        self.texts = []
        for name in names:
            with open(os.path.join(DATA, name)) as handle:
                self.texts.append(handle.read())

    def exists(self, path: str) -> bool:
        return path == agent.TABLE_PROC

    def open_lines(self, path: str):
        text = self.texts.pop(0) if len(self.texts) > 1 else self.texts[0]
        return io.StringIO(text, newline=None)


def _run_watch(encoding: str, count: int = 2) -> bytes:
    """What the agent's watch writes on fixtures: before.txt, then after.txt."""
    request = {"mode": "watch", "interval": 0.2, "count": count, "encoding": encoding}
    with tempfile.TemporaryFile() as out:
        agent_watch.watch(request, Tables("before.txt", "after.txt"), out.fileno(), False)
        out.seek(0)
        return out.read()


def _records(data: bytes, encoding: str, chunk: int = 13) -> list:
    seen: list = []
    reader = WatchReader("nat-a", seen.append, encoding=encoding)
    for i in range(0, len(data), chunk):
        reader.feed(data[i : i + chunk])
    reader.finish()
    return seen


def _shape(records: list) -> list:
    out = []
    for r in records:
        if isinstance(r, FlowEvent):
            out.append((r.kind, r.old, r.flow))
        else:
            out.append(type(r).__name__)
    return out


def test_the_compressed_stream_carries_the_same_records_as_the_plain_one():
    packed, plain = _run_watch("zlib"), _run_watch("json")
    assert packed[:1] != b"{" and zlib.decompressobj().decompress(packed)[:1] == b"{"
    records = _records(packed, "zlib")
    assert _shape(records) == _shape(_records(plain, "json"))
    kinds = [(r.kind, r.old, r.flow.status) for r in records if isinstance(r, FlowEvent)]
    assert ("update", "SYN_SENT", "ESTABLISHED") in kinds  # after.txt's change, seen inflated
    assert isinstance(records[0], WatchStart) and isinstance(records[-1], WatchEnd)


def test_each_flushed_batch_inflates_whole_as_it_arrives():
    data = _run_watch("zlib", count=3)
    cuts = [i + len(SYNC_MARK) for i in range(len(data)) if data.startswith(SYNC_MARK, i)]
    assert len(cuts) >= 4  # the header and its flows, then each interval's lines
    seen: list = []
    reader = WatchReader("nat-a", seen.append, encoding="zlib")
    done = 0
    ticks = []
    for cut in cuts:
        reader.feed(data[done:cut])
        done = cut
        assert reader._rest == b""  # no line waits for the next batch
        ticks.append(sum(isinstance(r, Tick) for r in seen))
    assert isinstance(seen[0], WatchStart) and ticks[0] == 0 and ticks[-1] == 3
    reader.feed(data[done:])  # the end line and the stream's close
    reader.finish()
    assert reader.ended and reader.inflated > reader.received


def test_a_watch_error_after_the_header_comes_in_the_stream(monkeypatch):
    def broken(self, sources):
        raise agent.AgentError("no_table", "the table went away")

    with tempfile.TemporaryFile() as out:
        real = agent_watch.Tracker.read_table
        calls = []

        def once(self, sources):  # the first read works, the next one breaks
            calls.append(1)
            return real(self, sources) if len(calls) == 1 else broken(self, sources)

        monkeypatch.setattr(agent_watch.Tracker, "read_table", once)
        data = {"mode": "watch", "interval": 0.2, "count": 3, "encoding": "zlib"}
        with open(out.fileno(), "w", closefd=False) as stdout:
            assert agent_watch.main(data, Tables("before.txt"), stdout) == 0
        out.seek(0)
        stream = out.read()
    with pytest.raises(TargetError, match="the table went away"):
        _records(stream, "zlib")


def test_a_failure_before_the_header_may_come_plain_but_a_plain_header_may_not():
    failure = b'{"agent":2,"ok":false,"error":{"kind":"bad_request","message":"count: no"}}\n'
    with pytest.raises(TargetError, match="count: no"):
        _records(failure, "zlib")
    plain = _run_watch("json")
    with pytest.raises(AnswerError, match="sent plain lines"):
        _records(plain, "zlib")


def test_the_request_names_a_bad_encoding():
    with pytest.raises(agent.AgentError, match="^encoding: must be json or zlib"):
        agent_watch.watch_request({"mode": "watch", "encoding": "gzip"})


def test_a_corrupt_stream_is_an_answer_error():
    data = bytearray(_run_watch("zlib"))
    data[len(data) // 2] ^= 0xFF
    with pytest.raises(AnswerError, match="compressed watch stream|watch line"):
        _records(bytes(data), "zlib")


def test_a_stream_cut_inside_a_line_or_before_its_close_is_an_answer_error():
    data = _run_watch("zlib")
    cuts = [i for i in range(len(data)) if data.startswith(SYNC_MARK, i)]
    inside = cuts[1] - 3  # within the first interval's batch: its last line not whole
    with pytest.raises(AnswerError, match="cut short"):
        _records(data[:inside], "zlib")
    with pytest.raises(AnswerError, match="cut short"):
        _records(data[:-2], "zlib")  # the end line inflated, the zlib stream not closed
    with pytest.raises(TargetError, match="stopped before its end"):
        _records(data[: cuts[1] + len(SYNC_MARK)], "zlib")  # cut between batches


def _compressed(*objs, flush: int = zlib.Z_FINISH) -> bytes:
    z = zlib.compressobj()
    data = b"".join(json.dumps(o).encode() + b"\n" for o in objs)
    return z.compress(data) + z.flush(flush)


HEADER = {
    "agent": 2, "ok": True, "watch": 1, "hostname": "nat-a", "mode": "interval",
    "interval": 1.0, "duration": 60, "intervals": 2, "flows": 0, "listed": 0,
}  # fmt: skip
TICK = {"event": "tick", "t": 1.0, "seq": 1, "flows": 0, "count": 0, "max": 100, "new": 0,
        "closed": 0, "new_per_s": 0, "closed_per_s": 0, "lost": 0, "pressure": None}  # fmt: skip
END = {"event": "end", "t": 2, "reason": "count", "lost": 0}


@pytest.mark.parametrize(
    "bomb, says",
    [
        (b"\n" * (64 << 20), "one interval of the watch sent more than"),  # blank lines
        (b" " * (64 << 20), "longer than 65,536 bytes"),  # one endless line
    ],
)
def test_a_bomb_stops_at_the_caps_counted_inflated(bomb, says):
    z = zlib.compressobj(9)
    head = json.dumps(HEADER).encode() + b"\n"
    data = z.compress(head + bomb) + z.flush(zlib.Z_SYNC_FLUSH)
    assert len(data) < 200_000  # small on the wire
    reader = WatchReader("nat-a", lambda r: None, WatchLimits(), "zlib")
    with pytest.raises(AnswerError, match=says):
        reader.feed(data)
    assert reader.inflated < WatchLimits().interval_bytes + (1 << 19)  # stopped within a step


def test_the_session_cap_counts_inflated_bytes():
    ticks = [dict(TICK, seq=i) for i in range(1, 400)]
    data = _compressed(HEADER, *ticks, END)
    reader = WatchReader("nat-a", lambda r: None, WatchLimits(session_bytes=20_000), "zlib")
    assert len(data) < 20_000
    with pytest.raises(AnswerError, match="the watch sent more than 20,000 bytes"):
        reader.feed(data)


def test_a_bad_compressed_box_is_an_event_and_the_others_go_on():
    good = _compressed(HEADER, TICK, END)
    boxes = {
        "nat-a": Script(good),
        "nat-b": Script(good[: len(good) // 2]),  # truncated
        "nat-c": Script(good[:10] + b"\xff" * 8 + good[18:]),  # corrupt
    }
    executor = Recording(boxes)
    targets = [Target(name, host=name) for name in boxes]
    events = list(watch_fleet(targets, watch_request(count=2), executor))
    errors = {e.target.name: e.error for e in events if e.error is not None}
    assert sorted(errors) == ["nat-b", "nat-c"]
    assert all(error.kind in ("answer", "agent") for error in errors.values())
    assert "corrupt" in errors["nat-c"].message or "watch line" in errors["nat-c"].message
    ends = [e.target.name for e in events if isinstance(e.record, WatchEnd)]
    assert ends == ["nat-a"]
    assert [r["encoding"] for r in executor.requests] == ["zlib"] * 3


class Recording(ScriptedExecutor):
    """A ScriptedExecutor that keeps each request it was sent (after the agent bundle)."""

    def __init__(self, scripts) -> None:
        super().__init__(scripts)
        self.requests: list[dict] = []

    def exec(self, target, command, stdin, *args, **kwargs):
        head, rest = stdin.split(b"\n", 1)
        self.requests.append(json.loads(rest[int(head) :]))
        return super().exec(target, command, stdin, *args, **kwargs)
