"""Spreading a big table over worker processes gives exactly what one process gives."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from natfleet import agent
from natfleet.render import NetstatStyle, netstat_row
from tests.conftest import DATA


@pytest.fixture
def table(tmp_path, monkeypatch):
    """3,000+ real-shaped lines with malformed ones spread through, in many small blocks."""
    monkeypatch.setattr(agent, "BLOCK_CHARS", 4096)
    # an earlier test's name lookup thread may still be asleep; the agent would then stay in
    # one process (fork is only safe without threads) and these tests prove nothing
    monkeypatch.setattr(agent.threading, "active_count", lambda: 1)
    good = [p.read_text() for p in sorted((DATA / "lines").glob("*.txt"))]
    bad = [
        p.read_text(encoding="ascii", errors="replace")
        for p in sorted((DATA / "malformed").glob("*.txt"))
    ]
    lines = []
    for i in range(3000):
        line = good[i % len(good)]
        lines.append(line.replace("sport=40000", f"sport={10000 + i}"))
        if i % 97 == 0:
            lines.append(bad[(i // 97) % len(bad)])
    path = tmp_path / "table.txt"
    path.write_text("".join(lines))
    return str(path)


def test_parallel_summary_equals_one_process(table):
    answers = [
        agent.handle({"mode": "summary", "jobs": jobs}, agent.DumpSources(table_file=table))
        for jobs in (1, 3)
    ]
    for answer in answers:
        answer.pop("seconds")
        answer.pop("cpu")
    one, three = answers
    assert one["malformed"]["count"] == 31
    assert one == three


def test_parallel_listing_equals_one_process(table):
    style = NetstatStyle(nat_host=True)
    key = agent.sort_key("dst-port")

    def project(flow):
        return key(flow), netstat_row(flow, style)

    results = []
    for jobs in (1, 2):
        request = agent.Request({"mode": "list", "jobs": jobs, "sort": "dst-port"})
        answer, pairs = agent.run(request, agent.DumpSources(table_file=table), project)
        results.append((answer["lines"], answer["malformed"], [p[1] for p in pairs]))
    assert results[0] == results[1]
    assert len(results[0][2]) > 1000


def test_one_process_when_other_threads_run(monkeypatch):
    request = agent.Request({"mode": "summary", "jobs": 4})
    # (an earlier test's lookup thread may still be asleep: say how many threads there are)
    monkeypatch.setattr(agent.threading, "active_count", lambda: 1)
    assert agent.workers_for(request, 10**6) == 4
    monkeypatch.setattr(agent.threading, "active_count", lambda: 2)
    assert agent.workers_for(request, 10**6) == 1


def test_small_tables_and_unprojected_listings_stay_in_one_process():
    assert agent.workers_for(agent.Request({"mode": "summary"}), 1000) == 1
    assert agent.workers_for(agent.Request({"mode": "list"}), 10**6) == 1


def test_a_worker_that_dies_is_an_error_not_a_short_answer(table, monkeypatch):
    def die(self, first, text):
        os._exit(3)

    monkeypatch.setattr(agent.Tally, "feed_text", die)
    answer = agent.handle({"mode": "summary", "jobs": 2}, agent.DumpSources(table_file=table))
    assert answer["ok"] is False
    assert answer["error"]["kind"] == "agent"
    assert "--jobs 1" in answer["error"]["message"]


def test_parallel_summary_leaves_out_the_own_session_like_one_process(table, tmp_path):
    """The own session's entry is left out by whichever worker reads it."""
    session = (DATA / "own-session" / "proc/net/nf_conntrack").read_text().splitlines()[0]
    lines = Path(table).read_text().splitlines(True)
    for at in (5, len(lines) // 2, len(lines) - 1):  # in several blocks (a test table)
        lines.insert(at, session + "\n")
    path = tmp_path / "with-session.txt"
    path.write_text("".join(lines))
    files = {
        "/proc/self/stat": "77 (python3) S 70 77 77 0\n",
        "/proc/70/stat": "70 (sshd) S 1 70 70 0\n",
        "/proc/70/fd/3": "socket:[466027]",
        "/proc/net/tcp": (DATA / "own-session" / "proc/net/tcp").read_text(),
    }
    answers = []
    for jobs in (1, 3):
        sources = agent.DumpSources(files, table_file=str(path))
        answer = agent.handle({"mode": "summary", "jobs": jobs}, sources, skip_own=True)
        answer.pop("seconds")
        answer.pop("cpu")
        answers.append(answer)
    assert answers[0]["own_flows"] == 3 and answers[0]["own_session"]["sport"] == 41704
    plain = agent.handle({"mode": "summary"}, agent.DumpSources(table_file=table))
    assert answers[0]["summary"]["flows"] == plain["summary"]["flows"]
    assert answers[0] == answers[1]
