"""Compact answers and streamed fleet listings: the wire round trip, the boundary's rules for
compressed answers, the k-way merge against today's fleet-wide sort, --limit and streaming."""

from __future__ import annotations

import doctest
import io
import json
import zlib

import pytest

from natfleet import agent, agent_wire, answer_wire, api, fleet, render_stream
from natfleet.aggregate import merge_flows, merge_stream
from natfleet.answer import AnswerError, AnswerReader
from natfleet.answer_wire import Inflater, WireRows
from natfleet.fleet import ReadOptions, run_fleet
from natfleet.limits import AnswerLimits
from natfleet.models import HostError, HostResult, Target
from natfleet.render import NetstatStyle, write_flows
from natfleet.render_stream import write_stream
from tests.boxes import Script, ScriptedExecutor, compact, names_for, varied_table, wire

ALL_NAT = list(agent.NAT_KINDS)
SORTS = (None, "src", "dst", "src-port", "dst-port", "state")


@pytest.fixture(autouse=True)
def _pipe_width(monkeypatch):
    monkeypatch.delenv("COLUMNS", raising=False)  # a pipe: netstat-nat's own widths


def _request(sort=None, limit=None, resolve=False):
    return api.list_request(nat=ALL_NAT, sort=sort, limit=limit, resolve=resolve)


def _table_request(request):
    """What the agent gets to build a box's answer: never a reverse lookup (no network)."""
    return {**request, "resolve": False}


def _plain(request, table, names=None):
    """Wire format 2 (JSON rows) of the same box, the format before compact answers."""
    data = agent.handle(_table_request(request), agent.DumpSources({agent.TABLE_PROC: table}))
    if names is not None:
        data["names"] = names
    return wire(data)


def _fleet(scripts, request, options=None):
    targets = [Target(name=name, host=f"{name}.example") for name in scripts]
    return run_fleet(
        targets, request, ScriptedExecutor(scripts), options or ReadOptions(timeout=60)
    )


TABLES = [varied_table(seed, 150) for seed in (1, 2, 3)] + [varied_table(1, 150)]  # a twin box


def _both(request, names=False):
    """(plain results, compact results) of the same four boxes."""
    box_names = [names_for(t) if names else None for t in TABLES]
    plain = {
        f"box{i}": Script(_plain(request, t, n)) for i, (t, n) in enumerate(zip(TABLES, box_names))
    }
    packed = {
        f"box{i}": Script(compact(_table_request(request), t, n), chunk=777)
        for i, (t, n) in enumerate(zip(TABLES, box_names))
    }
    return _fleet(plain, request), _fleet(packed, request)


# --------------------------------------------------------------------------- wire format


def test_compact_answer_round_trips_every_kind_of_row():
    """Every kind of line in tests/data/lines (ICMP and GRE as JSON rows, counters above
    2**32, IPv6, zones, secctx) comes back as the row wire format 2 sends."""
    table = varied_table(7, 3000)
    for sort in SORTS:
        request = _request(sort)
        data = compact(request, table)
        reader = AnswerReader("box", request, cap=64 << 20)
        for i in range(0, len(data), 1000):
            reader.feed(data[i : i + 1000])
        answer = reader.finish()
        rows = agent.handle(request, agent.DumpSources({agent.TABLE_PROC: table}))["rows"]
        assert isinstance(answer.flows, WireRows) and len(answer.flows) == len(rows) == 3000
        assert [f.to_json() for f in answer.flows] == rows
        assert {s.proto for s in answer.flows.tables.shapes[1:]} >= {"tcp", "udp", "sctp"}


def test_bench_table_is_under_8_bytes_per_flow():
    """UDP flows from many sources through SNAT to one destination (the benchmark's table):
    the compact answer is far under the goal of 8 bytes a flow."""
    lines = [
        f"ipv4     2 udp      17 {3000 - i // 500} src=198.18.{1 + i // 250 % 200}.{1 + i % 250} "
        f"dst=203.0.113.200 sport={10000 + i * 7 % 50000} dport={1000 + i % 1000} [UNREPLIED] "
        f"src=203.0.113.200 dst=198.51.100.11 sport={1000 + i % 1000} "
        f"dport={10000 + i * 7 % 50000} mark=0 zone=0 use=2"
        for i in range(20000)
    ]
    data = compact(_request(), "\n".join(lines) + "\n")
    assert len(data) / 20000 < 8
    assert data[:1] == b"\x78" and zlib.decompress(data).count(b"\n") > 2


def _answer_error(data, request=None, cap=64 << 20):
    request = request or _request()
    reader = AnswerReader("box", request, cap=cap)
    with pytest.raises(AnswerError) as caught:
        for i in range(0, len(data), 4096):
            reader.feed(data[i : i + 4096])
        reader.finish()
    return str(caught.value)


def _recompressed(data, change):
    return zlib.compress(change(zlib.decompress(data)))


def test_compressed_answers_that_break_the_rules():
    request = _request()
    good = compact(request, varied_table(3, 5000))
    assert "cut short" in _answer_error(good[: len(good) * 2 // 3])
    corrupt = bytearray(good)
    corrupt[len(good) // 2] ^= 0xFF
    assert "corrupt" in _answer_error(bytes(corrupt))
    assert "after the end" in _answer_error(good + b"junk")
    text = zlib.decompress(good)
    head, body = text.split(b"\n", 1)
    header = json.loads(head)
    more = {**header, "rows": header["rows"] + 1}
    assert "cut short: 5,000 of 5,001" in _answer_error(
        zlib.compress(json.dumps(more).encode() + b"\n" + body)
    )
    bad_index = _recompressed(good, lambda t: t.replace(b'"n":4096,', b'"n":4096,"x":1,', 1))
    assert "block: expected the documented block keys, got 'x'" in _answer_error(bad_index)
    short = _recompressed(good, lambda t: t[:-10])
    assert "cut short inside a row block" in _answer_error(short)


def test_hostile_blocks_are_the_boxs_error():
    """Indices outside the tables, an address of the other family, rows out of order, a
    shape that is no shape: each an answer error naming what is wrong."""
    writer = agent_wire.BlockWriter()
    row = {
        "proto": "tcp", "l3": "ipv4", "state": "ESTABLISHED", "nat": "snat", "flags": [],
        "orig": {"src": "192.0.2.1", "dst": "203.0.113.5", "sport": 1, "dport": 443},
        "reply": {"src": "203.0.113.5", "dst": "198.51.100.1", "sport": 443, "dport": 1},
    }  # fmt: skip
    header = '{"agent":2,"ok":true,"rows":2,"encoding":"compact"}'

    def answer(blocks):
        return zlib.compress(header.encode() + b"\n" + b"".join(blocks))

    twice = writer.block([row, {**row, "orig": {**row["orig"], "src": "192.0.2.0"}}])
    assert "rows[1] is out of order" in _answer_error(answer([twice]))
    v6 = agent_wire.BlockWriter().block([row, {**row, "l3": "ipv6"}])
    v6 = v6.replace(b'"ipv4"', b'"ipv6"', 1)
    assert "IPv6 addresses for an ipv6 row" in _answer_error(answer([v6]))
    block = agent_wire.BlockWriter().block([row, row])
    head, payload = block.split(b"\n", 1)
    stretched = head + b"\n" + bytes([payload[0]]) + b"\x09" + payload[2:]  # shape 1 + 9
    assert "shape: expected an index below 2" in _answer_error(answer([stretched]))
    icmp = block.replace(b'"tcp"', b'"icmp"', 1)
    assert "proto: expected a protocol with ports" in _answer_error(answer([icmp]))
    failure = b'{"agent":2,"ok":false,"error":{"kind":"agent","message":"worker died"}}\n'
    with pytest.raises(Exception, match="worker died"):
        reader = AnswerReader("box", _request(), cap=1 << 20)
        reader.feed(answer([failure]))
        reader.finish()


def test_decompression_bomb_stops_at_the_cap_with_a_step_in_memory():
    header = b'{"agent":2,"ok":true,"rows":1,"encoding":"compact"}\n'
    z = zlib.compressobj(9)
    bomb = z.compress(header) + b"".join(z.compress(b"\0" * (1 << 20)) for _ in range(64))
    bomb += z.flush()
    assert len(bomb) < 200_000  # small on the wire, 64 MiB inflated
    inflater = Inflater(cap=4 << 20)
    biggest = 0
    with pytest.raises(AnswerError, match="inflates to more than the cap of 4,194,304 bytes"):
        for piece in inflater.feed(bomb):
            biggest = max(biggest, len(piece))
    assert 0 < biggest <= 1 << 18 and inflater.inflated <= (4 << 20) + (1 << 18)


def test_broken_compressed_boxes_are_error_rows_while_the_others_print():
    request = _request()
    good = compact(request, varied_table(5, 400))
    corrupt = bytearray(good)
    corrupt[len(good) // 2] ^= 0xFF
    z = zlib.compressobj(9)
    bomb = z.compress(b'{"agent":2,"ok":true,"rows":1,"encoding":"compact"}\n')
    bomb += b"".join(z.compress(b"\0" * (1 << 20)) for _ in range(16)) + z.flush()
    scripts = {
        "honest": Script(good),
        "truncated": Script(good[: len(good) // 2]),
        "corrupt": Script(bytes(corrupt)),
        "bomb": Script(bomb),
    }
    # (a line longer than line_bytes is refused too: here the inflated cap is what stops it)
    options = ReadOptions(timeout=60, limits=AnswerLimits(list_bytes=4 << 20, line_bytes=8 << 20))
    results = _fleet(scripts, request, options)
    assert isinstance(results[0], HostResult)
    errors = {r.target.name: r for r in results if isinstance(r, HostError)}
    assert {name: e.kind for name, e in errors.items()} == dict.fromkeys(
        ("truncated", "corrupt", "bomb"), "answer"
    )
    assert "cut short" in errors["truncated"].message
    assert "corrupt" in errors["corrupt"].message
    assert "inflates to more than" in errors["bomb"].message
    out = io.StringIO()
    records = [
        {"target": {"label": n, "short_label": n}, "kind": e.kind, "error": e.message}
        for n, e in errors.items()
    ]
    style = NetstatStyle(host_column="Host")
    write_stream(out, "netstat", merge_stream(results), style, records)
    lines = out.getvalue().splitlines()
    assert len(lines) == 1 + 400 + 3 and all(line.startswith("honest") for line in lines[1:401])
    assert [line.split()[0] for line in lines[401:]] == ["truncated", "corrupt", "bomb"]


# --------------------------------------------------------------------------- the merge


def _old(results, fmt, sort, style):
    """Today's fleet-wide listing: every row in memory, sorted, then written."""
    merged = merge_flows(results, sort)
    out = io.StringIO()
    errors = []
    write_flows(
        out, fmt, merged.flows, style, merged.targets, errors, merged.names, command="conns"
    )
    return out.getvalue()


def _new(results, fmt, sort, style):
    out = io.StringIO()
    write_stream(out, fmt, merge_stream(results, sort), style, [], command="conns")
    return out.getvalue()


@pytest.mark.parametrize("sort", SORTS)
@pytest.mark.parametrize("numeric", [True, False])
def test_streamed_merge_equals_the_sorted_fleet_table(sort, numeric):
    """Four boxes (two with the same table: every key ties across them), every sort key,
    with and without names: the streamed output is today's, format by format."""
    request = _request(sort, resolve=not numeric)
    plain, packed = _both(request, names=not numeric)
    assert all(isinstance(r, HostResult) for r in plain + packed)
    assert all(isinstance(r.answer.flows, WireRows) for r in packed)
    styles = [
        NetstatStyle(host_column="Host", service_names=not numeric),
        NetstatStyle(host_column="Host", nat_host=True, wide=True, header=False),
    ]
    for style in styles:
        for fmt in ("netstat", "jsonl", "csv"):
            assert _new(packed, fmt, sort, style) == _old(plain, fmt, sort, style), (fmt, style)
    new = json.loads(_new(packed, "json", sort, styles[0]))
    old = json.loads(_old(plain, "json", sort, styles[0]))
    assert new["rows"] == old["rows"] and new["errors"] == old["errors"] == []
    # and in-process boxes (dump files) merge into the same order as compact ones
    flows = [(r.target.name, f.to_json()) for r in plain for f in merge_flows([r]).flows]
    assert len(flows) == 600


def test_merge_keeps_box_order_on_ties_and_the_boxs_own_order():
    request = _request("dst-port")
    _plain_results, packed = _both(request)
    merged = list(merge_stream(packed, "dst-port"))
    twins = [
        (box.index, box.rows.to_flow(row).to_json()) for box, row in merged if box.index in (0, 3)
    ]
    # the same table on box 0 and box 3: each key's box-0 row comes before its box-3 twin
    by_row: dict[str, list[int]] = {}
    for index, row in twins:
        by_row.setdefault(json.dumps(row, sort_keys=True), []).append(index)
    assert all(indices == sorted(indices) for indices in by_row.values())
    assert len(merged) == 600


def test_limit_stops_the_merge_without_decoding_every_row():
    request = _request()
    scripts = {f"box{i}": Script(compact(request, varied_table(i, 20000))) for i in range(4)}
    results = _fleet(scripts, request)
    stream = merge_stream(results, None, limit=10)
    out = io.StringIO()
    write_stream(out, "jsonl", stream, NetstatStyle(), [])
    assert out.getvalue().count("\n") == 10
    decoded = sum(r.answer.flows.decoded for r in results)
    assert decoded <= 4 * agent_wire.BLOCK_ROWS < 80000


class _Watch(io.StringIO):
    """A stdout that notes how many rows the boxes had decoded at each write."""

    def __init__(self, results):
        super().__init__()
        self.results = results
        self.seen = []

    def write(self, text):
        self.seen.append(sum(r.answer.flows.decoded for r in self.results))
        return super().write(text)


@pytest.mark.parametrize("fmt", ["jsonl", "csv", "netstat", "json"])
def test_rows_are_written_before_the_last_rows_are_decoded(fmt):
    """Streaming, not timing: the first write of rows happens while most rows are still
    compressed; memory holds the merge front (a block per box), not the listing."""
    request = _request()
    scripts = {f"box{i}": Script(compact(request, varied_table(10 + i, 20000))) for i in range(4)}
    results = _fleet(scripts, request)
    out = _Watch(results)
    write_stream(out, fmt, merge_stream(results), NetstatStyle(host_column="Host"), [])
    assert out.getvalue().count("\n") >= 80000
    rows_written = [n for n in out.seen if n]
    assert rows_written[0] < 40000 and len(rows_written) > 4


@pytest.mark.parametrize("module", [agent_wire, answer_wire, render_stream], ids=str)
def test_docstring_examples_run(module):
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0


# --------------------------------------------------------------------------- the rest


def test_summary_and_info_answers_come_compressed_and_check_the_same():
    table = varied_table(4, 300)
    sources = agent.DumpSources({agent.TABLE_PROC: table})
    for mode in ("summary", "info"):
        request = {"mode": mode}
        data = b"".join(agent.answer_bytes({**request, "encoding": "compact"}, sources))
        assert data[:1] == b"\x78"
        packed, plain = (
            _fleet({"z": Script(data, chunk=1)}, request),
            _fleet({"p": Script(wire(agent.handle(request, sources)), chunk=1)}, request),
        )
        assert isinstance(packed[0], HostResult) and isinstance(plain[0], HostResult)
        mine, theirs = packed[0].answer.to_json(), plain[0].answer.to_json()
        for timing in ("seconds", "cpu"):  # how long each run took: not the answer's content
            mine.pop(timing, None), theirs.pop(timing, None)
        assert mine == theirs


def test_what_a_box_is_asked_and_how_in_process_targets_answer(tmp_path):
    assert fleet.remote_request({"mode": "summary"})["encoding"] == "compact"
    assert fleet.remote_request({"mode": "info"})["encoding"] == "compact"
    assert "encoding" not in fleet.remote_request({"mode": "check"})  # its own format
    assert fleet.remote_request({"mode": "list", "encoding": "json"})["encoding"] == "json"
    path = tmp_path / "table.txt"
    path.write_text(varied_table(8, 500))
    request = _request("dst")
    result = fleet.run_one(Target(name="dump", kind="file", path=str(path)), request)
    assert isinstance(result, HostResult) and result.answer.ordered
    rows = agent.handle(request, agent.DumpSources(table_file=str(path)))["rows"]
    assert [f.to_json() for f in result.answer.flows] == rows
    bad = fleet.run_one(Target(name="dump", kind="file", path=str(path)), {"sort": "bogus"})
    assert isinstance(bad, HostError) and bad.kind == "bad_request"


def test_a_box_whose_rows_stop_decoding_mid_merge_is_said_and_its_rows_left_out(capsys):
    """Rows are checked at receipt; should the kept bytes stop decoding later (a bug), the
    box becomes an error row after the rows printed so far, in every format."""
    request = _request()
    scripts = {f"box{i}": Script(compact(request, varied_table(20 + i, 9000))) for i in range(3)}
    results = _fleet(scripts, request)
    broken = results[1].answer.flows
    broken._chunks = broken._chunks[: len(broken._chunks) // 2]  # noqa: SLF001
    for fmt in ("jsonl", "csv", "netstat"):
        broken.decoded = 0
        stream = merge_stream(results)
        out = io.StringIO()
        write_stream(out, fmt, stream, NetstatStyle(host_column="Host"), [])
        assert [e.target.name for e in stream.late] == ["box1"]
        message = stream.late[0].message
        assert "rows after those were left out" in message and "cut short" in message
        text = out.getvalue()
        assert text.count("box0") >= 9000 and text.count("box2") >= 9000
        if fmt == "jsonl":
            assert json.loads(text.splitlines()[-1])["kind"] == "answer"
        elif fmt == "csv":
            assert "rows after those were left out" in capsys.readouterr().err
        else:
            assert text.splitlines()[-1].startswith("box1") and "ERROR answer" in text


def test_conns_command_streams_a_fleet_of_dump_files(tmp_path, capsys):
    from natfleet.cli import main

    paths = []
    for i in range(3):
        path = tmp_path / f"box{i}.txt"
        path.write_text(varied_table(30 + i, 400))
        paths.append(str(path))
    argv = ["conns", "-n", "-r", "dst-port", *(a for p in paths for a in ("--input", p))]
    assert main([*argv, "--format", "jsonl"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert {r["target"]["short_label"] for r in rows} == {"box0.txt", "box1.txt", "box2.txt"}
    flows = [agent.Flow.from_json({k: v for k, v in r.items() if k not in ("status", "target")})
             for r in rows]  # fmt: skip
    keys = [agent.sort_key("dst-port")(f) for f in flows]
    assert keys == sorted(keys)
    assert main([*argv, "--limit", "7"]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 1 + 7


@pytest.mark.parametrize("columns", ["60", "400"])
def test_netstat_fitted_to_a_terminal_width_as_before(monkeypatch, columns):
    """COLUMNS (a terminal's width): the address columns narrow to the widest row when a
    row would not fit, measured in a first pass; the text is today's."""
    monkeypatch.setenv("COLUMNS", columns)
    request = _request("src-port", resolve=True)
    plain, packed = _both(request, names=True)
    for style in (
        NetstatStyle(host_column="Host"),
        NetstatStyle(host_column="Host", nat_host=True, service_names=True),
    ):
        assert _new(packed, "netstat", "src-port", style) == _old(
            plain, "netstat", "src-port", style
        )
