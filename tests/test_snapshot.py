"""snapshot -o, --input SNAPSHOT and diff A B, on saved tables (no lab needed)."""

from __future__ import annotations

import gzip
import json
import os
import shutil
from pathlib import Path

import pytest

from natfleet import api, cli
from natfleet.diff import diff_snapshots
from natfleet.snapshot import SnapshotError, read_snapshot, take, write_snapshot

DATA = os.path.join(os.path.dirname(__file__), "data", "watch")


def _snap(tmp_path, table: str, name: str) -> str:
    box = tmp_path / "box.txt"
    shutil.copy(os.path.join(DATA, table), box)
    targets, _ = api.resolve_targets(inputs=[str(box)])
    path = str(tmp_path / name)
    write_snapshot(path, take(targets))
    return path


def test_snapshot_round_trip_and_offline_refilter(tmp_path, capsys):
    path = _snap(tmp_path, "before.txt", "a.snap.gz")
    assert [f.name for f in tmp_path.iterdir() if f.name.startswith(".")] == []  # no temp left
    snap = read_snapshot(path)
    [box] = snap.boxes
    assert len(box.answer.flows) == 4 and box.summary.flows == 4  # every NAT kind is saved
    assert box.found_by == "--input" and box.time.endswith("Z")
    assert cli.main(["conns", "-n", "--input", path, "-p", "udp", "--format", "json"]) == 0
    rows = json.loads(capsys.readouterr().out)["rows"]
    assert [(r["proto"], r["orig"]["sport"]) for r in rows] == [("udp", 5353)]
    assert cli.main(["conns", "-n", "-R", "--input", path, "--format", "jsonl"]) == 0
    [routed] = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert routed["nat"] == "routed" and routed["orig"]["dport"] == 22


def test_diff_lists_exactly_the_flows_added_removed_and_changed(tmp_path, capsys):
    a = _snap(tmp_path, "before.txt", "a.snap.gz")
    b = _snap(tmp_path, "after.txt", "b.snap.gz")
    [box] = diff_snapshots(read_snapshot(a), read_snapshot(b))
    kinds = sorted((c.kind, c.flow.proto, c.flow.osp) for c in box.changes)
    assert kinds == [("changed", "tcp", "40000"), ("gone", "udp", "5353"), ("new", "icmp", "77")]
    assert cli.main(["diff", a, b, "--format", "json"]) == 0
    [row] = json.loads(capsys.readouterr().out)["rows"]
    assert [item["flow"]["proto"] for item in row["new"]] == ["icmp"]
    assert row["changed"][0]["old"]["state"] == "SYN_SENT"
    assert row["changed"][0]["flow"]["state"] == "ESTABLISHED"
    assert cli.main(["diff", a, b]) == 0
    text = capsys.readouterr().out
    assert "SYN_SENT > ESTABLISHED" in text and "gone" in text


def test_truncated_or_corrupt_snapshots_are_clear_errors(tmp_path, capsys):
    good = _snap(tmp_path, "before.txt", "a.snap.gz")
    data = Path(good).read_bytes()
    cut = tmp_path / "cut.snap.gz"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(SnapshotError, match="truncated"):
        read_snapshot(str(cut))
    flipped = bytearray(data)
    flipped[len(data) // 2] ^= 0xFF
    bad = tmp_path / "bad.snap.gz"
    bad.write_bytes(bytes(flipped))
    with pytest.raises(SnapshotError, match="corrupt|truncated"):
        read_snapshot(str(bad))
    lines = gzip.decompress(data).splitlines(keepends=True)
    no_end = tmp_path / "noend.snap.gz"
    no_end.write_bytes(gzip.compress(b"".join(lines[:-1])))
    with pytest.raises(SnapshotError, match="no end record"):
        read_snapshot(str(no_end))
    assert cli.main(["diff", good, str(cut)]) == 1
    assert "is truncated" in capsys.readouterr().err


def test_a_snapshot_is_untrusted_input(tmp_path):
    good = _snap(tmp_path, "before.txt", "a.snap.gz")
    lines = gzip.decompress(Path(good).read_bytes()).splitlines(keepends=True)
    hostile = [line.replace(b'"198.18.90.70"', b'"\\u001b[2J"', 1) for line in lines]
    path = tmp_path / "hostile.snap.gz"
    path.write_bytes(gzip.compress(b"".join(hostile)))
    with pytest.raises(SnapshotError, match="corrupt.*IP address"):
        read_snapshot(str(path))
