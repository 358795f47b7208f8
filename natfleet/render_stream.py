"""Streamed fleet listings: netstat text, JSON lines, CSV and the JSON envelope written row by
row as the k-way merge (natfleet.aggregate.FleetStream) reaches them.

A merged row is a decoded wire row (a tuple of columns, natfleet.answer_wire) or a Flow.
Wire rows are written by per-box, per-shape templates made once (every cell escaped with
:func:`natfleet.output.safe` or encoded with the output layer's JSON and CSV rules when the
template is made); Flows go through natfleet.render's own functions. Both give the same
text (tests/test_stream.py holds them to it). Nothing is kept but the merge front: a
terminal's netstat text (fitted to its width: every row is needed first) and ``--format
table`` are the exceptions, built as natfleet.render builds them.

Example:
    >>> from natfleet import api
    >>> from natfleet.aggregate import merge_stream
    >>> targets, _ = api.resolve_targets(inputs=["tests/data/tables/lab-box.txt"])
    >>> stream = merge_stream(api.read_fleet(targets, api.list_request()), limit=1)
    >>> write_stream(sys.stdout, "jsonl", stream, NetstatStyle(), [])  # doctest: +ELLIPSIS
    {"proto":"icmp","l3":"ipv4","state":null,"status":"REPLIED","nat":"snat",...}
"""

from __future__ import annotations

import csv
import io
import itertools
import sys  # noqa: F401 (the example uses it)
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, Callable, Optional, TextIO

from natfleet.aggregate import FleetStream, StreamBox
from natfleet.answer_wire import EXTRA_AT, Shape, WireRows
from natfleet.output import (
    csv_cell,
    cut,
    ellipsis_for,
    envelope,
    error_rows,
    is_terminal,
    json_line,
    json_text,
    plain_value,
    safe,
    terminal_width,
    warn,
    write_output,
)
from natfleet.render import (
    NetstatStyle,
    _address_headers,
    _cell,
    _default_widths,
    _service,
    _target_label,
    error_line,
    flow_columns,
    flow_json,
    flow_record,
    host_column_width,
    netstat_cells,
    netstat_header,
    netstat_row,
)

STREAMED = ("netstat", "jsonl", "csv", "json")  # the formats written as the merge goes
Line = Callable[[Any], str]


AT = 2  # a merged item is (key, box, shape, osrc, odst, rsrc, rdst, osp, odp, rsp, rdp, ...)
SRC, SPORT, TIMEOUT = AT + 1, AT + 5, AT + 9  # positions in an item of a wire row


def _nat_and_dst(nat: str) -> tuple[Optional[tuple[int, int]], tuple[int, int]]:
    """(address, port) positions in a merged item of the NAT host (None: none) and of the
    destination of a wire row, as :meth:`natfleet.agent.Flow.shown` lays them out."""
    if nat == "snat":
        return (AT + 4, AT + 8), (AT + 2, AT + 6)
    if nat == "dnat":
        return (AT + 2, AT + 6), (AT + 3, AT + 7)
    if nat == "snat+dnat":
        return (AT + 4, AT + 8), (AT + 3, AT + 7)
    return None, (AT + 2, AT + 6)


class _Cache:
    """Per-box, per-shape line makers for wire rows (or cell makers), made on first use."""

    def __init__(self, make: Callable[[StreamBox, Shape], Callable[[tuple], Any]]) -> None:
        self.make = make
        self.made: dict[int, list[Optional[Callable[[tuple], Any]]]] = {}  # box -> by shape

    def line(self, box: StreamBox, item: tuple) -> Any:
        """The line of a merged item of a wire row, its maker made (and kept) first."""
        rows = box.rows
        assert isinstance(rows, WireRows)
        shapes = rows.tables.shapes
        makers = self.made.setdefault(box.index, [None] * len(shapes))
        maker = makers[item[AT]]
        if maker is None:
            shape = shapes[item[AT]]
            assert shape is not None
            maker = makers[item[AT]] = self.make(box, shape)
        return maker(item)

    def lines(self, stream: FleetStream, other: Callable[[StreamBox, Any], str]) -> Iterator[str]:
        """The merged rows' lines: wire rows by their maker, Flows by ``other``."""
        made, line = self.made, self.line
        for item in stream.merged():
            box = item[1]
            if len(item) > 3:  # a wire row
                makers = made.get(box.index)
                maker = makers[item[AT]] if makers is not None else None
                yield line(box, item) if maker is None else maker(item)
            else:
                yield other(box, item[AT])


# --------------------------------------------------------------------------- netstat


class NetstatLines:
    """netstat-nat text of merged rows with netstat-nat's column widths (a pipe or file)."""

    def __init__(
        self,
        style: NetstatStyle,
        labels: dict[int, str],
        host_width: int,
        widths: Optional[list[int]] = None,
    ) -> None:
        self.style = style
        self.labels = labels
        self.host_width = host_width
        self.widths = widths or _default_widths(style)
        self.cache = _Cache(self._maker)
        self.cell_cache = _Cache(self._cells_maker)
        self._texts: dict[int, list[str]] = {}

    def fitted(self, stream: FleetStream) -> list[int]:
        """:func:`natfleet.render.fitted_widths` of every row, from a first pass over the
        merged rows that keeps only the widest cells (a terminal's text, in bounded memory)."""
        style, widths = self.style, _default_widths(self.style)
        longest = [0] * len(widths)
        too_wide = False
        limit = style.limit or 0
        for item in stream.merged():
            box = item[1]
            if len(item) > 3:
                proto, cells, state = self.cell_cache.line(box, item)
            else:
                proto, cells, state = netstat_cells(item[AT], style, box.names)
            for j, text in enumerate(cells):
                if len(text) + 1 > longest[j]:
                    longest[j] = len(text) + 1
            if not too_wide:
                used = sum(max(w, len(text) + 1) for w, text in zip(widths, cells))
                too_wide = self.host_width + max(6, len(proto) + 1) + used + len(state) > limit
        if not too_wide:
            return widths
        heads = _address_headers(style)
        return [
            min(widths[j], max(len(heads[j]) + 1 if style.header else 0, longest[j]))
            for j in range(len(widths))
        ]

    def _cells_maker(self, box: StreamBox, shape: Shape) -> Callable[[tuple], Any]:
        """(protocol, address cells, state) of a wire row, as render.netstat_cells."""
        texts = self._addresses(box)
        ports = _port_texts(self.style, shape.proto)
        proto, state = safe(shape.proto), safe(shape.status)
        nat, (da, dp) = _nat_and_dst(shape.nat)
        with_nat = self.style.nat_host and not self.style.untranslated

        def cells(row: tuple) -> tuple[str, list[str], str]:
            found = [texts[row[SRC]] + ":" + ports[row[SPORT]]]
            if with_nat:
                found.append("" if nat is None else texts[row[nat[0]]] + ":" + ports[row[nat[1]]])
            found.append(texts[row[da]] + ":" + ports[row[dp]])
            return proto, found, state

        return cells

    def _addresses(self, box: StreamBox) -> list[str]:
        """Each address of the box's table as its endpoint text before ``:port``."""
        texts = self._texts.get(box.index)
        if texts is None:
            rows = box.rows
            assert isinstance(rows, WireRows)
            names = box.names
            texts = []
            for addr in rows.tables.addresses:
                shown = names.get(addr, addr)
                texts.append(safe(f"[{shown}]" if ":" in shown else shown))
            self._texts[box.index] = texts
        return texts

    def _maker(self, box: StreamBox, shape: Shape) -> Line:
        style = self.style
        texts = self._addresses(box)
        ports = _port_texts(style, shape.proto)
        prefix = _cell(safe(self.labels[box.index]), self.host_width) + _cell(safe(shape.proto), 6)
        state = safe(shape.status)  # never empty: no trailing space to strip
        nat, (da, dp) = _nat_and_dst(shape.nat)
        ws, *rest = self.widths
        wd = rest[-1]
        if not (style.nat_host and not style.untranslated):

            def line(row: tuple) -> str:
                a = texts[row[SRC]] + ":" + ports[row[SPORT]]
                b = texts[row[da]] + ":" + ports[row[dp]]
                return (
                    prefix
                    + (a.ljust(ws) if len(a) < ws else a + " ")
                    + (b.ljust(wd) if len(b) < wd else b + " ")
                    + state
                )

            return line
        wn = rest[0]
        na, np_ = nat if nat is not None else (0, 0)

        def natted(row: tuple) -> str:
            a = texts[row[SRC]] + ":" + ports[row[SPORT]]
            n = "" if nat is None else texts[row[na]] + ":" + ports[row[np_]]
            b = texts[row[da]] + ":" + ports[row[dp]]
            return (
                prefix
                + (a.ljust(ws) if len(a) < ws else a + " ")
                + (n.ljust(wn) if len(n) < wn else n + " ")
                + (b.ljust(wd) if len(b) < wd else b + " ")
                + state
            )

        return natted

    def lines(self, stream: FleetStream) -> Iterator[str]:
        return self.cache.lines(stream, self.other)

    def other(self, box: StreamBox, row: Any) -> str:
        return netstat_row(
            row, self.style, self.labels[box.index], self.host_width, box.names, self.widths
        )


_PORT_TEXT = [str(n) for n in range(65536)]


class _Services(dict):
    """port -> its service name (escaped), or the number, looked up once each."""

    def __init__(self, proto: str) -> None:
        super().__init__()
        self.proto = proto

    def __missing__(self, port: int) -> str:
        text = self[port] = safe(_service(_PORT_TEXT[port], self.proto))
        return text


def _port_texts(style: NetstatStyle, proto: str) -> Any:
    """What ``texts[port]`` shows of a port: the number, or its service name (without -n)."""
    return _Services(proto) if style.service_names else _PORT_TEXT


def _labels(stream: FleetStream, wide: bool) -> dict[int, str]:
    key = "label" if wide else "short_label"
    return {box.index: box.target.get(key) or box.target["label"] for box in stream.boxes}


def write_netstat_stream(
    out: TextIO,
    stream: FleetStream,
    style: NetstatStyle,
    errors: list[dict[str, Any]],
    *,
    wide: bool = False,
    counts: Optional[Sequence[str]] = None,
) -> None:
    """netstat-nat text as the merge goes, as :func:`natfleet.render.write_netstat` writes
    it; the failed boxes' lines after the rows (those that failed during the merge too). On a
    terminal the address columns are fitted to the widest row (render.fitted_widths): a
    first pass over the rows measures them, the second writes."""
    limit = terminal_width(out)
    if style.limit is None and not wide:
        style = NetstatStyle(**{**vars(style), "limit": limit})
    labels = _labels(stream, wide)
    key = "label" if wide else "short_label"
    error_labels = [_target_label(e.get("target"), key) for e in errors]
    shown = [labels[box.index] for box in stream.boxes if len(box.rows)]
    host_width = host_column_width(style, shown + error_labels)
    lines = NetstatLines(style, labels, host_width)
    if style.limit is not None and not style.wide:
        lines = NetstatLines(style, labels, host_width, lines.fitted(stream))

    def text() -> Iterator[str]:
        if counts and is_terminal(out):
            yield from (safe(line) for line in counts)
        if style.header:
            yield netstat_header(style, host_width, lines.widths)
        yield from lines.lines(stream)
        ellipsis = ellipsis_for(out)
        failed = [(e, label) for e, label in zip(errors, error_labels)]
        failed += [(e, _target_label(e.get("target"), key)) for e in stream.errors()]
        for error, label in failed:
            line = error_line(error, label, host_width)
            yield cut(line, limit, ellipsis) if limit and not wide else line

    _write_lines(out, text())


def _flow(box: StreamBox, row: Any) -> Any:
    """A merged row as a Flow (a wire row becomes its CheckedFlow)."""
    rows = box.rows
    return rows.to_flow(row) if isinstance(rows, WireRows) else row


# --------------------------------------------------------------------------- JSON


def _fragment(value: Any) -> str:
    """``value`` as compact strict JSON (the output layer's), ready for a %-template."""
    return json_line(value)[:-1].replace("%", "%%")


def _filled(template: str, shape: Shape, a: list[str]) -> Line:
    """A wire row's JSON text: ``template`` filled with its addresses and ports, then the
    timeout (when the shape has one) and the extra counters."""
    extra = [AT + EXTRA_AT[k] for k, v in shape.extras if v is None]
    if shape.timeout and not extra:  # the usual row, spelt out

        def usual(r: tuple) -> str:
            return template % (
                a[r[3]],
                a[r[4]],
                r[7],
                r[8],
                a[r[5]],
                a[r[6]],
                r[9],
                r[10],
                r[11],
            )  # fmt: skip  (AT + 1 ... AT + 9)

        return usual
    timeout = shape.timeout

    def line(r: tuple) -> str:
        head: tuple = (a[r[3]], a[r[4]], r[7], r[8], a[r[5]], a[r[6]], r[9], r[10])
        if timeout:
            head += (r[TIMEOUT],)
        return template % (head + tuple(r[i] for i in extra))

    return line


class JsonRows:
    """Merged rows as compact JSON objects: :func:`natfleet.render.flow_json` with the
    box's ``target``, by template for wire rows."""

    def __init__(self) -> None:
        self.cache = _Cache(self._maker)

    def _maker(self, box: StreamBox, shape: Shape) -> Line:
        rows = box.rows
        assert isinstance(rows, WireRows)
        addresses = rows.tables.addresses
        template = (
            '{"proto":' + _fragment(shape.proto) + ',"l3":' + _fragment(shape.l3)
            + ',"state":' + _fragment(shape.state) + ',"status":' + _fragment(shape.status)
            + ',"nat":' + _fragment(shape.nat)
            + ',"orig":{"src":"%s","dst":"%s","sport":%d,"dport":%d}'
            + ',"reply":{"src":"%s","dst":"%s","sport":%d,"dport":%d}'
            + ',"flags":' + _fragment(list(shape.flags))
            + (',"timeout":%d' if shape.timeout else "")
        )  # fmt: skip
        for key, value in shape.extras:
            template += "," + _fragment(key) + ":" + ("%d" if value is None else _fragment(value))
        template += ',"target":' + _fragment(dict(box.target)) + "}"
        return _filled(template, shape, addresses)

    def lines(self, stream: FleetStream) -> Iterator[str]:
        return self.cache.lines(stream, self.other)

    def other(self, box: StreamBox, row: Any) -> str:
        return json_line(flow_json(row, box.target))[:-1]


def write_jsonl_stream(out: TextIO, stream: FleetStream, errors: list[dict[str, Any]]) -> None:
    """One JSON object a line, as the merge goes; then one per failed box."""
    rows = JsonRows()

    def text() -> Iterator[str]:
        yield from rows.lines(stream)
        for error in errors + stream.errors():
            yield json_line(error)[:-1]

    _write_lines(out, text())


def write_json_stream(
    out: TextIO,
    stream: FleetStream,
    errors: list[dict[str, Any]],
    command: str,
    meta: Optional[Mapping[str, Any]],
) -> None:
    """The JSON envelope (:func:`natfleet.output.envelope`), written as the merge goes:
    the envelope's keys as :func:`natfleet.output.json_text` indents them, each row one
    compact object on its line, then ``errors`` (those that failed during the merge too)."""
    head = json_text(envelope(command, [], meta, []))
    rows = JsonRows()

    def text() -> Iterator[str]:
        yield head[: head.rindex('"rows": []')] + '"rows": ['
        first = True
        for line in rows.lines(stream):
            yield ("\n    " if first else ",\n    ") + line
            first = False
        tail = json_text({"errors": errors + stream.errors()})  # '{\n  "errors": ...\n}\n'
        yield ("\n  " if not first else "") + "],\n  " + tail[4:]

    _write_pieces(out, text())


def _write_lines(out: TextIO, lines: Iterator[str], batch: int = 8192) -> None:
    """Write lines, each ended by a newline, ``batch`` lines a write (taken in C)."""
    while True:
        taken = list(itertools.islice(lines, batch))
        if not taken:
            return
        taken.append("")
        out.write("\n".join(taken))


def _write_pieces(out: TextIO, pieces: Iterator[str], batch: int = 8192) -> None:
    """Write text pieces as they are (no line ends added), in large writes."""
    pending: list[str] = []
    for piece in pieces:
        pending.append(piece)
        if len(pending) >= batch:
            out.write("".join(pending))
            pending.clear()
    out.write("".join(pending))


# --------------------------------------------------------------------------- CSV


def _csv_text(cells: Sequence[Any]) -> str:
    """Cells as one CSV line (the csv module's quoting), without the line end."""
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerow(cells)
    return buffer.getvalue()[:-1]


class CsvRows:
    """Merged rows as CSV lines of :func:`natfleet.render.flow_record`'s plain values."""

    def __init__(self, style: NetstatStyle, keys: list[str]) -> None:
        self.style = style
        self.keys = keys
        self.cache = _Cache(self._maker)
        self.tail = "," * (len(keys) - 19)  # the error columns, empty on a row
        self._cells: dict[int, tuple[list[str], list[str]]] = {}

    def _address_cells(self, box: StreamBox) -> tuple[list[str], list[str]]:
        """Each address's CSV cell, and its name's (empty when it has none)."""
        cells = self._cells.get(box.index)
        if cells is None:
            rows = box.rows
            assert isinstance(rows, WireRows)
            addresses = rows.tables.addresses
            names = box.names
            plain = [_csv_text([plain_value(a)]) for a in addresses]
            named = [
                _csv_text([plain_value(names.get(a))]) if a in names else "" for a in addresses
            ]
            cells = self._cells[box.index] = (plain, named)
        return cells

    def _maker(self, box: StreamBox, shape: Shape) -> Line:
        target = box.target
        head = [
            target.get("label"),
            target.get("name") or None,
            target.get("instance_id"),
            shape.proto,
            shape.l3,
            shape.nat,
            shape.status,
            shape.state,
            list(shape.flags),
        ]
        prefix = _csv_text([plain_value(v) for v in head]) + ","
        plain, named = self._address_cells(box)
        nat, (da, dp) = _nat_and_dst(shape.nat)
        timeout = shape.timeout
        tail = self.tail

        def line(row: tuple) -> str:
            left = row[SRC]
            right = row[da]
            t = str(row[TIMEOUT]) if timeout else ""
            if nat is None:
                middle = ",,"
                nat_name = ""
            else:
                middle = plain[row[nat[0]]] + "," + _PORT_TEXT[row[nat[1]]] + ","
                nat_name = named[row[nat[0]]]
            return (
                f"{prefix}{plain[left]},{row[SPORT]},{middle}{plain[right]},{row[dp]},{t},"
                f"{named[left]},{nat_name},{named[right]}{tail}"
            )

        return line

    def lines(self, stream: FleetStream) -> Iterator[str]:
        return self.cache.lines(stream, self.other)

    def other(self, box: StreamBox, row: Any) -> str:
        record = flow_record(row, self.style, box.names, box.target)
        return _csv_text([plain_value(record.get(k)) for k in self.keys])


def write_csv_stream(
    out: TextIO, stream: FleetStream, style: NetstatStyle, errors: list[dict[str, Any]]
) -> None:
    """CSV of every merged row, then a row per failed box. The header has ``error`` and
    ``error_kind`` when a box failed before the merge; a box that fails during it (a bug)
    is said on stderr, its rows so far printed."""
    columns = flow_columns(True)
    if errors:
        keys = [c.key for c in columns if c.csv] + ["error", "error_kind"]
    else:
        keys = [c.key for c in columns if c.csv]
    out.write(_csv_text([csv_cell(k) for k in keys]) + "\n")
    rows = CsvRows(style, keys)

    def text() -> Iterator[str]:
        yield from rows.lines(stream)
        for record in error_rows(errors + (stream.errors() if errors else []), columns):
            yield _csv_text([plain_value(record.get(k)) for k in keys])

    _write_lines(out, text())
    if not errors:
        for error in stream.errors():
            warn(f"{error['target']['label']}: {error['kind']}: {error['error']}")


# --------------------------------------------------------------------------- any format


def write_stream(
    out: TextIO,
    fmt: str,
    stream: FleetStream,
    style: NetstatStyle,
    errors: list[dict[str, Any]],
    *,
    command: str = "conns",
    wide: bool = False,
    meta: Optional[Mapping[str, Any]] = None,
    counts: Optional[Sequence[str]] = None,
) -> None:
    """A fleet listing in ``fmt``: netstat, jsonl, csv and json streamed as the merge goes;
    ``table`` (columns fitted to every row) built in memory by natfleet.render."""
    if fmt == "netstat":
        write_netstat_stream(out, stream, style, errors, wide=wide, counts=counts)
    elif fmt == "jsonl":
        write_jsonl_stream(out, stream, errors)
    elif fmt == "csv":
        write_csv_stream(out, stream, style, errors)
    elif fmt == "json":
        write_json_stream(out, stream, errors, command, meta)
    else:
        flows, targets, names = [], [], []
        for box, row in stream:
            flows.append(_flow(box, row))
            targets.append(box.target)
            names.append(box.names)
        records = [flow_record(flow, style, names[i], targets[i]) for i, flow in enumerate(flows)]
        write_output(
            out,
            fmt,
            command,
            records,
            flow_columns(True),
            wide=wide,
            meta=meta,
            errors=errors + stream.errors(),
            counts=counts,
        )
