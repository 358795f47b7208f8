"""Merge checked per-box answers: one fleet-wide connection list (streamed: :func:`merge_stream`,
a k-way merge of the boxes' sorted rows), per-box summaries, a total.

Everything here works on typed records from the trust boundary (natfleet.answer); nothing
here prints.

Example:
    >>> from natfleet import api
    >>> targets, _ = api.resolve_targets(inputs=["tests/data/tables/lab-box.txt"])
    >>> merged = merge_flows(api.read_fleet(targets, api.list_request()), sort="dst-port")
    >>> merged.flows[0].proto, merged.targets[0]["host"]
    ('icmp', 'tests/data/tables/lab-box.txt')
    >>> fleet_total(api.read_fleet(targets, api.summary_request()))["snat"]
    15
    >>> fleet_total([]) is None                    # no box answered: no total at all
    True
"""

from __future__ import annotations

import heapq
import itertools
import logging
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from operator import itemgetter
from typing import Any, Optional, Union

from natfleet.agent import Flow, sort_key
from natfleet.answer import AnswerError, PortPressure
from natfleet.answer_wire import WireRows, flow_key
from natfleet.limits import capped
from natfleet.models import HostError, HostResult, Target
from natfleet.output import Column

log = logging.getLogger(__name__)
Outcome = Union[HostResult, HostError]
INCIDENT = ("insert_failed", "drop", "early_drop")


def target_json(target: Target) -> dict[str, Any]:
    """How a row names its box: ``{"label", "short_label", "name", "instance_id", "host"}``
    (``label`` ``Name (i-0abc)``, ``short_label`` the Name, else the ID)."""
    return {
        "label": target.label,
        "short_label": target.short_label,
        "name": target.name,
        "instance_id": target.instance_id,
        "host": target.host or target.path or None,
    }


@dataclass
class Merged:
    """Every row of every box, sorted fleet-wide, with each row's box and that box's names
    (a box's reverse lookups apply to its own rows only)."""

    flows: list[Flow]
    targets: list[dict[str, Any]]
    names: list[dict[str, str]]

    def head(self, limit: Optional[int]) -> Merged:
        if limit is None:
            return self
        return Merged(self.flows[:limit], self.targets[:limit], self.names[:limit])


def merge_flows(results: Sequence[Outcome], sort: Optional[str] = None) -> Merged:
    """Every row of every answering box, sorted numerically (ties keep box order)."""
    triples: list[tuple[Flow, dict[str, Any], dict[str, str]]] = []
    for result in results:
        if isinstance(result, HostResult):
            where = target_json(result.target)
            names = result.answer.names
            triples.extend((flow, where, names) for flow in result.answer.flows)
    key = sort_key(sort or "src")
    triples.sort(key=lambda triple: key(triple[0]))
    return Merged([t[0] for t in triples], [t[1] for t in triples], [t[2] for t in triples])


@dataclass
class StreamBox:
    """One answering box in a streamed listing: its place in the results, its target as a
    row names it, its names (reverse lookups) and its rows (a list, or answer_wire.WireRows:
    decoded while the merge reaches them)."""

    index: int
    result: HostResult
    target: dict[str, Any]
    names: dict[str, str]
    rows: Sequence[Flow]


@dataclass
class FleetStream:
    """Every box's rows merged in the fleet-wide order, read as the output is written.

    Iterating yields ``(box, row)``: ``row`` a decoded wire row (a tuple of columns, see
    natfleet.answer_wire) or a Flow. A box whose rows stop decoding mid-way (they were
    checked at receipt, so this is a bug, not a box's doing) ends there: it is added to
    ``late`` (its HostError) and its remaining rows are left out.
    """

    boxes: list[StreamBox]
    sort: Optional[str] = None
    limit: Optional[int] = None
    late: list[HostError] = field(default_factory=list)

    def __iter__(self) -> Iterator[tuple[StreamBox, Any]]:
        """``(box, row)``: a wire row as a tuple of its columns (``shape`` first), or a Flow."""
        for item in self.merged():
            yield item[1], (item[2:] if len(item) > 3 else item[2])

    def merged(self) -> Iterator[tuple]:
        """The merged items in the fleet-wide order: ``(sort key, box, shape, osrc, ...)``
        for a wire row (answer_wire.WireRows.merge_items), ``(sort key, box, Flow)`` for a
        Flow; the key None for one box."""
        live = [box for box in self.boxes if len(box.rows)]
        if not live:
            return iter(())
        merged: Iterator[tuple]
        if len(live) == 1:
            merged = itertools.chain.from_iterable(self._blocks(live[0], False))
        else:  # heapq.merge: ties go to the earlier box, each box's rows stay in their order
            sources = [itertools.chain.from_iterable(self._blocks(box, True)) for box in live]
            merged = heapq.merge(*sources, key=itemgetter(0))
        if self.limit is not None:
            merged = itertools.islice(merged, self.limit)
        return merged

    def _blocks(self, box: StreamBox, keyed: bool) -> Iterator[list[tuple]]:
        """The box's ``(key, box, row)`` in its order, a block at a time; a box whose rows
        stop decoding ends early, its HostError in ``late``."""
        rows = box.rows
        sent = 0
        try:
            if isinstance(rows, WireRows):
                yield from rows.merge_items(keyed, box)
                return
            key = flow_key(self.sort)
            if not box.result.answer.ordered:  # a plain answer from a box: sorted here
                rows = sorted(rows, key=key)
            tags = itertools.repeat(box)
            for start in range(0, len(rows), PLAIN_BLOCK):
                block = rows[start : start + PLAIN_BLOCK]
                keys = map(key, block) if keyed else itertools.repeat(None)
                yield list(zip(keys, tags, block))
                sent += len(block)
        except Exception as exc:  # noqa: BLE001 - this box's error row, the rest prints
            log.debug("rows of %s stopped", box.result.target.label, exc_info=True)
            if isinstance(rows, WireRows):
                sent = rows.decoded  # every row of the blocks before went to the merge
            message = (
                f"its rows stopped decoding after {sent:,} of {len(box.rows):,} "
                f"({type(exc).__name__}: {capped(str(exc), 300)}); the rows after those were "
                "left out"
            )
            kind = exc.kind if isinstance(exc, AnswerError) else "internal"
            if all(late.target is not box.result.target for late in self.late):  # once
                self.late.append(HostError(box.result.target, message, kind, box.result.seconds))

    def errors(self) -> list[dict[str, Any]]:
        """The error records of the boxes that failed during the merge."""
        return [error_record(e) for e in self.late]


PLAIN_BLOCK = 4096  # rows of a plain answer's list taken into the merge at a time


def merge_stream(
    results: Sequence[Outcome], sort: Optional[str] = None, limit: Optional[int] = None
) -> FleetStream:
    """Every answering box's rows, k-way merged in the order of :func:`merge_flows` (numeric;
    ties in box order, then in each box's own order) as they are read: each box's rows come
    sorted (by the agent, checked at the boundary), so only the merge front is held; ``limit``
    stops after that many rows, the rest never decoded.

    >>> from natfleet import api
    >>> targets, _ = api.resolve_targets(inputs=["tests/data/tables/lab-box.txt"] * 2)
    >>> [row.proto for _box, row in merge_stream(api.read_fleet(targets, api.list_request()),
    ...                                          "dst-port", limit=3)]
    ['icmp', 'icmp', 'udp']
    """
    boxes = [
        StreamBox(i, r, target_json(r.target), r.answer.names, r.answer.flows)
        for i, r in enumerate(results)
        if isinstance(r, HostResult)
    ]
    return FleetStream(boxes, sort, limit)


def error_record(error: HostError) -> dict[str, Any]:
    """A failed box as a row: its target, what went wrong and how long it took."""
    return {
        "target": target_json(error.target),
        "error": error.message,
        "kind": error.kind,
        "seconds": round(error.seconds, 2),
    }


def _states(by_state: dict[str, int], n: int = 3) -> str:
    top = sorted(by_state.items(), key=lambda kv: (-kv[1], kv[0]))[:n]
    return ", ".join(f"{k} {v}" for k, v in top)


def pressure_text(record: Mapping[str, Any]) -> Optional[str]:
    """The table cell of the worst port pressure: ``pct (ports) nat_ip->dst:dport/proto``.

    >>> pressure_text(pressure_fields([PortPressure("198.51.100.11", "203.0.113.5", 443,
    ...                                             "tcp", 593, 2.1)]))
    '2.10% (593) 198.51.100.11->203.0.113.5:443/tcp'
    """
    if record.get("pressure_ports") is None:
        return None
    pct = record.get("pressure_pct")
    shown = "?" if pct is None else f"{pct:.2f}%"
    dst = record["pressure_dst"]
    dst = f"[{dst}]" if ":" in dst else dst
    return (
        f"{shown} ({record['pressure_ports']}) {record['pressure_nat_ip']}->{dst}:"
        f"{record['pressure_dport']}/{record['pressure_proto']}"
    )


def pressure_fields(pressure: Sequence[PortPressure]) -> dict[str, Any]:
    """The worst (NAT address, destination) port use as plain fields (None when none)."""
    p = pressure[0] if pressure else None
    return {
        "pressure_nat_ip": p.nat_ip if p else None,
        "pressure_dst": p.dst if p else None,
        "pressure_dport": p.dport if p else None,
        "pressure_proto": p.proto if p else None,
        "pressure_ports": p.ports if p else None,
        "pressure_pct": p.pct if p else None,
    }


def _top_text(record: Mapping[str, Any], key: str) -> Optional[str]:
    address = record.get(key)
    return None if not address else f"{address} ({record.get(key + '_flows')})"


def _drops(stats: Optional[dict[str, int]]) -> dict[str, Optional[int]]:
    """insert_failed, drop, early_drop (None when unknown) and ``drops``, their sum."""
    found = {k: (stats.get(k) if stats else None) for k in INCIDENT}
    known = [v for v in found.values() if v is not None]
    return {**found, "drops": sum(known) if known else None}


def summary_record(result: Outcome) -> dict[str, Any]:
    """One box's summary row of plain values (tables and CSV), or its error row.

    ``drops`` is insert_failed + drop + early_drop; ``pressure_*`` the worst port pressure;
    ``top_source``/``top_destination`` an address and ``*_flows`` its flows."""
    where = target_json(result.target)
    record: dict[str, Any] = {"target": where["label"], "short_label": where["short_label"]}
    if isinstance(result, HostError):
        return {**record, "error": f"{result.kind}: {result.message}", "error_kind": result.kind}
    answer = result.answer
    s = answer.summary
    record["max"] = answer.facts.max
    if s is None:  # not a summary answer: only its facts
        return record
    by_nat = s.by_nat
    top_src = s.top_sources[0] if s.top_sources else (None, None)
    top_dst = s.top_destinations[0] if s.top_destinations else (None, None)
    record.update(
        flows=s.flows,
        fill_pct=s.fill_pct,
        tcp_snat_est=s.tcp_snat_established,
        snat=by_nat["snat"] + by_nat["snat+dnat"],
        dnat=by_nat["dnat"] + by_nat["snat+dnat"],
        local=by_nat["local"],
        routed=by_nat["routed"],
        states=_states(s.by_state),
        **_drops(answer.facts.stats),
        **pressure_fields(s.port_pressure),
        top_source=top_src[0],
        top_source_flows=top_src[1],
        top_destination=top_dst[0],
        top_destination_flows=top_dst[1],
        malformed=answer.malformed.count,
    )
    return record


SUMMARY_COLUMNS = (
    Column("target", "HOST", short="short_label"),
    Column("flows", "FLOWS", kind="int"),
    Column("max", "MAX", wide=True, kind="int"),
    Column("fill_pct", "FILL", kind="pct"),
    Column("tcp_snat_est", "TCP EST", kind="int"),
    Column("snat", "SNAT", kind="int"),
    Column("dnat", "DNAT", kind="int"),
    Column("local", "LOCAL", wide=True, kind="int"),
    Column("routed", "ROUTED", wide=True, kind="int"),
    Column("states", "STATES", wide=True, csv=False),
    Column("drops", "DROPS", kind="int"),
    Column("insert_failed", "INSERT FAILED", wide=True, kind="int"),
    Column("drop", "DROP", wide=True, kind="int"),
    Column("early_drop", "EARLY DROP", wide=True, kind="int"),
    Column("pressure_pct", "PORT PRESSURE", shrink=True, kind="pct", cell=pressure_text),
    Column("pressure_ports", "PRESSURE PORTS", table=False),
    Column("pressure_nat_ip", "PRESSURE NAT IP", table=False),
    Column("pressure_dst", "PRESSURE DST", table=False),
    Column("pressure_dport", "PRESSURE DPORT", table=False),
    Column("pressure_proto", "PRESSURE PROTO", table=False),
    Column("top_source", "TOP SOURCE", shrink=True, cell=lambda r: _top_text(r, "top_source")),
    Column("top_source_flows", "TOP SOURCE FLOWS", table=False),
    Column(
        "top_destination",
        "TOP DESTINATION",
        wide=True,
        shrink=True,
        cell=lambda r: _top_text(r, "top_destination"),
    ),
    Column("top_destination_flows", "TOP DESTINATION FLOWS", table=False),
    Column("malformed", "MALFORMED", wide=True, kind="int"),
    Column("failed", "FAILED", wide=True, kind="int"),
    Column("error", "ERROR", shrink=True),
    Column("error_kind", "ERROR KIND", table=False),
)


def fleet_total(results: Sequence[Outcome]) -> Optional[dict[str, Any]]:
    """The fleet row: sums of flows, NAT kinds and drops, the fullest table, the worst port
    pressure, the busiest source across boxes; None when no box answered (a total of
    nothing is not "0 flows")."""
    ok = [r for r in results if isinstance(r, HostResult) and r.answer.summary is not None]
    if not ok:
        return None
    label = f"TOTAL ({len(ok)}/{len(results)})"
    total: dict[str, Any] = {"target": label, "short_label": label}
    records = [summary_record(r) for r in ok]
    for key in ("flows", "tcp_snat_est", "snat", "dnat", "local", "routed", "malformed"):
        total[key] = sum(rec[key] for rec in records)
    maxes = [rec["max"] for rec in records if rec.get("max") is not None]
    total["max"] = sum(maxes) if len(maxes) == len(records) else None
    fills = [rec["fill_pct"] for rec in records if rec["fill_pct"] is not None]
    total["fill_pct"] = max(fills) if fills else None
    for key in (*INCIDENT, "drops"):
        known = [rec[key] for rec in records if rec.get(key) is not None]
        total[key] = sum(known) if known else None
    summaries = [r.answer.summary for r in ok if r.answer.summary is not None]
    worst = [p for s in summaries for p in s.port_pressure[:1]]
    worst.sort(key=lambda p: (-p.ports, p.nat_ip, p.dst, p.dport, p.proto))
    total.update(pressure_fields(worst))
    sources: dict[str, int] = {}
    states: dict[str, int] = {}
    for s in summaries:
        for addr, count in s.top_sources:
            sources[addr] = sources.get(addr, 0) + count
        for k, v in s.by_state.items():
            states[k] = states.get(k, 0) + v
    top = sorted(sources.items(), key=lambda kv: (-kv[1], kv[0]))[:1]
    total["top_source"], total["top_source_flows"] = top[0] if top else (None, None)
    total["states"] = _states(states)
    total["failed"] = len(results) - len(ok)
    return total


def box_json(result: HostResult) -> dict[str, Any]:
    """An answering box in JSON: its target, its checked answer (docs/json.md) and what
    reading it cost (``transport``: ``seconds``, ``bytes_received``)."""
    transport = {"seconds": round(result.seconds, 3), "bytes_received": result.bytes_received}
    return {"target": target_json(result.target), **result.answer.to_json(), "transport": transport}


def box_meta(result: HostResult) -> dict[str, Any]:
    """A listing box in conns' JSON ``boxes``: its target, table facts and counts, the
    rows it sent, its names, malformed lines and warnings."""
    answer, facts = result.answer, result.answer.facts
    return {
        "target": target_json(result.target),
        "hostname": facts.hostname,
        "source": facts.source,
        "count": facts.count,
        "max": facts.max,
        "lines": answer.lines,
        "matched": answer.matched,
        "rows": len(answer.flows),
        "names": dict(answer.names),
        "malformed": answer.malformed.count,
        "warnings": list(answer.warnings),
        "seconds": round(result.seconds, 3),
    }


def summary_json(results: Sequence[Outcome]) -> dict[str, Any]:
    """The JSON parts of ``natfleet summary`` (the envelope's ``rows``, ``errors`` and
    ``total``): every answering box's checked answer, the failed boxes, and the fleet
    total (None when no box answered)."""
    return {
        "total": fleet_total(results),
        "rows": [box_json(r) for r in results if isinstance(r, HostResult)],
        "errors": [error_record(r) for r in results if isinstance(r, HostError)],
    }


COUNTS_PER_BOX = 10  # more boxes than this: only the fleet line


def in_use(label: str, count: Optional[int], size: Optional[int]) -> str:
    """One ASA-style count line.

    >>> in_use("nflab-box1", 27, 262144), in_use("nat-b", 5, None)
    ('nflab-box1: 27 in use of 262,144', 'nat-b: 5 in use')
    """
    line = f"{label}: {count or 0:,} in use"
    return line + (f" of {size:,}" if size else "")


def count_lines(results: Sequence[Outcome]) -> list[str]:
    """ASA-style table counts above a terminal's table: one line per answering box (up to
    :data:`COUNTS_PER_BOX` boxes) and a fleet line for two or more; none when no box
    answered. A box's count is its ``nf_conntrack_count`` (else the lines it read)."""
    ok = [r for r in results if isinstance(r, HostResult)]
    if not ok:
        return []
    pairs = []
    for r in ok:
        facts = r.answer.facts
        pairs.append((r.target.short_label, _count(r), facts.max))
    lines = [in_use(*pair) for pair in pairs] if len(ok) <= COUNTS_PER_BOX else []
    if len(results) > 1:
        sizes = [size for _, _, size in pairs]
        size = sum(s for s in sizes if s) if all(sizes) else None
        fleet = in_use("fleet", sum(c for _, c, _ in pairs), size)
        failed = len(results) - len(ok)
        fleet += f" on {len(ok)} boxes" + (f" ({failed} failed)" if failed else "")
        lines.append(fleet)
    return lines


def _count(result: HostResult) -> int:
    facts = result.answer.facts
    return facts.count if facts.count is not None else result.answer.lines
