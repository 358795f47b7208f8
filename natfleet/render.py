"""Output: netstat-nat text, tables, JSON and CSV, for every listing command.

Example:
    >>> from natfleet.agent import Flow
    >>> f = Flow.parse("ipv4 2 tcp 6 3599 ESTABLISHED src=192.168.1.10 dst=203.0.113.5 "
    ...     "sport=40000 dport=443 src=203.0.113.5 dst=198.51.100.1 sport=443 dport=61000 "
    ...     "[ASSURED] mark=0 zone=0 use=2", own=())
    >>> print(next(netstat_lines([f], NetstatStyle(header=False))))
    tcp   192.168.1.10:40000             203.0.113.5:443                ESTABLISHED
"""

from __future__ import annotations

import csv
import json
import socket
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Optional, TextIO

from natfleet.agent import Flow

FORMATS = ("netstat", "table", "json", "csv")
PORTED = frozenset(("tcp", "udp", "udplite", "sctp", "dccp"))
NO_DATA = "no data"  # a metric without points: never shown as 0
SPARKS = "▁▂▃▄▅▆▇█"
SPARK_WIDTH = 24


@dataclass
class NetstatStyle:
    """netstat-nat's layout switches: -N (nat_host), -x (wide), -o (no header), -L/-R."""

    nat_host: bool = False
    wide: bool = False
    header: bool = True
    untranslated: bool = False  # -L / -R: "Source Address", no NAT-host column
    names: dict[str, str] = field(default_factory=dict)  # address -> name (without -n)
    service_names: bool = False  # port -> service name (without -n)
    host_column: Optional[str] = None  # fleet: the target label column heading


def endpoint(addr: Optional[str], port: Optional[str], proto: str, style: NetstatStyle) -> str:
    """``addr:port`` (``[v6]:port``), ports only for port protocols, names when asked."""
    if not addr:
        return ""
    shown = style.names.get(addr, addr)
    if ":" in shown and proto in PORTED and port is not None:
        shown = f"[{shown}]"
    if proto in PORTED and port is not None:
        return f"{shown}:{_service(port, proto) if style.service_names else port}"
    return shown


_SERVICES: dict[tuple[str, str], str] = {}


def _service(port: str, proto: str) -> str:
    key = (port, proto)
    if key not in _SERVICES:
        try:
            _SERVICES[key] = socket.getservbyport(int(port), proto if proto == "udp" else "tcp")
        except (OSError, ValueError):
            _SERVICES[key] = port
    return _SERVICES[key]


def _cell(value: str, width: int) -> str:
    """Pad to the column; a longer value widens its row (one space) instead of being cut."""
    return value.ljust(width) if len(value) < width else value + " "


def netstat_header(style: NetstatStyle, host_width: int = 0) -> str:
    width = 41 if style.wide else 31
    first = "Source Address" if style.untranslated else "NATed Address"
    cells = [_cell(style.host_column, host_width)] if style.host_column else []
    cells += ["Proto ", _cell(first, width)]
    if style.nat_host and not style.untranslated:
        cells.append(_cell("NAT-host Address", width))
    cells += [_cell("Destination Address", width), "State"]
    return "".join(cells)


def netstat_row(
    flow: Flow, style: NetstatStyle, label: Optional[str] = None, host_width: int = 0
) -> str:
    """One row of netstat-nat's fixed-width text (without the newline)."""
    width = 41 if style.wide else 31
    source, nat_host, dest = flow.shown()
    proto = flow.proto
    cells = [_cell(label, host_width)] if label is not None else []
    cells.append(_cell(proto, 6))
    cells.append(_cell(endpoint(source[0], source[1], proto, style), width))
    if style.nat_host and not style.untranslated:
        cells.append(_cell(endpoint(nat_host[0], nat_host[1], proto, style), width))
    cells.append(_cell(endpoint(dest[0], dest[1], proto, style), width))
    cells.append(flow.display_state())
    return "".join(cells).rstrip()


def netstat_lines(
    flows: Iterable[Flow], style: NetstatStyle, labels: Optional[Sequence[str]] = None
) -> Iterator[str]:
    """netstat-nat's fixed-width text: Proto 6, address columns 31 (41 with -x), State."""
    host_width = max([len(style.host_column or "")] + [len(x) for x in set(labels or ())]) + 1
    if style.header:
        yield netstat_header(style, host_width)
    for i, flow in enumerate(flows):
        yield netstat_row(flow, style, labels[i] if labels is not None else None, host_width)


FLOW_COLUMNS = ("proto", "nat", "source", "nat_host", "destination", "state", "timeout")


def flow_record(flow: Flow, style: NetstatStyle) -> dict[str, Any]:
    """One flat record (table and CSV), the same fields the netstat view shows."""
    source, nat_host, dest = flow.shown()
    proto = flow.proto
    return {
        "proto": proto,
        "nat": flow.nat,
        "source": endpoint(source[0], source[1], proto, style),
        "nat_host": endpoint(nat_host[0], nat_host[1], proto, style),
        "destination": endpoint(dest[0], dest[1], proto, style),
        "state": flow.display_state(),
        "timeout": flow.timeout,
    }


def write_flows(
    out: TextIO,
    fmt: str,
    flows: Sequence[Flow],
    style: NetstatStyle,
    targets: Optional[Sequence[dict[str, Any]]] = None,
    errors: Sequence[dict[str, Any]] = (),
) -> None:
    """Write flows in one format. Fleet commands give each row's ``targets`` entry
    (``label``, ``name``, ``instance_id``, ``host``) and the failed boxes as ``errors``
    (``target``, ``kind``, ``error``), which become rows of their own."""
    labels = [t["label"] for t in targets] if targets is not None else None
    if fmt == "netstat":
        write_lines(out, netstat_lines(flows, style, labels))
        for e in errors:
            out.write(f"{e['target']['label']}  ERROR {e['kind']}: {e['error']}\n")
    elif fmt == "json":
        rows = []
        for i, flow in enumerate(flows):
            row = dict(flow.to_json())
            if targets is not None:
                row["target"] = targets[i]
            rows.append(row)
        write_json(out, rows + list(errors))
    else:
        records = []
        for i, flow in enumerate(flows):
            record = flow_record(flow, style)
            if labels is not None:
                record = {"target": labels[i], **record}
            records.append(record)
        for e in errors:
            records.append(
                {"target": e["target"]["label"], "state": f"ERROR {e['kind']}: {e['error']}"}
            )
        columns = (("target",) if labels is not None else ()) + FLOW_COLUMNS
        write_records(out, fmt, records, columns)


def write_lines(out: TextIO, lines: Iterable[str]) -> None:
    """Write text lines in large chunks (a 250,000-row listing stays fast)."""
    batch: list[str] = []
    for line in lines:
        batch.append(line)
        if len(batch) >= 8192:
            out.write("\n".join(batch) + "\n")
            batch.clear()
    if batch:
        out.write("\n".join(batch) + "\n")


def json_text(data: Any) -> str:
    """natfleet's JSON output: indented, anything not JSON (times) as text, a final newline.

    >>> json_text({"flows": 3})
    '{\\n  "flows": 3\\n}\\n'
    """
    return json.dumps(data, indent=2, default=str) + "\n"


def write_json(out: TextIO, data: Any) -> None:
    out.write(json_text(data))


def write_records(
    out: TextIO, fmt: str, records: Sequence[dict[str, Any]], columns: Sequence[str]
) -> None:
    """Records as a table (tabulate), CSV, or JSON."""
    if fmt == "json":
        write_json(out, list(records))
    elif fmt == "csv":
        writer = csv.DictWriter(out, fieldnames=list(columns), extrasaction="ignore")
        writer.writeheader()
        for record in records:
            writer.writerow({k: _csv_value(record.get(k)) for k in columns})
    else:
        rows = [[_table_value(record.get(k)) for k in columns] for record in records]
        out.write(table_text(rows, list(columns)))


def table_text(rows: Sequence[Sequence[Any]], headers: Sequence[str]) -> str:
    """A plain text table (tabulate's "simple" style, values as given), ending in a newline.

    >>> print(table_text([["nat-a", "3"]], ["host", "flows"]), end="")
    host    flows
    ------  -------
    nat-a   3
    """
    from tabulate import tabulate  # imported on first use: it is slow to import

    return tabulate(rows, headers=list(headers), tablefmt="simple", disable_numparse=True) + "\n"


def _csv_value(value: Any) -> Any:
    if isinstance(value, (list, dict)):
        return json.dumps(value, default=str)
    return "" if value is None else value


def _table_value(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.2f}"
    if isinstance(value, (list, tuple)):
        return ", ".join(str(v) for v in value)
    return str(value)


def malformed_notes(answer: dict[str, Any], label: str = "") -> tuple[Optional[str], list[str]]:
    """(footer for the output, detail lines for stderr) about skipped malformed lines."""
    bad = answer.get("malformed") or {}
    count = bad.get("count", 0)
    if not count:
        return None, []
    where = f" on {label}" if label else ""
    footer = (
        f"natfleet: {count} malformed conntrack line(s){where} skipped "
        f"(of {answer.get('lines', '?')} read from {answer.get('source')})"
    )
    details = [
        f"natfleet: malformed line {ex['line']}{where}: {ex['text']!r}"
        for ex in bad.get("examples", [])
    ]
    return footer, details


def sparkline(values: Sequence[float], width: int = SPARK_WIDTH) -> str:
    """Unicode sparkline, at most ``width`` wide (each cell the maximum of its points).

    Example:
        >>> sparkline([0, 1, 2, 3, 4, 5, 6, 7])
        '▁▂▃▄▅▆▇█'
    """
    if not values:
        return NO_DATA
    if len(values) > width:
        step = len(values) / width
        values = [max(values[int(i * step) : int((i + 1) * step)]) for i in range(width)]
    low, high = min(values), max(values)
    span = (high - low) or 1.0
    return "".join(SPARKS[int((v - low) / span * (len(SPARKS) - 1))] for v in values)


def human(value: Optional[float], unit: str = "") -> str:
    """1234567 -> '1.2M', None -> 'no data'.

    Example:
        >>> human(1536, "B")
        '1.5KB'
    """
    if value is None:
        return NO_DATA
    for prefix, size in (("T", 1e12), ("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(value) >= size:
            return f"{value / size:.1f}{prefix}{unit}"
    return f"{value:.0f}{unit}"
