"""Merging boxes' checked answers: fleet-wide order, totals, failures kept."""

from __future__ import annotations

from natfleet.aggregate import (
    count_lines,
    fleet_total,
    merge_flows,
    summary_json,
    summary_record,
)
from natfleet.answer import check_answer
from natfleet.models import HostError, HostResult, Target
from tests.boxes import answer


def result(name: str, mode: str, **request) -> HostResult:
    checked = check_answer(name, {"mode": mode, **request}, answer(mode, **request))
    return HostResult(Target(name=name, host="198.51.100.7"), checked)


def test_fleet_sorting_is_numeric_across_boxes_ties_in_box_order():
    a, b = result("a", "list"), result("b", "list")
    merged = merge_flows([a, b], sort="src")
    sources = [f.osrc for f in merged.flows]
    assert sources.index("192.168.1.2") < sources.index("192.168.1.10")
    assert len(merged.flows) == 2 * len(a.answer.flows)
    pairs = list(zip(sources, [t["name"] for t in merged.targets]))
    first_b = {s: pairs.index((s, "b")) for s, _ in pairs}
    assert all(pairs.index((s, "a")) < first_b[s] for s, _ in pairs)
    assert merged.head(3).flows == merged.flows[:3] and len(merged.head(3).names) == 3


def test_each_row_carries_its_own_boxs_names():
    a = result("a", "list")
    a.answer.names = {a.answer.flows[0].odst: "a-name.example"}
    b = result("b", "list")
    merged = merge_flows([a, b])
    for where, names in zip(merged.targets, merged.names):
        assert names is (a.answer.names if where["name"] == "a" else b.answer.names)


def test_total_sums_boxes_and_counts_failures():
    ok = result("a", "summary")
    failed = HostError(Target(name="b", host="198.51.100.8"), "refused", kind="connect")
    total = fleet_total([ok, ok, failed])
    assert total is not None and total["flows"] == 22
    stats = ok.answer.facts.stats or {}
    for key in ("insert_failed", "drop", "early_drop"):  # each its own plain column
        assert total[key] == 2 * stats[key]
    assert total["drops"] == 2 * sum(stats[k] for k in ("insert_failed", "drop", "early_drop"))
    assert total["failed"] == 1 and total["target"] == "TOTAL (2/3)"
    assert summary_record(failed)["error"] == "connect: refused"
    assert summary_record(failed)["error_kind"] == "connect"
    record = summary_record(ok)
    assert (record["snat"], record["dnat"]) == (
        ok.answer.summary.by_nat["snat"] + ok.answer.summary.by_nat["snat+dnat"],
        ok.answer.summary.by_nat["dnat"] + ok.answer.summary.by_nat["snat+dnat"],
    )


def test_no_box_answered_is_no_total_and_no_counts():
    failed = HostError(Target(name="b", host="198.51.100.8"), "refused", kind="connect")
    assert fleet_total([failed, failed]) is None and count_lines([failed, failed]) == []


def test_summary_record_is_plain_values_with_the_worst_pressure_split():
    ok = result("a", "summary")
    record = summary_record(ok)
    for value in record.values():
        assert value is None or isinstance(value, (str, int, float)), value
    worst = ok.answer.summary.port_pressure[0]
    assert (record["pressure_nat_ip"], record["pressure_dst"], record["pressure_dport"]) == (
        worst.nat_ip, worst.dst, worst.dport)  # fmt: skip
    assert (record["pressure_ports"], record["pressure_pct"]) == (worst.ports, worst.pct)
    address, flows = ok.answer.summary.top_sources[0]
    assert (record["top_source"], record["top_source_flows"]) == (address, flows)
    assert record["fill_pct"] == ok.answer.summary.fill_pct


def test_counts_are_asa_style_per_box_and_for_the_fleet():
    a, b = result("a", "summary"), result("b", "summary")
    facts = a.answer.facts
    lines = count_lines([a, b])
    assert lines[0] == f"a: {facts.count:,} in use of {facts.max:,}"
    assert lines[-1] == f"fleet: {2 * facts.count:,} in use of {2 * facts.max:,} on 2 boxes"
    assert count_lines([a]) == lines[:1]  # one box: no fleet line


def test_summary_json_is_the_checked_answer():
    ok = result("a", "summary")
    failed = HostError(Target(name="b", host="198.51.100.8"), "refused", kind="connect")
    data = summary_json([ok, failed])
    assert data["rows"][0]["summary"] == answer("summary")["summary"]
    assert data["rows"][0]["target"]["name"] == "a" and data["total"]["flows"] == 11
    assert data["rows"][0]["target"]["short_label"] == "a"
    assert [e["kind"] for e in data["errors"]] == ["connect"]
