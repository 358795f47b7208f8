"""natfleet check on real broken NAT boxes (natfleet.lab.faults: one planted fault per box,
real sshd and traffic, its own moto server), and on the healthy shared lab (read only).

    $ sudo .venv/bin/python -m pytest -q tests/test_faults.py
"""

from __future__ import annotations

import json

import pytest

from natfleet.errors import ExitCode
from natfleet.lab.faults import AWS_FAULTS, FAULTS, FaultLab
from tests.test_check import run_cli

pytestmark = pytest.mark.lab


@pytest.fixture(scope="module")
def faults():
    from tests.conftest import need_lab

    need_lab()
    with FaultLab(lifetime=900) as lab:
        yield lab


def _check_json(monkeypatch, capsys, env, *extra):
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    code, out, err = run_cli(["check", "--format", "json", *extra], capsys)
    return code, json.loads(out), err


def test_every_planted_fault_is_named_on_exactly_its_box(faults, monkeypatch, capsys):
    code, doc, _err = _check_json(monkeypatch, capsys, faults.env())
    assert doc["errors"] == []
    assert code == ExitCode.FINDINGS
    by_box: dict[str, dict[str, str]] = {}
    for row in doc["rows"]:
        by_box.setdefault(row["target"]["short_label"], {})[row["id"]] = row["severity"]
        assert row["advice"] and row["evidence"]
    planted = {box.name: fault.finding for box, fault in zip(faults.boxes, FAULTS)}
    for box, finding_id in planted.items():
        if finding_id is None:
            assert not {s for s in by_box.get(box, {}).values() if s != "info"}, by_box[box]
            continue
        holders = [name for name, found in by_box.items() if finding_id in found]
        assert holders == [box], (finding_id, holders)
        assert by_box[box][finding_id] == "critical"
    for subject, finding_id in AWS_FAULTS:
        holders = [name for name, found in by_box.items() if finding_id in found]
        expected = faults.instances.get("nffault-gone") if subject == "nffault-gone" else subject
        assert holders == [expected], (finding_id, holders)
    fill = by_box["nffault5"]
    assert fill["conntrack-fill-critical"] == "critical"
    [row] = [r for r in doc["rows"] if r["id"] == "conntrack-fill-critical"]
    assert row["evidence"]["fill_pct"] > 95 and row["evidence"]["count"] >= faults.filled * 0.95
    [ports] = [r for r in doc["rows"] if r["id"] == "port-pressure"]
    assert (ports["evidence"]["ports"], ports["evidence"]["pct"]) == (30, 93.75)


def test_named_boxes_over_ssh_and_the_fail_on_levels(faults, monkeypatch, capsys):
    healthy = faults.box_of("healthy")
    env = {k: v for k, v in faults.env().items() if not k.startswith("AWS")}
    code, doc, _err = _check_json(monkeypatch, capsys, env, "--host", healthy.mgmt_ip)
    assert code == ExitCode.OK and doc["errors"] == []
    assert {r["severity"] for r in doc["rows"]} <= {"info"}
    forwarding = faults.box_of("forwarding")
    code, doc, _err = _check_json(
        monkeypatch, capsys, env, "--host", forwarding.mgmt_ip, "--interval", "1"
    )
    assert code == ExitCode.FINDINGS and doc["interval"] >= 1
    assert [r["id"] for r in doc["rows"] if r["severity"] == "critical"] == ["forwarding-off"]
    code, _doc, _err = _check_json(
        monkeypatch, capsys, env, "--host", forwarding.mgmt_ip, "--fail-on", "never"
    )
    assert code == ExitCode.OK
    code, doc, _err = _check_json(
        monkeypatch, capsys, env, "--host", forwarding.mgmt_ip, "--host", "198.19.252.99",
        "--timeout", "3",
    )  # fmt: skip
    assert code == ExitCode.PARTIAL and len(doc["errors"]) == 1  # a box error wins over 4


def test_the_healthy_shared_lab_exits_0(lab, monkeypatch, capsys):
    state = lab
    code, doc, _err = _check_json(monkeypatch, capsys, state.env())
    assert doc["errors"] == [] and code == ExitCode.OK
    assert {r["severity"] for r in doc["rows"]} <= {"warning", "info"}
    boxes = {s["target"]["short_label"] for s in doc["subjects"] if s["subject"] == "box"}
    assert {box.name for box in state.boxes} <= boxes
