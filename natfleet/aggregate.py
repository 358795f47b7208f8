"""Merge per-box agent answers: one fleet-wide connection list, per-box summaries, a total.

Example:
    >>> flows, targets = merge_flows(results, sort="src")   # results from fleet.run_fleet
    >>> records = [summary_record(r) for r in results] + [fleet_total(results)]
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Optional, Union

from natfleet.agent import Flow, Malformed, canonical_address, sort_key
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


def merge_flows(
    results: Sequence[Outcome], sort: Optional[str] = None
) -> tuple[list[Flow], list[dict[str, Any]]]:
    """Every row of every box as Flow objects, sorted fleet-wide (numeric; ties keep box
    order), with each row's target."""
    pairs: list[tuple[Flow, dict[str, Any]]] = []
    for result in results:
        if isinstance(result, HostError):
            continue
        where = target_json(result.target)
        bad = 0
        for row in result.rows:
            try:
                pairs.append((Flow.from_json(row), where))
            except (Malformed, KeyError, TypeError, AttributeError):
                bad += 1
        if bad:  # said on stderr by report_problems, never silently dropped
            result.answer.setdefault("warnings", []).append(
                f"{bad} row(s) in the box's answer were not valid rows and are not shown"
            )
    key = sort_key(sort or "src")
    pairs.sort(key=lambda pair: key(pair[0]))
    return [p[0] for p in pairs], [p[1] for p in pairs]


def merged_names(results: Sequence[Outcome]) -> dict[str, str]:
    """Address -> name, as each box resolved them (first box wins)."""
    names: dict[str, str] = {}
    for result in results:
        if isinstance(result, HostResult):
            for addr, name in (result.answer.get("names") or {}).items():
                names.setdefault(addr, name)
    return names


def error_record(error: HostError) -> dict[str, Any]:
    """A failed box as a row: its target, what went wrong and how long it took."""
    return {
        "target": target_json(error.target),
        "error": error.message,
        "kind": error.kind,
        "seconds": round(error.seconds, 2),
    }


def _top(pairs: Sequence[Sequence[Any]], n: int = 1) -> str:
    return ", ".join(f"{_addr(a)} ({c})" for a, c in list(pairs)[:n])


def _addr(value: Any) -> str:
    try:
        return canonical_address(str(value))
    except ValueError:
        return str(value)


def _states(by_state: dict[str, int], n: int = 3) -> str:
    top = sorted(by_state.items(), key=lambda kv: (-kv[1], kv[0]))[:n]
    return ", ".join(f"{k} {v}" for k, v in top)


def pressure_text(pressure: Sequence[dict[str, Any]]) -> str:
    """The worst (NAT address, destination) port use.

    >>> pressure_text([{"pct": 2.1, "ports": 593, "nat_ip": "198.51.100.11",
    ...     "dst": "203.0.113.5", "dport": 443, "proto": "tcp"}])
    '2.1% (593) 198.51.100.11->203.0.113.5:443/tcp'
    """
    if not pressure:
        return "-"
    p = pressure[0]
    pct = "?" if p.get("pct") is None else f"{p['pct']:.1f}%"
    return f"{pct} ({p['ports']}) {p['nat_ip']}->{_addr(p['dst'])}:{p['dport']}/{p['proto']}"


def summary_record(result: Outcome) -> dict[str, Any]:
    """One box's summary row (or its error), flat for tables and CSV."""
    where = target_json(result.target)
    if isinstance(result, HostError):
        return {"host": where["label"], "error": f"{result.kind}: {result.message}"}
    answer, s = result.answer, result.summary
    stats = answer.get("stats") or {}
    by_nat = s.get("by_nat", {})
    return {
        "host": where["label"],
        "flows": s.get("flows"),
        "max": answer.get("max"),
        "fill_pct": s.get("fill_pct"),
        "tcp_snat_est": s.get("tcp_snat_established"),
        "snat": by_nat.get("snat", 0) + by_nat.get("snat+dnat", 0),
        "dnat": by_nat.get("dnat", 0) + by_nat.get("snat+dnat", 0),
        "local": by_nat.get("local", 0),
        "routed": by_nat.get("routed", 0),
        "states": _states(s.get("by_state", {})),
        "drops": "/".join(str(stats.get(k, "?")) for k in INCIDENT) if stats else "?",
        "port_pressure": pressure_text(s.get("port_pressure", [])),
        "top_source": _top(s.get("top_sources", [])),
        "top_destination": _top(s.get("top_destinations", [])),
        "malformed": (answer.get("malformed") or {}).get("count", 0),
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
    ok = [r for r in results if isinstance(r, HostResult)]
    total: dict[str, Any] = {"host": f"TOTAL ({len(ok)}/{len(results)} boxes)"}
    records = [summary_record(r) for r in ok]
    for key in ("flows", "tcp_snat_est", "snat", "dnat", "local", "routed", "malformed"):
        total[key] = sum(rec.get(key) or 0 for rec in records)
    fills = [rec["fill_pct"] for rec in records if rec.get("fill_pct") is not None]
    total["fill_pct"] = max(fills) if fills else None
    drops = [0, 0, 0]
    known = False
    for r in ok:
        stats = r.answer.get("stats") or {}
        if stats:
            known = True
            drops = [d + stats.get(k, 0) for d, k in zip(drops, INCIDENT)]
    total["drops"] = "/".join(map(str, drops)) if known else "?"
    worst = [p for r in ok for p in r.summary.get("port_pressure", [])[:1]]
    worst.sort(key=lambda p: -(p.get("ports") or 0))
    total["port_pressure"] = pressure_text(worst)
    sources: dict[str, int] = {}
    for r in ok:
        for addr, count in r.summary.get("top_sources", []):
            sources[addr] = sources.get(addr, 0) + count
    total["top_source"] = _top(sorted(sources.items(), key=lambda kv: -kv[1]))
    states: dict[str, int] = {}
    for r in ok:
        for k, v in r.summary.get("by_state", {}).items():
            states[k] = states.get(k, 0) + v
    total["states"] = _states(states)
    total["top_destination"] = ""
    total["error"] = f"{len(results) - len(ok)} failed" if len(ok) < len(results) else ""
    return total


def summary_json(results: Sequence[Outcome]) -> dict[str, Any]:
    """The documented JSON of ``natfleet summary``: every box's full answer, and the total."""
    boxes = []
    for result in results:
        if isinstance(result, HostError):
            boxes.append(error_record(result))
            continue
        answer = {k: v for k, v in result.answer.items() if k != "rows"}
        transport = {
            "seconds": round(result.seconds, 3),
            "bytes_received": result.bytes_received,
        }
        boxes.append({"target": target_json(result.target), **answer, "transport": transport})
    return {"boxes": boxes, "total": fleet_total(results)}
