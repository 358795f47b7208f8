"""netstat-nat text and flow records for the listing commands, on top of the output layer
(:mod:`natfleet.output`, which escapes every string).

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
from natfleet.output import (
    Column,
    clip,
    cut,
    ellipsis_for,
    is_terminal,
    safe,
    terminal_width,
    write_lines,
    write_output,
)

FORMATS = ("netstat", "table", "json", "jsonl", "csv")
PORTED = frozenset(("tcp", "udp", "udplite", "sctp", "dccp"))
ADDRESS_WIDTH = 31  # netstat-nat's address columns (41 with -x)
WIDE_ADDRESS_WIDTH = 41


@dataclass
class NetstatStyle:
    """netstat-nat's layout switches: -N (nat_host), -x (wide), -o (no header), -L/-R."""

    nat_host: bool = False
    wide: bool = False  # -x: 41-column addresses
    header: bool = True
    untranslated: bool = False  # -L / -R: "Source Address", no NAT-host column
    names: dict[str, str] = field(default_factory=dict)  # address -> name (without -n)
    service_names: bool = False  # port -> service name (without -n)
    host_column: Optional[str] = None  # fleet: the target label column heading
    limit: Optional[int] = None  # the terminal's width: address columns narrow to fit it


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


def _address_headers(style: NetstatStyle) -> list[str]:
    first = "Source Address" if style.untranslated else "NATed Address"
    if style.nat_host and not style.untranslated:
        return [first, "NAT-host Address", "Destination Address"]
    return [first, "Destination Address"]


def _default_widths(style: NetstatStyle) -> list[int]:
    width = WIDE_ADDRESS_WIDTH if style.wide else ADDRESS_WIDTH
    return [width] * len(_address_headers(style))


def netstat_header(
    style: NetstatStyle, host_width: int = 0, widths: Optional[Sequence[int]] = None
) -> str:
    """netstat-nat's header line (with natfleet's host column first in a fleet listing)."""
    widths = widths or _default_widths(style)
    cells = [_cell(style.host_column, host_width)] if style.host_column else []
    cells.append("Proto ")
    cells += [_cell(h, w) for h, w in zip(_address_headers(style), widths)]
    cells.append("State")
    return "".join(cells)


def netstat_cells(
    flow: Flow, style: NetstatStyle, names: Optional[Mapping[str, str]] = None
) -> tuple[str, list[str], str]:
    """(protocol, address cells, state) of one row, every cell escaped."""
    source, nat_host, dest = flow.shown()
    proto = flow.proto
    cells = [safe(endpoint(source[0], source[1], proto, style, names))]
    if style.nat_host and not style.untranslated:
        cells.append(safe(endpoint(nat_host[0], nat_host[1], proto, style, names)))
    cells.append(safe(endpoint(dest[0], dest[1], proto, style, names)))
    return safe(proto), cells, safe(flow.display_state())


def netstat_row(
    flow: Flow,
    style: NetstatStyle,
    label: Optional[str] = None,
    host_width: int = 0,
    names: Optional[Mapping[str, str]] = None,
    widths: Optional[Sequence[int]] = None,
) -> str:
    """One row of netstat-nat's fixed-width text (without the newline), every cell escaped;
    ``names``: the address names of this row's box (default ``style.names``); ``widths``:
    the address columns (default netstat-nat's 31, 41 with -x)."""
    return _join(
        netstat_cells(flow, style, names), label, host_width, widths or _default_widths(style)
    )


def _join(
    cells: tuple[str, list[str], str], label: Optional[str], host_width: int, widths: Sequence[int]
) -> str:
    proto, addresses, state = cells
    parts = [_cell(safe(label), host_width)] if label is not None else []
    parts.append(_cell(proto, 6))
    parts += [_cell(text, width) for text, width in zip(addresses, widths)]
    parts.append(state)
    return "".join(parts).rstrip()


def fitted_widths(
    rows: Sequence[tuple[str, list[str], str]], style: NetstatStyle, host_width: int
) -> list[int]:
    """netstat-nat's address widths, or, when a row would be wider than ``style.limit``
    (a terminal) and -x is not asked, each address column as wide as its longest cell (or
    header) and one space: the same columns, in fewer characters. A pipe or a file
    (no limit) always gets netstat-nat's widths."""
    widths = _default_widths(style)
    if style.limit is None or style.wide or not rows:
        return widths

    def line_width(ws: Sequence[int], row: tuple[str, list[str], str]) -> int:
        used = sum(max(w, len(text) + 1) for w, text in zip(ws, row[1]))
        return host_width + max(6, len(row[0]) + 1) + used + len(row[2])

    if max(line_width(widths, row) for row in rows) <= style.limit:
        return widths
    heads = _address_headers(style)
    return [
        min(
            widths[j],
            max([len(heads[j]) + 1 if style.header else 0] + [len(r[1][j]) + 1 for r in rows]),
        )
        for j in range(len(widths))
    ]


def netstat_lines(
    flows: Iterable[Flow],
    style: NetstatStyle,
    labels: Optional[Sequence[str]] = None,
    names: Optional[Sequence[Mapping[str, str]]] = None,
    host_width: Optional[int] = None,
) -> Iterator[str]:
    """netstat-nat's fixed-width text: Proto 6, address columns 31 (41 with -x), State;
    ``labels[i]`` and ``names[i]`` belong to the i-th flow (``host_width``: their column,
    default the longest label and a space). With ``style.limit`` (a terminal's width) the
    address columns narrow to their content when a row would not fit
    (:func:`fitted_widths`)."""
    if host_width is None:
        host_width = host_column_width(style, labels)
    if style.limit is None or style.wide:
        widths = _default_widths(style)
        if style.header:
            yield netstat_header(style, host_width, widths)
        for i, flow in enumerate(flows):
            label = labels[i] if labels is not None else None
            row = netstat_cells(flow, style, names[i] if names is not None else None)
            yield _join(row, label, host_width, widths)
        return
    rows = [
        netstat_cells(flow, style, names[i] if names is not None else None)
        for i, flow in enumerate(flows)
    ]
    widths = fitted_widths(rows, style, host_width)
    if style.header:
        yield netstat_header(style, host_width, widths)
    for i, row in enumerate(rows):
        yield _join(row, labels[i] if labels is not None else None, host_width, widths)


def host_column_width(style: NetstatStyle, labels: Optional[Sequence[str]]) -> int:
    """The fleet's host column: the longest label (escaped) and one space."""
    if labels is None and not style.host_column:
        return 0
    return max([len(safe(style.host_column or ""))] + [len(safe(x)) for x in set(labels or ())]) + 1


# --- flows as records (table, CSV) and rows (JSON, jsonl) ----------------------------------


def _port(port: Optional[str], proto: str) -> Optional[int]:
    return int(port) if proto in PORTED and port is not None and port.isdigit() else None


def flow_json(flow: Flow, target: Optional[Mapping[str, Any]] = None) -> dict[str, Any]:
    """A JSON row (docs/json.md "A row") with ``status`` (what the text shows: the TCP
    state, or UNREPLIED, ASSURED, REPLIED, ...) next to the kernel's ``state`` and
    ``flags``; fleet rows add ``target``."""
    row: dict[str, Any] = {}
    for key, value in flow.to_json().items():
        row[key] = value
        if key == "state":
            row["status"] = flow.display_state()
    if target is not None:
        row["target"] = dict(target)
    return row


def flow_record(
    flow: Flow,
    style: NetstatStyle,
    names: Optional[Mapping[str, str]] = None,
    target: Optional[Mapping[str, Any]] = None,
) -> dict[str, Any]:
    """One flat record of plain values (table and CSV): the box, ``status`` next to
    ``state`` and ``flags``, addresses and ports in their own columns (``src sport nat_ip
    nat_port dst dport``; names, without -n, in ``*_name``), and the display cells a table
    shows (``source``, ``nat_host``, ``destination``: ``addr:port``)."""
    (osrc, osp), (nat_ip, nat_port), (dst, dport) = flow.shown()
    proto = flow.proto
    shown = names if names is not None else style.names
    record: dict[str, Any] = {}
    if target is not None:
        record.update(
            target=target.get("label"),
            short_label=target.get("short_label") or target.get("label"),
            name=target.get("name") or None,
            instance_id=target.get("instance_id"),
        )
    record.update(
        proto=proto,
        l3=flow.l3,
        nat=flow.nat,
        status=flow.display_state(),
        state=flow.state,
        flags=flow.flags(),
        src=osrc,
        sport=_port(osp, proto),
        nat_ip=nat_ip,
        nat_port=_port(nat_port, proto),
        dst=dst,
        dport=_port(dport, proto),
        src_name=shown.get(osrc) if osrc else None,
        nat_name=shown.get(nat_ip) if nat_ip else None,
        dst_name=shown.get(dst) if dst else None,
        timeout=flow.timeout,
        source=endpoint(osrc, osp, proto, style, names),
        nat_host=endpoint(nat_ip, nat_port, proto, style, names),
        destination=endpoint(dst, dport, proto, style, names),
    )
    return record


def flow_columns(fleet: bool) -> list[Column]:
    """The columns of conns (``fleet``) and local: compact HOST PROTO NAT SOURCE NAT HOST
    DESTINATION STATUS TIMEOUT; ``--wide`` adds the full label, STATE, FLAGS and L3; CSV
    has every plain column."""
    columns = [Column("target", "HOST", short="short_label")] if fleet else []
    if fleet:
        columns += [Column("name", "NAME", table=False), Column("instance_id", "ID", table=False)]
    columns += [
        Column("proto", "PROTO"),
        Column("l3", "L3", wide=True),
        Column("nat", "NAT"),
        Column("source", "SOURCE", csv=False),
        Column("nat_host", "NAT HOST", csv=False),
        Column("destination", "DESTINATION", csv=False),
        Column("status", "STATUS"),
        Column("state", "STATE", wide=True),
        Column("flags", "FLAGS", wide=True),
    ]
    columns += [
        Column(key, key.upper(), table=False)
        for key in ("src", "sport", "nat_ip", "nat_port", "dst", "dport")
    ]
    columns.append(Column("timeout", "TIMEOUT", kind="int"))
    columns += [
        Column(key, key.upper(), table=False) for key in ("src_name", "nat_name", "dst_name")
    ]
    return columns


def error_line(error: Mapping[str, Any], label: str, host_width: int) -> str:
    """A failed box in netstat text: ``label  ERROR kind: message``, escaped and capped."""
    return _cell(safe(label), host_width) + clip(f"ERROR {error['kind']}: {error['error']}")


def write_flows(
    out: TextIO,
    fmt: str,
    flows: Sequence[Flow],
    style: NetstatStyle,
    targets: Optional[Sequence[Mapping[str, Any]]] = None,
    errors: Sequence[Mapping[str, Any]] = (),
    names: Optional[Sequence[Mapping[str, str]]] = None,
    *,
    command: str = "local",
    wide: bool = False,
    meta: Optional[Mapping[str, Any]] = None,
    counts: Optional[Sequence[str]] = None,
) -> None:
    """Write flows in one format. Fleet commands give each row's ``targets`` entry
    (``label``, ``short_label``, ``name``, ``instance_id``, ``host``), each row's box's
    address ``names``, and the failed boxes as ``errors`` (``target``, ``kind``, ``error``):
    one row each, in every format. Tables and netstat text show the short label (the full
    one with ``wide``); ``counts`` go above the text on a terminal."""
    box_names = names if names is not None else [style.names] * len(flows)
    if fmt == "netstat":
        write_netstat(out, flows, style, targets, errors, names, wide=wide, counts=counts)
    elif fmt in ("json", "jsonl"):
        rows = [
            flow_json(flow, targets[i] if targets is not None else None)
            for i, flow in enumerate(flows)
        ]
        write_output(out, fmt, command, [], [], meta=meta, errors=errors, rows=rows)
    else:
        records = [
            flow_record(flow, style, box_names[i], targets[i] if targets is not None else None)
            for i, flow in enumerate(flows)
        ]
        columns = flow_columns(targets is not None or bool(errors))
        write_output(
            out, fmt, command, records, columns, wide=wide, meta=meta, errors=errors, counts=counts
        )


def write_netstat(
    out: TextIO,
    flows: Sequence[Flow],
    style: NetstatStyle,
    targets: Optional[Sequence[Mapping[str, Any]]] = None,
    errors: Sequence[Mapping[str, Any]] = (),
    names: Optional[Sequence[Mapping[str, str]]] = None,
    *,
    wide: bool = False,
    counts: Optional[Sequence[str]] = None,
) -> None:
    """netstat-nat's text, fitted to ``out``'s terminal (:func:`fitted_widths`), the failed
    boxes as ``label  ERROR kind: message`` lines after the rows (cut to the terminal's
    width unless ``wide``), ``counts`` above on a terminal."""
    limit = terminal_width(out)
    if style.limit is None and not wide:
        style = NetstatStyle(**{**vars(style), "limit": limit})
    key = "label" if wide else "short_label"
    labels = [t.get(key) or t["label"] for t in targets] if targets is not None else None
    error_labels = [_target_label(e.get("target"), key) for e in errors]
    host_width = host_column_width(style, (labels or []) + error_labels)
    lines: list[str] = []
    if counts and is_terminal(out):
        lines += [safe(line) for line in counts]
    lines += netstat_lines(flows, style, labels, names, host_width)
    ellipsis = ellipsis_for(out)
    for error, label in zip(errors, error_labels):
        line = error_line(error, label, host_width)
        lines.append(cut(line, limit, ellipsis) if limit and not wide else line)
    write_lines(out, lines)


def _target_label(target: Any, key: str) -> str:
    if not isinstance(target, Mapping):
        return ""
    return str(target.get(key) or target.get("label") or "")
