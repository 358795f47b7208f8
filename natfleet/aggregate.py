"""Merge checked per-box answers: one fleet-wide connection list, per-box summaries, a total.

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
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Optional, Union

from natfleet.agent import Flow, sort_key
from natfleet.answer import PortPressure
from natfleet.models import HostError, HostResult, Target

Outcome = Union[HostResult, HostError]
INCIDENT = ("insert_failed", "drop", "early_drop")


def target_json(target: Target) -> dict[str, Any]:
    """How a row names its box: ``{"label", "name", "instance_id", "host"}``."""
    return {
        "label": target.label,
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


def error_record(error: HostError) -> dict[str, Any]:
    """A failed box as a row: its target, what went wrong and how long it took."""
    return {
        "target": target_json(error.target),
        "error": error.message,
        "kind": error.kind,
        "seconds": round(error.seconds, 2),
    }


def _top(pairs: Sequence[tuple[str, int]], n: int = 1) -> str:
    return ", ".join(f"{a} ({c})" for a, c in list(pairs)[:n])


def _states(by_state: dict[str, int], n: int = 3) -> str:
    top = sorted(by_state.items(), key=lambda kv: (-kv[1], kv[0]))[:n]
    return ", ".join(f"{k} {v}" for k, v in top)


def pressure_text(pressure: Sequence[PortPressure]) -> str:
    """The worst (NAT address, destination) port use.

    >>> pressure_text([PortPressure("198.51.100.11", "203.0.113.5", 443, "tcp", 593, 2.1)])
    '2.1% (593) 198.51.100.11->203.0.113.5:443/tcp'
    """
    if not pressure:
        return "-"
    p = pressure[0]
    pct = "?" if p.pct is None else f"{p.pct:.1f}%"
    dst = f"[{p.dst}]" if ":" in p.dst else p.dst
    return f"{pct} ({p.ports}) {p.nat_ip}->{dst}:{p.dport}/{p.proto}"


def _drops(stats: Optional[dict[str, int]]) -> str:
    return "/".join(str(stats.get(k, "?")) for k in INCIDENT) if stats else "?"


def summary_record(result: Outcome) -> dict[str, Any]:
    """One box's summary row (or its error), flat for tables and CSV."""
    where = target_json(result.target)
    if isinstance(result, HostError):
        return {"host": where["label"], "error": f"{result.kind}: {result.message}"}
    answer = result.answer
    s = answer.summary
    if s is None:  # not a summary answer: only its facts
        return {"host": where["label"], "max": answer.facts.max, "error": ""}
    by_nat = s.by_nat
    return {
        "host": where["label"],
        "flows": s.flows,
        "max": answer.facts.max,
        "fill_pct": s.fill_pct,
        "tcp_snat_est": s.tcp_snat_established,
        "snat": by_nat["snat"] + by_nat["snat+dnat"],
        "dnat": by_nat["dnat"] + by_nat["snat+dnat"],
        "local": by_nat["local"],
        "routed": by_nat["routed"],
        "states": _states(s.by_state),
        "drops": _drops(answer.facts.stats),
        "port_pressure": pressure_text(s.port_pressure),
        "top_source": _top(s.top_sources),
        "top_destination": _top(s.top_destinations),
        "malformed": answer.malformed.count,
        "error": "",
    }


SUMMARY_COLUMNS = (
    "host",
    "flows",
    "fill_pct",
    "tcp_snat_est",
    "snat",
    "dnat",
    "local",
    "routed",
    "states",
    "drops",
    "port_pressure",
    "top_source",
    "top_destination",
    "error",
)


def fleet_total(results: Sequence[Outcome]) -> dict[str, Any]:
    """The fleet row: sums of flows and NAT kinds and drops, the fullest table, the worst
    port pressure, the busiest source across boxes."""
    ok = [r for r in results if isinstance(r, HostResult) and r.answer.summary is not None]
    total: dict[str, Any] = {"host": f"TOTAL ({len(ok)}/{len(results)} boxes)"}
    records = [summary_record(r) for r in ok]
    for key in ("flows", "tcp_snat_est", "snat", "dnat", "local", "routed", "malformed"):
        total[key] = sum(rec[key] for rec in records)
    fills = [rec["fill_pct"] for rec in records if rec["fill_pct"] is not None]
    total["fill_pct"] = max(fills) if fills else None
    known = [r.answer.facts.stats for r in ok if r.answer.facts.stats]
    total["drops"] = (
        "/".join(str(sum(stats.get(k, 0) for stats in known)) for k in INCIDENT) if known else "?"
    )
    summaries = [r.answer.summary for r in ok if r.answer.summary is not None]
    worst = [p for s in summaries for p in s.port_pressure[:1]]
    worst.sort(key=lambda p: -p.ports)
    total["port_pressure"] = pressure_text(worst)
    sources: dict[str, int] = {}
    states: dict[str, int] = {}
    for s in summaries:
        for addr, count in s.top_sources:
            sources[addr] = sources.get(addr, 0) + count
        for k, v in s.by_state.items():
            states[k] = states.get(k, 0) + v
    total["top_source"] = _top(sorted(sources.items(), key=lambda kv: (-kv[1], kv[0])))
    total["states"] = _states(states)
    total["top_destination"] = ""
    failed = len(results) - len(ok)
    total["error"] = f"{failed} failed" if failed else ""
    return total


def summary_json(results: Sequence[Outcome]) -> dict[str, Any]:
    """The documented JSON of ``natfleet summary``: every box's checked answer, and the total."""
    boxes = []
    for result in results:
        if isinstance(result, HostError):
            boxes.append(error_record(result))
            continue
        transport = {
            "seconds": round(result.seconds, 3),
            "bytes_received": result.bytes_received,
        }
        boxes.append(
            {
                "target": target_json(result.target),
                **result.answer.to_json(),
                "transport": transport,
            }
        )
    return {"boxes": boxes, "total": fleet_total(results)}
