"""The trust boundary: a box's answer is checked into typed records, or it is that box's error."""

from __future__ import annotations

import copy
import json

import pytest

from natfleet.answer import AnswerError, AnswerReader, check_row
from natfleet.errors import TargetError
from tests.boxes import answer, wire
from tests.conftest import DATA

LIST = {"mode": "list"}
SUMMARY = {"mode": "summary"}


def read(data: bytes, request: dict = LIST, cap: int = 1 << 24, chunk: int = 0, **kw):
    reader = AnswerReader("nat-a", request, cap, **kw)
    step = chunk or len(data) or 1
    for i in range(0, len(data), step):
        reader.feed(data[i : i + step])
    return reader.finish()


def test_an_honest_listing_becomes_the_agents_own_rows():
    honest = answer("list")
    checked = read(wire(honest))
    assert [f.to_json() for f in checked.flows] == honest["rows"]
    assert checked.facts.hostname == honest["hostname"]
    assert checked.matched == honest["matched"] and checked.summary is None


def test_byte_by_byte_is_the_same_as_all_at_once():
    data = wire(answer("list"))
    whole, drip = read(data), read(data, chunk=1)
    assert [f.to_json() for f in whole.flows] == [f.to_json() for f in drip.flows]


def test_an_honest_summary_is_typed():
    honest = answer("summary")
    checked = read(wire(honest), SUMMARY)
    assert checked.summary is not None
    assert checked.summary.to_json() == honest["summary"]
    assert checked.facts.stats == honest["stats"]
    assert checked.facts.port_range == tuple(honest["port_range"])


def _mutate(mode: str, path: str, value):
    data = copy.deepcopy(answer(mode))
    keys = path.split(".")
    node = data
    for key in keys[:-1]:
        node = node[int(key)] if isinstance(node, list) else node[key]
    last = keys[-1]
    if isinstance(node, list):
        node[int(last)] = value
    else:
        node[last] = value
    return data


HOSTILE_HEADERS = [
    ("summary", "summary.by_nat.snat", "4", "summary.by_nat.snat"),
    ("summary", "summary.fill_pct", "x", "summary.fill_pct"),
    ("summary", "summary.fill_pct", "1e400", "summary.fill_pct"),  # a float that is inf
    ("summary", "summary.flows", -1, "summary.flows"),
    ("summary", "summary.flows", True, "summary.flows"),
    ("summary", "summary.top_sources", [["not-an-address", 3]], "summary.top_sources"),
    ("summary", "summary.by_state", {"tcp:\x1b[2J": 1}, "summary.by_state"),
    ("summary", "port_range", ["a", "b"], "port_range"),
    ("summary", "port_range", [60999, 1024], "port_range"),
    ("summary", "count", "3", "count"),
    ("summary", "stats", {"drop": "0"}, "stats.drop"),
    ("summary", "ena", {"eth0\n": {"pps_allowance_exceeded": 1}}, "ena interface"),
    ("summary", "ena", {"eth0": {"made_up": 1}}, "ena.eth0 key"),
    ("summary", "addresses", ["198.51.100.1", "\u202e1.1.1.1"], "addresses"),
    ("summary", "hostname", "h" * 300, "hostname"),
    ("summary", "summary", None, "summary"),
    ("summary", "agent", 1, "agent"),
    ("summary", "ok", "yes", "ok"),
    ("list", "rows.0.proto", None, "rows[0].proto"),
    ("list", "rows.0.state", {"x": 1}, "rows[0].state"),
    ("list", "rows.0.nat", "masquerade", "rows[0].nat"),
    (
        "list",
        "rows.0.orig",
        {"src": "192.0.2.1", "dst": "203.0.113.5", "sport": -1, "dport": 1},
        "rows[0].orig.sport",
    ),
    ("list", "rows.0.flags", ["ASSURED", "PWNED"], "rows[0].flags"),
    ("list", "rows.0.l3", "ipv6", "rows[0].orig.src"),
]


@pytest.mark.parametrize("mode, path, value, named", HOSTILE_HEADERS)
def test_a_field_that_does_not_check_is_an_answer_error_naming_it(mode, path, value, named):
    data = wire(_mutate(mode, path, value)).replace(b'"1e400"', b"1e400")
    with pytest.raises(AnswerError) as err:
        read(data, {"mode": mode})
    assert err.value.kind == "answer"
    assert named in str(err.value)
    assert len(str(err.value)) < 300  # the bad value is described, never quoted whole


@pytest.mark.parametrize(
    "data, words",
    [
        (b"y\ny\ny\n", "not JSON"),
        (b'{"agent":2,"ok":true,"count":NaN}\n', "NaN is not a number"),
        (b'{"agent":2,"ok":true,"count":-Infinity}\n', "-Infinity is not a number"),
        (b"[" * 100_000 + b"]" * 100_000 + b"\n", "nested too deeply"),
        (b"\xff\xfe{}\n", "not UTF-8"),
        (b"\n{}\n", "empty line"),
        (b"[1, 2]\n", "expected a JSON object"),
        (b"", "answered nothing"),
    ],
)
def test_framing_errors(data, words):
    with pytest.raises(AnswerError, match=words):
        read(data)


def test_caps_stop_reading_at_once():
    reader = AnswerReader("nat-a", LIST, cap=1000, line_cap=100)
    with pytest.raises(AnswerError, match="longer than 100 bytes"):
        reader.feed(b'{"agent":2,' + b" " * 200)
    reader = AnswerReader("nat-a", LIST, cap=1000)
    reader.feed(b"x" * 999)
    with pytest.raises(AnswerError, match="larger than the cap of 1,000 bytes for a list"):
        reader.feed(b"xx")


def test_row_counts_must_match_the_header():
    honest = answer("list")
    data = wire(honest)
    with pytest.raises(AnswerError, match="cut short"):
        read(data[: data.rindex(b"\n", 0, len(data) - 1) + 1])
    with pytest.raises(AnswerError, match="more lines than the answer's header announced"):
        read(data + data.splitlines(keepends=True)[1])
    five = json.loads(data.split(b"\n")[0])
    five["rows"] = "5"
    with pytest.raises(AnswerError, match="rows: expected an integer"):
        read(json.dumps(five).encode() + b"\n")
    with pytest.raises(AnswerError, match="rows: expected none in a summary answer"):
        read(data, SUMMARY)


def test_a_limit_bounds_the_rows_a_box_may_announce():
    honest = answer("list")
    with pytest.raises(AnswerError, match="rows: expected an integer 0..1"):
        read(wire(honest), {"mode": "list", "limit": 1})


def test_ok_false_keeps_a_known_kind_and_caps_the_message():
    failure = {"agent": 2, "ok": False, "error": {"kind": "permission", "message": "be root"}}
    with pytest.raises(TargetError) as err:
        read(wire(failure))
    assert (err.value.kind, str(err.value)) == ("permission", "be root")
    failure["error"] = {"kind": "\x1b[2Jhostkey", "message": "m" * 50_000_000}
    with pytest.raises(AnswerError) as err:
        read(wire(failure), line_cap=1 << 27, cap=1 << 27)
    assert err.value.kind == "answer" and len(str(err.value)) < 2200
    assert "unknown error kind" in str(err.value)


def test_names_apply_only_to_the_boxs_own_rows_and_only_when_asked():
    honest = answer("list")
    own = honest["rows"][0]["orig"]["dst"]
    honest["names"] = {own: "www.example"}
    assert read(wire(honest), {"mode": "list", "resolve": True}).names == {own: "www.example"}
    assert read(wire(honest), {"mode": "list", "resolve": False}).names == {}
    for names, words in (
        ({"203.0.113.250": "not-in-my-rows.example"}, "names: expected names for addresses"),
        ({own: "192.0.2.99"}, "a host name"),  # a name posing as an address
        ({own: "evil\x1b[2J"}, "a host name"),
    ):
        honest["names"] = names
        with pytest.raises(AnswerError, match=words):
            read(wire(honest), {"mode": "list", "resolve": True})


@pytest.mark.parametrize("field", ["hostname", "source", "warnings", "malformed", "error"])
def test_free_text_must_be_printable_as_the_agent_writes_it(field):
    from natfleet import agent

    bad = "x\x1b]52;c;SGVsbG8=\x07\u202e\nnflab-box1 tcp"
    data = answer("summary")
    if field == "error":
        data = {"agent": 2, "ok": False, "error": {"kind": "agent", "message": bad}}
    elif field == "warnings":
        data["warnings"] = [bad]
    elif field == "malformed":
        data["malformed"] = {"count": 1, "examples": [{"line": 1, "text": bad}]}
    else:
        data[field] = bad
    with pytest.raises(AnswerError, match="printable text"):
        read(wire(data), SUMMARY)
    cleaned = read(wire(agent.printable_answer(data)), SUMMARY) if field != "error" else None
    if cleaned is not None:  # the agent's own escaping makes the same text acceptable
        assert "\\x1b" in json.dumps(cleaned.to_json())


def test_check_row_canonicalises_and_copies():
    row = {
        "proto": "tcp",
        "l3": "ipv6",
        "state": "ESTABLISHED",
        "nat": "snat",
        "orig": {"src": "2001:db8:0:0:0:0:0:10", "dst": "2001:db8::5", "sport": 1, "dport": 2},
        "reply": {"src": "2001:db8::5", "dst": "2001:db8::1", "sport": 2, "dport": 3},
    }
    flow = check_row(row)
    assert flow.osrc == "2001:db8::10" and row["orig"]["src"] == "2001:db8:0:0:0:0:0:10"
    assert flow.to_json()["flags"] == []


@pytest.mark.parametrize("path", sorted((DATA / "lines").glob("*.txt")), ids=lambda p: p.stem)
def test_every_real_line_survives_the_boundary_unchanged(path):
    """Each kernel line's row (tests/data/lines) comes out of the compact checked flow as the
    agent made it: every key, tuple kind and optional counter."""
    from natfleet import agent

    honest = agent.handle(
        {"mode": "list", "filters": {"nat": list(agent.NAT_KINDS)}},
        agent.DumpSources(table_file=str(path)),
    )
    assert honest["ok"] and honest["rows"], honest
    checked = read(wire(honest), {"mode": "list"})
    assert [f.to_json() for f in checked.flows] == honest["rows"]
    assert [f.display_state() for f in checked.flows] == [
        agent.Flow.from_json(row).display_state() for row in honest["rows"]
    ]


def test_own_session_is_checked_and_kept():
    honest = answer("summary")
    honest["own_session"] = {
        "src": "198.19.255.1", "sport": 40000, "dst": "198.19.255.11", "dport": 22, "proto": "tcp"
    }  # fmt: skip
    honest["own_flows"] = 1
    checked = read(wire(honest), SUMMARY)
    assert checked.own_flows == 1 and checked.own_session.dport == 22
    assert checked.to_json()["own_session"] == honest["own_session"]
    honest["own_session"]["proto"] = "udp"
    with pytest.raises(AnswerError, match="own_session.proto"):
        read(wire(honest), SUMMARY)
    honest["own_session"] = None
    honest["own_flows"] = -1
    with pytest.raises(AnswerError, match="own_flows"):
        read(wire(honest), SUMMARY)


def test_every_failure_kind_natfleet_raises_is_listed_and_documented():
    """models.FAILURE_KINDS is the one list: every kind the transport, the boundary, the
    fleet and the agent give a failed box is in it, and docs/json.md documents each."""
    import re
    from pathlib import Path

    from natfleet.models import FAILURE_KINDS

    root = Path(__file__).resolve().parents[1]
    raised = set()
    for name in ("ssh.py", "remote.py", "answer.py", "fleet.py"):
        for line in (root / "natfleet" / name).read_text().splitlines():
            if "Target(" not in line:  # a target's own kind (ssh, local, file) is no failure
                raised |= set(re.findall(r'kind="([a-z_]+)"', line))
    raised |= set(
        re.findall(r'AgentError\(\s*"([a-z_]+)"', (root / "natfleet/agent.py").read_text())
    )
    assert raised and raised <= set(FAILURE_KINDS), raised - set(FAILURE_KINDS)
    docs = (root / "docs" / "json.md").read_text()
    assert [k for k in FAILURE_KINDS if f"`{k}`" not in docs] == []
