"""netstat-nat text and flow records for the listing commands, on top of the output layer
(:mod:`natfleet.output`, which escapes every string; its writers are importable from here).

Every cell made from a box's data (protocol, addresses, names, ports, state, labels) passes
through :func:`natfleet.output.safe` where the cell is made.

Example:
    >>> from natfleet.agent import Flow
    >>> f = Flow.parse("ipv4 2 tcp 6 3599 ESTABLISHED src=192.168.1.10 dst=203.0.113.5 "
    ...     "sport=40000 dport=443 src=203.0.113.5 dst=198.51.100.1 sport=443 dport=61000 "
    ...     "[ASSURED] mark=0 zone=0 use=2", own=())
    >>> print(next(netstat_lines([f], NetstatStyle(header=False))))
    tcp   192.168.1.10:40000             203.0.113.5:443                ESTABLISHED
    >>> print(netstat_row(f, NetstatStyle(names={"203.0.113.5": "evil\\x1b[2J\\nfake"})))
    tcp   192.168.1.10:40000             evil\\x1b[2J\\nfake:443          ESTABLISHED
"""

from __future__ import annotations

import socket
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Optional, TextIO

from natfleet.agent import Flow
from natfleet.output import (  # noqa: F401  (re-exported: render.* stays importable)
    NO_DATA,
    SPARK_WIDTH,
    SPARKS,
    clip,
    human,
    json_text,
    safe,
    sparkline,
    table_text,
    write_json,
    write_lines,
    write_records,
)

FORMATS = ("netstat", "table", "json", "csv")
PORTED = frozenset(("tcp", "udp", "udplite", "sctp", "dccp"))


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


def endpoint(
    addr: Optional[str],
    port: Optional[str],
    proto: str,
    style: NetstatStyle,
    names: Optional[Mapping[str, str]] = None,
) -> str:
    """``addr:port`` (``[v6]:port``), ports only for port protocols, names when asked:
    ``names`` (the row's own box's lookups) or else ``style.names``. Not escaped: the
    caller makes the cell with :func:`safe`."""
    if not addr:
        return ""
    shown = (style.names if names is None else names).get(addr, addr)
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
    flow: Flow,
    style: NetstatStyle,
    label: Optional[str] = None,
    host_width: int = 0,
    names: Optional[Mapping[str, str]] = None,
) -> str:
    """One row of netstat-nat's fixed-width text (without the newline), every cell escaped;
    ``names``: the address names of this row's box (default ``style.names``)."""
    width = 41 if style.wide else 31
    source, nat_host, dest = flow.shown()
    proto = flow.proto
    cells = [_cell(safe(label), host_width)] if label is not None else []
    cells.append(_cell(safe(proto), 6))
    cells.append(_cell(safe(endpoint(source[0], source[1], proto, style, names)), width))
    if style.nat_host and not style.untranslated:
        cells.append(_cell(safe(endpoint(nat_host[0], nat_host[1], proto, style, names)), width))
    cells.append(_cell(safe(endpoint(dest[0], dest[1], proto, style, names)), width))
    cells.append(safe(flow.display_state()))
    return "".join(cells).rstrip()


def netstat_lines(
    flows: Iterable[Flow],
    style: NetstatStyle,
    labels: Optional[Sequence[str]] = None,
    names: Optional[Sequence[Mapping[str, str]]] = None,
) -> Iterator[str]:
    """netstat-nat's fixed-width text: Proto 6, address columns 31 (41 with -x), State;
    ``labels[i]`` and ``names[i]`` belong to the i-th flow."""
    host_width = (
        max([len(safe(style.host_column or ""))] + [len(safe(x)) for x in set(labels or ())]) + 1
    )
    if style.header:
        yield netstat_header(style, host_width)
    for i, flow in enumerate(flows):
        label = labels[i] if labels is not None else None
        yield netstat_row(flow, style, label, host_width, names[i] if names is not None else None)


FLOW_COLUMNS = ("proto", "nat", "source", "nat_host", "destination", "state", "timeout")


def flow_record(
    flow: Flow, style: NetstatStyle, names: Optional[Mapping[str, str]] = None
) -> dict[str, Any]:
    """One flat record (table and CSV), the same fields the netstat view shows, escaped."""
    source, nat_host, dest = flow.shown()
    proto = flow.proto
    return {
        "proto": safe(proto),
        "nat": safe(flow.nat),
        "source": safe(endpoint(source[0], source[1], proto, style, names)),
        "nat_host": safe(endpoint(nat_host[0], nat_host[1], proto, style, names)),
        "destination": safe(endpoint(dest[0], dest[1], proto, style, names)),
        "state": safe(flow.display_state()),
        "timeout": flow.timeout,
    }


def write_flows(
    out: TextIO,
    fmt: str,
    flows: Sequence[Flow],
    style: NetstatStyle,
    targets: Optional[Sequence[dict[str, Any]]] = None,
    errors: Sequence[dict[str, Any]] = (),
    names: Optional[Sequence[Mapping[str, str]]] = None,
) -> None:
    """Write flows in one format. Fleet commands give each row's ``targets`` entry
    (``label``, ``name``, ``instance_id``, ``host``), each row's box's address ``names``,
    and the failed boxes as ``errors`` (``target``, ``kind``, ``error``), which become rows
    of their own."""
    labels = [t["label"] for t in targets] if targets is not None else None
    if fmt == "netstat":
        write_lines(out, netstat_lines(flows, style, labels, names))
        for e in errors:
            out.write(f"{_error_text(e, e['target']['label'] + '  ')}\n")
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
            record = flow_record(flow, style, names[i] if names is not None else None)
            if labels is not None:
                record = {"target": labels[i], **record}
            records.append(record)
        for e in errors:
            records.append({"target": e["target"]["label"], "state": _error_text(e)})
        columns = (("target",) if labels is not None else ()) + FLOW_COLUMNS
        write_records(out, fmt, records, columns)


def _error_text(error: dict[str, Any], prefix: str = "") -> str:
    """``ERROR kind: message`` of a failed box, escaped and cut (a box may have written it)."""
    return clip(f"{prefix}ERROR {error['kind']}: {error['error']}")
