"""Compare two snapshots box by box: flows new, gone and changed, and how the box moved.

Boxes are matched by instance ID, else by host, else by name. Flows are matched by their
original tuple and zone (as ``watch`` keys them): in B only is ``new``, in A only ``gone``,
in both with another status ``changed``, with another NAT host (reply tuple) ``nat``.

Example:
    >>> a, b = read_snapshot("monday.snap.gz"), read_snapshot("tuesday.snap.gz")
    >>> [d.label for d in diff_snapshots(a, b)]
    ['nat-a (i-0abc)']
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from natfleet.agent import Flow
from natfleet.aggregate import INCIDENT, target_json
from natfleet.answer import PortPressure, Summary
from natfleet.models import Target
from natfleet.snapshot import Snapshot, SnapshotBox

CHANGE_KINDS = ("new", "gone", "changed", "nat")


@dataclass
class FlowChange:
    kind: str  # new | gone | changed | nat
    flow: Flow  # B's flow (A's for gone)
    old: Optional[Flow] = None  # A's flow, for changed and nat


@dataclass
class BoxDiff:
    """What changed on one box between snapshot A and snapshot B."""

    target: Target
    in_a: bool
    in_b: bool
    time_a: Optional[str] = None
    time_b: Optional[str] = None
    error: Optional[str] = None
    flows_a: Optional[int] = None
    flows_b: Optional[int] = None
    fill_a: Optional[float] = None
    fill_b: Optional[float] = None
    counters: dict[str, Optional[int]] = field(default_factory=dict)
    pressure: list[dict[str, Any]] = field(default_factory=list)
    changes: list[FlowChange] = field(default_factory=list)

    @property
    def label(self) -> str:
        return self.target.label

    def count(self, kind: str) -> int:
        return sum(1 for c in self.changes if c.kind == kind)


def flow_key(flow: Flow) -> tuple[Any, ...]:
    """A flow's original tuple and zone."""
    zone = flow.to_json().get("zone", 0)
    return (flow.proto, flow.osrc, flow.odst, flow.osp, flow.odp, zone)


def _box_key(target: Target) -> tuple[str, str]:
    if target.instance_id:
        return ("id", target.instance_id)
    return ("host", target.host or target.name)


def _pressure(summary: Optional[Summary]) -> dict[tuple[str, str, int, str], int]:
    if summary is None:
        return {}
    return {(p.nat_ip, p.dst, p.dport, p.proto): p.ports for p in summary.port_pressure}


def _pct(p: dict[tuple[str, str, int, str], PortPressure], key: Any) -> Optional[float]:
    found = p.get(key)
    return found.pct if found is not None else None


def diff_box(a: Optional[SnapshotBox], b: Optional[SnapshotBox]) -> BoxDiff:
    """One box's changes (a box in one snapshot only has no flow changes)."""
    either = b or a
    assert either is not None
    diff = BoxDiff(either.target, a is not None, b is not None)
    diff.time_a = a.time if a else None
    diff.time_b = b.time if b else None
    errors = [
        f"{side}: {x.error.kind}: {x.error.message}"
        for side, x in (("A", a), ("B", b))
        if x and x.error
    ]
    diff.error = "; ".join(errors) or None
    if a is None or b is None or a.answer is None or b.answer is None:
        return diff
    sa, sb = a.summary, b.summary
    diff.flows_a, diff.flows_b = len(a.answer.flows), len(b.answer.flows)
    diff.fill_a = sa.fill_pct if sa else None
    diff.fill_b = sb.fill_pct if sb else None
    stats_a, stats_b = a.answer.facts.stats or {}, b.answer.facts.stats or {}
    for name in INCIDENT:
        va, vb = stats_a.get(name), stats_b.get(name)
        diff.counters[name] = vb - va if va is not None and vb is not None else None
    pa, pb = _pressure(sa), _pressure(sb)
    full_a = {(p.nat_ip, p.dst, p.dport, p.proto): p for p in (sa.port_pressure if sa else ())}
    full_b = {(p.nat_ip, p.dst, p.dport, p.proto): p for p in (sb.port_pressure if sb else ())}
    for key in sorted(set(pa) | set(pb)):
        if pa.get(key) != pb.get(key):
            nat_ip, dst, dport, proto = key
            diff.pressure.append(
                {
                    "nat_ip": nat_ip, "dst": dst, "dport": dport, "proto": proto,
                    "ports_a": pa.get(key), "ports_b": pb.get(key),
                    "pct_a": _pct(full_a, key), "pct_b": _pct(full_b, key),
                }
            )  # fmt: skip
    old = {flow_key(f): f for f in a.answer.flows}
    new = {flow_key(f): f for f in b.answer.flows}
    for key, flow in new.items():
        before = old.get(key)
        if before is None:
            diff.changes.append(FlowChange("new", flow))
        elif before.display_state() != flow.display_state():
            diff.changes.append(FlowChange("changed", flow, before))
        elif before.shown()[1] != flow.shown()[1] or before.nat != flow.nat:
            diff.changes.append(FlowChange("nat", flow, before))
    for key, flow in old.items():
        if key not in new:
            diff.changes.append(FlowChange("gone", flow))
    return diff


def diff_snapshots(a: Snapshot, b: Snapshot) -> list[BoxDiff]:
    """Every box of A and B, in A's order then B's new ones."""
    in_a = {_box_key(box.target): box for box in a.boxes}
    in_b = {_box_key(box.target): box for box in b.boxes}
    keys = list(in_a) + [k for k in in_b if k not in in_a]
    return [diff_box(in_a.get(k), in_b.get(k)) for k in keys]


def _endpoint(addr: Optional[str], port: Optional[str]) -> Optional[str]:
    if not addr:
        return None
    shown = f"[{addr}]" if ":" in addr and port else addr
    return f"{shown}:{port}" if port and port.isdigit() else shown


def change_record(diff: BoxDiff, change: FlowChange) -> dict[str, Any]:
    """A flat row of a flow change (table, CSV and JSON)."""
    flow = change.flow
    (src, sport), (nat_ip, nat_port), (dst, dport) = flow.shown()
    record: dict[str, Any] = {
        "target": diff.target.label,
        "short_label": diff.target.short_label,
        "change": change.kind,
        "proto": flow.proto,
        "nat": flow.nat,
        "source": _endpoint(src, sport),
        "nat_host": _endpoint(nat_ip, nat_port),
        "destination": _endpoint(dst, dport),
        "status": flow.display_state(),
        "old_status": change.old.display_state() if change.old else None,
        "old_nat_host": None,
    }
    if change.kind == "nat" and change.old is not None:
        old_ip, old_port = change.old.shown()[1]
        record["old_nat_host"] = _endpoint(old_ip, old_port)
    return record


def box_json(diff: BoxDiff) -> dict[str, Any]:
    """One box of ``diff --format json`` (docs/json.md "natfleet diff")."""
    flows: dict[str, list[dict[str, Any]]] = {kind: [] for kind in CHANGE_KINDS}
    for change in diff.changes:
        item: dict[str, Any] = {"flow": change.flow.to_json()}
        if change.old is not None:
            item["old"] = change.old.to_json()
        flows[change.kind].append(item)
    return {
        "target": target_json(diff.target),
        "in_a": diff.in_a,
        "in_b": diff.in_b,
        "time_a": diff.time_a,
        "time_b": diff.time_b,
        "error": diff.error,
        "flows_a": diff.flows_a,
        "flows_b": diff.flows_b,
        "fill_pct_a": diff.fill_a,
        "fill_pct_b": diff.fill_b,
        "counters": diff.counters,
        "port_pressure": diff.pressure,
        **flows,
    }
