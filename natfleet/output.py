"""The one output layer: every value natfleet writes to a terminal, a file or a log becomes
text here, and only here.

- :func:`safe` escapes, visibly, every character that is not printable: C0 controls
  (ESC, CR, LF, TAB, ...), DEL, C1 controls, bidi overrides, embeddings, isolates and marks,
  line and paragraph separators, and the rest of Unicode's unprintables. A box or AWS string
  can neither move the cursor, write the clipboard, reorder a line nor forge a row.
- :func:`csv_cell` also neutralises spreadsheet formulas (a leading ``= + - @`` TAB or CR).
- :func:`json_text` is strict JSON: ASCII only, no NaN/Infinity, datetimes as ISO 8601 UTC.
- :func:`warn` is the one way to say something on stderr; :class:`SafeLogFormatter` does the
  same for log records.
- :func:`write_output` is every record command's output (``--format table|json|jsonl|csv``,
  :func:`add_output_options`): tables of :class:`Column` fitted to the terminal, one JSON
  envelope (docs/json.md), one JSON object a line, CSV of plain values.

Example:
    >>> safe("nat-a\\x1b]52;c;cm0gLXJmIH4=\\x07\\u202egnp.exe\\nfake row")
    'nat-a\\\\x1b]52;c;cm0gLXJmIH4=\\\\x07\\\\u202egnp.exe\\\\nfake row'
    >>> csv_cell("=HYPERLINK(1)"), csv_cell(-3), csv_cell(None)
    ("'=HYPERLINK(1)", -3, '')
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import datetime as dt
import decimal
import io  # noqa: F401 (the examples use it)
import json
import logging
import os
import sys
import unicodedata
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, TextIO, Union

from natfleet.agent import printable
from natfleet.limits import MESSAGE_CAP

OUTPUT_FORMATS = ("table", "json", "jsonl", "csv")
ENVELOPE_VERSION = 1  # the "natfleet" key of every JSON document (docs/json.md)
ENVELOPE_KEYS = ("natfleet", "command", "generated", "rows", "errors")
GAP = "  "  # between table columns
MIN_SHRUNK = 8  # a shrink column is cut to no less than this (or its header)
ELLIPSIS = "\u2026"
KINDS = ("text", "int", "num", "pct", "seconds", "bytes")
NO_DATA = "no data"  # a metric without points: never shown as 0
SPARKS = "▁▂▃▄▅▆▇█"
SPARK_WIDTH = 24
MESSAGE_LIMIT = MESSAGE_CAP  # characters of one stderr or log message (escaped) before it is cut
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")  # OWASP CSV injection
Cell = Union[str, int, float]


# --- escaping -----------------------------------------------------------------------------


def _escape(char: str) -> str:
    r"""One unprintable character as Python writes it: ``\n``, ``\x1b``, ``\u202e``."""
    return char.encode("unicode_escape").decode("ascii")


def safe(text: object) -> str:
    r"""``text`` (``str()`` of it when not a string) with every unprintable character
    escaped visibly; printable Unicode stays as it is. Escaped text is printable, so
    ``safe(safe(x)) == safe(x)``.

    "Unprintable" is :meth:`str.isprintable` false: categories Cc (C0, DEL, C1), Cf (bidi
    overrides U+202A-202E, isolates U+2066-2069, marks U+200E/F and U+061C, zero widths),
    Zl/Zp (U+2028/9), Zs other than the space, Co, Cs and Cn.

    Example:
        >>> safe("ok é €"), safe("a\tb\rc\x7f\x9b\u2028")
        ('ok é €', 'a\\tb\\rc\\x7f\\x9b\\u2028')
    """
    return printable(text if isinstance(text, str) else str(text))


def clip(text: object, limit: int = MESSAGE_LIMIT) -> str:
    """:func:`safe` text of at most ``limit`` characters, then ``... (N more characters)``
    (N counts the characters of ``text`` left out). Cheap on a 50 MB string.

    Example:
        >>> clip("x" * 30, 10)
        'xxxxxxxxxx... (20 more characters)'
    """
    if not isinstance(text, str):
        text = str(text)
    if len(text) <= limit and text.isprintable():
        return text
    pieces: list[str] = []
    used = taken = 0
    for char in text[:limit]:
        piece = char if char.isprintable() else _escape(char)
        if used + len(piece) > limit:
            break
        pieces.append(piece)
        used += len(piece)
        taken += 1
    rest = len(text) - taken
    return "".join(pieces) + (f"... ({rest} more characters)" if rest else "")


def iso_time(when: dt.datetime) -> str:
    """A time as ISO 8601 UTC with ``Z`` (a naive time is taken as UTC already).

    Example:
        >>> iso_time(dt.datetime(2026, 12, 1, 16, 9, 37, 279812,
        ...                      tzinfo=dt.timezone(dt.timedelta(hours=1))))
        '2026-12-01T15:09:37Z'
    """
    if when.tzinfo is not None:
        when = when.astimezone(dt.timezone.utc)
    return when.replace(tzinfo=None, microsecond=0).isoformat() + "Z"


# --- cells --------------------------------------------------------------------------------


def _flat(value: Any, prefix: str = "") -> Iterable[str]:
    """``key=value`` items of a mapping, nested keys joined with ``.``."""
    for key, item in value.items():
        name = f"{prefix}{key}"
        if isinstance(item, Mapping):
            yield from _flat(item, name + ".")
        else:
            yield f"{name}={_plain(item, ';')}"


def _plain(value: Any, sep: str) -> str:
    """A scalar, list or mapping as unescaped text (lists joined with ``sep``)."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (str, int, float)):
        return str(value)
    if isinstance(value, dt.datetime):
        return iso_time(value)
    if isinstance(value, Mapping):
        return ";".join(_flat(value))
    if isinstance(value, (list, tuple)):
        return sep.join(_plain(v, ",") for v in value)
    raise TypeError(f"natfleet cannot write a {type(value).__name__} as text: {value!r:.80}")


def csv_cell(value: Any) -> Cell:
    """A CSV cell: numbers stay numbers, None is empty, booleans ``true``/``false``, times
    ISO 8601 UTC, lists joined with ``;``, mappings as ``key=value;key=value`` (nested keys
    ``a.b``); text escaped (:func:`safe`) and a leading ``= + - @`` TAB or CR made inert with
    ``'`` (OWASP). Any other type is a bug: TypeError.

    Example:
        >>> csv_cell(["tag:Role=nat", "@route"]), csv_cell({"drop": 1, "eth0": {"x": 2}})
        ('tag:Role=nat;@route', 'drop=1;eth0.x=2')
        >>> csv_cell("-1+2"), csv_cell(0.5), csv_cell(True)
        ("'-1+2", 0.5, 'true')
    """
    kind = type(value)
    if kind is int or kind is float:
        return value
    raw = value if kind is str else _plain(value, ";")
    text = safe(raw)
    return "'" + text if raw.startswith(FORMULA_STARTS) else text


# --- writers ------------------------------------------------------------------------------


def _json_default(value: Any) -> Any:
    if isinstance(value, dt.datetime):
        return iso_time(value)
    raise TypeError(f"natfleet cannot write a {type(value).__name__} as JSON: {value!r:.80}")


def json_text(data: Any) -> str:
    """natfleet's JSON: indented, ASCII only (every other character as ``\\uXXXX``, DEL
    too), strict (NaN or Infinity raise ValueError: the boundary rejects them earlier),
    datetimes as ISO 8601 UTC, any other non-JSON type a TypeError; a final newline.

    Example:
        >>> print(json_text({"name": "nat\\u202e\\x7f", "at": dt.datetime(2026, 12, 1)}), end="")
        {
          "name": "nat\\u202e\\u007f",
          "at": "2026-12-01T00:00:00Z"
        }
    """
    text = json.dumps(data, indent=2, ensure_ascii=True, allow_nan=False, default=_json_default)
    # DEL is the one ASCII control json.dumps leaves; it can only occur inside a string
    return text.replace("\x7f", "\\u007f") + "\n"


def write_json(out: TextIO, data: Any) -> None:
    """Write :func:`json_text` of ``data``."""
    out.write(json_text(data))


def write_lines(out: TextIO, lines: Iterable[str]) -> None:
    """Write text lines in large chunks (a 250,000-row listing stays fast). The lines are
    written as given: their cells were escaped where they were made."""
    batch: list[str] = []
    for line in lines:
        batch.append(line)
        if len(batch) >= 8192:
            out.write("\n".join(batch) + "\n")
            batch.clear()
    if batch:
        out.write("\n".join(batch) + "\n")


def warn(message: object, out: Optional[TextIO] = None) -> None:
    """One line ``natfleet: <message>`` on stderr (or ``out``): escaped, and cut after
    :data:`MESSAGE_LIMIT` characters with ``... (N more characters)``.

    Example:
        >>> warn("nat-b: agent: \\x1b[2Jhost key CHANGED\\n", out=sys.stdout)
        natfleet: nat-b: agent: \\x1b[2Jhost key CHANGED\\n
    """
    (out or sys.stderr).write(f"natfleet: {clip(message)}\n")


class SafeLogFormatter(logging.Formatter):
    """A logging formatter whose message is one escaped, capped line, and whose exception
    and stack text are escaped line by line (an SSH banner or an AWS message in a log
    record cannot forge lines or drive the terminal).

    Example:
        >>> handler = logging.StreamHandler()
        >>> handler.setFormatter(SafeLogFormatter("natfleet: %(levelname)s: %(message)s"))
    """

    def format(self, record: logging.LogRecord) -> str:
        record.message = clip(record.getMessage())
        if self.usesTime():
            record.asctime = self.formatTime(record, self.datefmt)
        text = self.formatMessage(record)
        if record.exc_info:
            text += "\n" + self._lines(self.formatException(record.exc_info))
        elif record.exc_text:
            text += "\n" + self._lines(record.exc_text)
        if record.stack_info:
            text += "\n" + self._lines(self.formatStack(record.stack_info))
        return text

    @staticmethod
    def _lines(text: str) -> str:
        return "\n".join(safe(line) for line in text.split("\n"))


LOG_FORMAT = "natfleet: %(levelname)s: %(message)s"


def log_handler(stream: Optional[TextIO] = None) -> logging.Handler:
    """A stderr (or ``stream``) log handler with :class:`SafeLogFormatter`, for
    ``logging.basicConfig(handlers=[log_handler()])``."""
    handler = logging.StreamHandler(stream)
    handler.setFormatter(SafeLogFormatter(LOG_FORMAT))
    return handler


# --- numbers as text ----------------------------------------------------------------------


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


# --- the output interface of every command: columns, tables that fit, one JSON envelope ---


@dataclass(frozen=True)
class Column:
    """One output column of a record command.

    ``key``: the record key (also the CSV header and the JSON key); ``header``: the table
    heading, UPPER CASE (``PORT PRESSURE``); ``wide``: shown in tables only with ``--wide``
    (CSV and JSON always have it); ``shrink``: free text a table may cut with ``…`` to fit
    the terminal. Keywords beyond those:

    - ``kind``: how a table shows a number: ``int``, ``num`` (2 decimals), ``pct``
      (``0.05%``), ``seconds`` (``1.25s``), ``bytes`` (``1.5MB``), ``text`` (default). CSV
      and JSON always get the plain number.
    - ``short``: the record key a compact table shows instead (``--wide``, CSV and JSON
      have ``key``): a target's short label in place of ``Name (i-0abc)``.
    - ``cell``: a function of the whole record giving the table cell (e.g. ``PORT
      PRESSURE`` made of six plain CSV columns); CSV still writes ``record[key]``.
    - ``csv=False``: a table-only column (display text, e.g. ``addr:port``); it is left out
      of CSV and of the default JSON rows. ``table=False``: a CSV and JSON-only column.

    Example:
        >>> Column("fill_pct", "FILL", kind="pct").text({"fill_pct": 0.05})
        '0.05%'
    """

    key: str
    header: str
    wide: bool = False
    shrink: bool = False
    kind: str = "text"
    short: Optional[str] = None
    cell: Optional[Callable[[Mapping[str, Any]], Any]] = field(default=None, compare=False)
    csv: bool = True
    table: bool = True

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"column {self.key}: kind {self.kind!r} is not one of {KINDS}")

    def value(self, record: Mapping[str, Any], wide: bool = False) -> Any:
        """What a table shows for ``record`` before formatting."""
        if self.cell is not None:
            return self.cell(record)
        if self.short is not None and not wide and record.get(self.short) is not None:
            return record.get(self.short)
        return record.get(self.key)

    def text(self, record: Mapping[str, Any], wide: bool = False) -> str:
        """The escaped table cell for ``record``."""
        return format_cell(self.value(record, wide), self.kind)


def format_cell(value: Any, kind: str = "text") -> str:
    """A table cell: ``-`` for None, ``yes``/``no``, numbers by ``kind`` (every table shows
    a percentage as ``0.05%``), times ISO 8601 UTC, lists joined with ``, ``; escaped.

    Example:
        >>> format_cell(0.05, "pct"), format_cell(720.0, "int"), format_cell(None)
        ('0.05%', '720', '-')
        >>> format_cell(1.5, "seconds"), format_cell(True), format_cell("a\\x1b[2J")
        ('1.50s', 'yes', 'a\\\\x1b[2J')
    """
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, (int, float)):
        if kind == "pct":
            return f"{value:.2f}%"
        if kind == "seconds":
            return f"{value:.2f}s"
        if kind == "bytes":
            return human(value, "B")
        if kind == "int" or isinstance(value, int):
            return str(int(round(value))) if isinstance(value, float) else str(value)
        return f"{value:.2f}"
    if isinstance(value, (list, tuple)):
        return safe(", ".join(_plain(v, ", ") for v in value))
    return safe(_plain(value, ", "))


def text_width(text: str) -> int:
    """Terminal columns ``text`` takes: East Asian wide and full-width characters take 2,
    combining marks 0.

    >>> text_width("nat-a"), text_width("日本"), text_width("e\\u0301")
    (5, 4, 1)
    """
    if text.isascii():
        return len(text)
    return sum(_char_width(c) for c in text)


def _char_width(char: str) -> int:
    if unicodedata.combining(char):
        return 0
    return 2 if unicodedata.east_asian_width(char) in ("W", "F") else 1


def cut(text: str, width: int, ellipsis: str = ELLIPSIS) -> str:
    """``text`` in at most ``width`` columns, ending in ``…`` when it was cut.

    >>> cut("connection refused by root@198.19.255.11:22", 20)
    'connection refused …'
    """
    if text_width(text) <= width:
        return text
    room, used, kept = width - text_width(ellipsis), 0, []
    for char in text:
        used += _char_width(char)
        if used > room:
            break
        kept.append(char)
    return "".join(kept) + ellipsis


def is_terminal(stream: Any) -> bool:
    """Whether ``stream`` is a terminal (False for anything that cannot say)."""
    try:
        return bool(stream.isatty())
    except (AttributeError, OSError, ValueError):
        return False


def terminal_width(stream: Any) -> Optional[int]:
    """How many columns output to ``stream`` may take: ``COLUMNS`` when set (as
    :func:`shutil.get_terminal_size` honours it), else the terminal's width, else None
    (a pipe or a file: nothing is cut).

    >>> terminal_width(io.StringIO()) if "COLUMNS" not in os.environ else None
    """
    text = os.environ.get("COLUMNS", "").strip()
    if text.isdigit() and int(text) > 0:
        return int(text)
    if not is_terminal(stream):
        return None
    try:
        columns = os.get_terminal_size(stream.fileno()).columns
    except (AttributeError, OSError, ValueError):
        return None
    return columns or None


def ellipsis_for(stream: Any) -> str:
    """``…``, or ``~`` on a stream whose encoding cannot write it (an ASCII-only terminal)."""
    encoding = getattr(stream, "encoding", None) or "utf-8"
    try:
        ELLIPSIS.encode(encoding)
    except (UnicodeEncodeError, LookupError):
        return "~"
    return ELLIPSIS


def _empty(value: Any) -> bool:
    return value is None or value == "" or value == [] or value == ()


def fit_widths(
    widths: Sequence[int], minimums: Sequence[int], limit: Optional[int], gap: int = len(GAP)
) -> list[int]:
    """Column widths within ``limit`` (with ``gap`` between columns), narrowing the widest
    column that may shrink (``minimums[i] < widths[i]``) one column at a time; as narrow as
    the minimums allow when the limit cannot be met.

    >>> fit_widths([10, 40, 30], [10, 8, 8], 60)
    [10, 23, 23]
    """
    fitted = list(widths)
    if limit is None:
        return fitted
    excess = sum(fitted) + gap * max(len(fitted) - 1, 0) - limit
    while excess > 0:
        room = [i for i, w in enumerate(fitted) if w > minimums[i]]
        if not room:
            break
        widest = max(room, key=lambda i: (fitted[i], i))
        fitted[widest] -= 1
        excess -= 1
    return fitted


def table_lines(
    records: Sequence[Mapping[str, Any]],
    columns: Sequence[Column],
    wide: bool = False,
    width: Optional[int] = None,
    ellipsis: str = ELLIPSIS,
) -> list[str]:
    """A fitted table as lines: an UPPER CASE header, columns left-aligned two spaces
    apart; compact columns unless ``wide``; a column empty for every row left out; when
    the table is wider than ``width`` (and not ``wide``), ``shrink`` columns cut with
    ``…``. A failed target's row (one with ``error_kind``, see :func:`error_rows`) is its
    first cell then ``ERROR kind: message`` across the other columns (cut to ``width``
    unless ``wide``). No rows: no lines.

    Example:
        >>> cols = [Column("host", "HOST"), Column("fill_pct", "FILL", kind="pct"),
        ...         Column("note", "NOTE"), Column("top", "TOP SOURCE", shrink=True)]
        >>> rows = [{"host": "nat-a", "fill_pct": 0.05, "top": "198.51.100.7 (12)"},
        ...         {"host": "nat-b", "error": "connect: connection refused by 198.19.255.12",
        ...          "error_kind": "connect"}]
        >>> print("\\n".join(table_lines(rows, cols, width=30)))
        HOST   FILL   TOP SOURCE
        nat-a  0.05%  198.51.100.7 (1…
        nat-b  ERROR connect: connect…
    """
    shown = [c for c in columns if c.table and (wide or not c.wide)]
    if not records or not shown:
        return []
    failed = [bool(r.get("error_kind")) for r in records]
    values = [[c.value(r, wide) for c in shown] for r in records]
    answered = [row for row, bad in zip(values, failed) if not bad]
    keep = [0] + [i for i in range(1, len(shown)) if any(not _empty(v[i]) for v in answered)]
    heads = [safe(shown[i].header.upper()) for i in keep]
    cells = [[format_cell(row[i], shown[i].kind) for i in keep] for row in answered]
    labels = [format_cell(row[0], shown[0].kind) for row, bad in zip(values, failed) if bad]
    natural = [
        max([text_width(h)] + [text_width(row[j]) for row in cells])
        for j, h in enumerate(heads[: len(keep)])
    ]
    natural[0] = max([natural[0]] + [text_width(label) for label in labels])
    minimums = [
        max(text_width(heads[j]), min(MIN_SHRUNK, natural[j])) if shown[i].shrink else natural[j]
        for j, i in enumerate(keep)
    ]
    widths = fit_widths(natural, minimums, None if wide else width)
    limit = None if wide else width
    lines = [_table_line(heads, widths, ellipsis)]
    rows, bad_labels = iter(cells), iter(labels)
    for record, bad in zip(records, failed):
        if not bad:
            lines.append(_table_line(next(rows), widths, ellipsis))
            continue
        label = next(bad_labels)
        text = label + " " * (widths[0] - text_width(label)) + GAP
        text += "ERROR " + safe(record.get("error") or record.get("error_kind"))
        lines.append(cut(text, limit, ellipsis) if limit else text)
    return lines


def _table_line(cells: Sequence[str], widths: Sequence[int], ellipsis: str) -> str:
    parts = []
    for text, width in zip(cells, widths):
        if width and text_width(text) > width:
            text = cut(text, width, ellipsis)
        parts.append(text + " " * max(width - text_width(text), 0))
    return GAP.join(parts).rstrip()


def error_rows(errors: Sequence[Mapping[str, Any]], columns: Sequence[Column]) -> list[dict]:
    """Failed targets (or regions, devices) as table and CSV rows: the first column is the
    target's label (``target.label``, short label in ``short``), ``error`` is ``kind:
    message`` and ``error_kind`` the kind; keys the error shares with the columns are kept.

    >>> cols = [Column("target", "HOST", short="short_label")]
    >>> [row] = error_rows([{"target": {"label": "nat-b (i-2)", "short_label": "nat-b"},
    ...                     "kind": "connect", "error": "refused", "seconds": 0.1}], cols)
    >>> row["target"], row["short_label"], row["error"], row["error_kind"]
    ('nat-b (i-2)', 'nat-b', 'connect: refused', 'connect')
    """
    rows = []
    names = {c.key for c in columns}
    first = columns[0] if columns else None
    for error in errors:
        row = {k: v for k, v in error.items() if k in names and _is_plain(v)}
        target = error.get("target")
        if first is not None and isinstance(target, Mapping):
            row[first.key] = target.get("label")
            if first.short:
                row[first.short] = target.get("short_label") or target.get("label")
            for key in ("name", "instance_id"):  # a target's own plain columns
                if key in names and _is_plain(target.get(key)):
                    row[key] = target.get(key)
        kind, message = error.get("kind"), error.get("error")
        row["error"] = f"{kind}: {message}" if kind else message
        row["error_kind"] = kind
        rows.append(row)
    return rows


def _is_plain(value: Any) -> bool:
    return value is None or isinstance(value, (str, int, float, bool, dt.datetime))


def _with_error_columns(columns: Sequence[Column], csv_too: bool) -> list[Column]:
    have = {c.key for c in columns}
    out = list(columns)
    if "error" not in have:
        out.append(Column("error", "ERROR", shrink=True))
    if csv_too and "error_kind" not in have:
        out.append(Column("error_kind", "ERROR KIND", table=False))
    return out


def plain_value(value: Any) -> Cell:
    """A CSV cell of a plain value: integers as integers, floats in plain decimal (``720``,
    ``0.000039``, never ``720.0`` or ``3.9e-05``), booleans ``true``/``false``, None empty,
    times ISO 8601 UTC, text through :func:`csv_cell` (escaped, formulas neutralised).

    >>> plain_value(720.0), plain_value(3.9e-05), plain_value(-2), plain_value(False)
    (720, '0.000039', -2, 'false')
    """
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        if value.is_integer():
            return int(value)
        text = format(decimal.Decimal(repr(value)), "f")
        return text
    return csv_cell(value)


def _json_rows(
    records: Sequence[Mapping[str, Any]], columns: Sequence[Column]
) -> list[dict[str, Any]]:
    """The default JSON rows: the records without their table-only keys."""
    hidden = {c.key for c in columns if not c.csv} | {c.short for c in columns if c.short}
    return [{k: v for k, v in r.items() if k not in hidden} for r in records]


def envelope(
    command: str,
    rows: Sequence[Any],
    meta: Optional[Mapping[str, Any]] = None,
    errors: Sequence[Mapping[str, Any]] = (),
    generated: Optional[dt.datetime] = None,
) -> dict[str, Any]:
    """The one JSON document of every command (docs/json.md): ``natfleet`` (the envelope
    version), ``command``, ``generated`` (ISO 8601 UTC), the command's ``meta`` keys,
    ``rows`` and ``errors``.

    >>> envelope("conns", [], {"boxes": []}, generated=dt.datetime(2026, 12, 1))
    ... # doctest: +NORMALIZE_WHITESPACE
    {'natfleet': 1, 'command': 'conns', 'generated': '2026-12-01T00:00:00Z', 'boxes': [],
     'rows': [], 'errors': []}
    """
    clash = set(meta or ()) & set(ENVELOPE_KEYS)
    if clash:
        raise ValueError(f"meta keys {sorted(clash)} are the envelope's own")
    when = generated or dt.datetime.now(dt.timezone.utc)
    return {
        "natfleet": ENVELOPE_VERSION,
        "command": command,
        "generated": iso_time(when),
        **(meta or {}),
        "rows": list(rows),
        "errors": list(errors),
    }


def json_line(data: Any) -> str:
    """One compact line of strict ASCII JSON (jsonl), with its newline.

    >>> json_line({"status": "REPLIED", "name": "nat\\u202e"})
    '{"status":"REPLIED","name":"nat\\\\u202e"}\\n'
    """
    text = json.dumps(
        data, ensure_ascii=True, allow_nan=False, default=_json_default, separators=(",", ":")
    )
    return text.replace("\x7f", "\\u007f") + "\n"


def write_output(
    out: TextIO,
    fmt: str,
    command: str,
    records: Sequence[Mapping[str, Any]],
    columns: Sequence[Column],
    *,
    wide: bool = False,
    meta: Optional[Mapping[str, Any]] = None,
    errors: Sequence[Mapping[str, Any]] = (),
    counts: Optional[Sequence[str]] = None,
    rows: Optional[Sequence[Any]] = None,
    width: Optional[int] = None,
) -> None:
    """Write a record command's output in ``fmt``:

    - ``table``: :func:`table_lines` fitted to the stream's terminal (``COLUMNS`` honoured;
      a pipe or file with no ``COLUMNS`` is never cut; ``width`` overrides both), failed
      targets as rows with an ``ERROR`` column; ``counts`` (ASA-style ``nflab-box1: 27 in
      use of 262,144``) above the table, on a terminal only.
    - ``csv``: every CSV column's key as header, one plain value per cell
      (:func:`plain_value`), failed targets as rows with ``error`` and ``error_kind``.
    - ``json``: the :func:`envelope`; ``rows`` (default: the records without their
      table-only keys), ``meta`` and ``errors`` as given.
    - ``jsonl``: one JSON object per row, then one per error (each has ``error``).

    Example:
        >>> cols = [Column("host", "HOST"), Column("fill_pct", "FILL", kind="pct")]
        >>> write_output(sys.stdout, "csv", "summary", [{"host": "nat-a", "fill_pct": 0.05}],
        ...              cols, errors=[{"target": {"label": "nat-b"}, "kind": "auth",
        ...                             "error": "denied"}])
        host,fill_pct,error,error_kind
        nat-a,0.05,,
        nat-b,,auth: denied,auth
    """
    if fmt == "json":
        data = rows if rows is not None else _json_rows(records, columns)
        write_json(out, envelope(command, data, meta, errors))
    elif fmt == "jsonl":
        data = rows if rows is not None else _json_rows(records, columns)
        write_lines(out, (json_line(row)[:-1] for row in [*data, *errors]))
    elif fmt == "csv":
        shown = _with_error_columns(columns, True) if errors else list(columns)
        keys = [c.key for c in shown if c.csv]
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow([csv_cell(k) for k in keys])
        for record in [*records, *error_rows(errors, columns)]:
            writer.writerow([plain_value(record.get(k)) for k in keys])
    elif fmt == "table":
        shown = _with_error_columns(columns, False) if errors else list(columns)
        limit = width if width is not None else terminal_width(out)
        lines = table_lines(
            [*records, *error_rows(errors, columns)], shown, wide, limit, ellipsis_for(out)
        )
        if counts and is_terminal(out):
            lines = [
                cut(safe(line), limit, "~") if limit else safe(line) for line in counts
            ] + lines
        write_lines(out, lines)
    else:
        raise ValueError(f"unknown output format {fmt!r} (one of {', '.join(OUTPUT_FORMATS)})")


class _ShortOutput(argparse.Action):
    """``-o wide|json|jsonl|csv|table`` (kubectl's): a format, or ``wide`` (a wide table)."""

    def __call__(self, parser: Any, namespace: Any, values: Any, option_string: Any = None):
        if values == "wide":
            namespace.wide = True
            if getattr(namespace, "format", None) not in ("table", None):
                namespace.format = "table"
        else:
            namespace.format = values


def add_output_options(
    parser: argparse.ArgumentParser,
    formats: Sequence[str] = OUTPUT_FORMATS,
    default: Optional[str] = "table",
    short_o: bool = True,
) -> None:
    """``--format FMT`` and ``--wide`` (every column, nothing cut); with ``short_o`` also
    ``-o wide|FMT`` like kubectl (commands whose ``-o`` is netstat-nat's "no header" flag
    pass ``short_o=False``).

    >>> parser = argparse.ArgumentParser()
    >>> add_output_options(parser)
    >>> args = parser.parse_args(["-o", "wide"])
    >>> args.format, args.wide
    ('table', True)
    """
    parser.add_argument(
        "--format",
        choices=tuple(formats),
        default=default,
        help=f"output format (default {default})" if default else "output format",
    )
    parser.add_argument(
        "--wide", action="store_true", help="every column, full labels, nothing cut to fit"
    )
    if short_o:
        choices = ("wide", *formats)
        parser.add_argument(
            "-o",
            dest="format",
            choices=choices,
            action=_ShortOutput,
            default=argparse.SUPPRESS,
            metavar="|".join(choices),
            help="like --format; -o wide: a table with every column",
        )


# --- a progress line on a terminal --------------------------------------------------------


class StatusLine:
    """One line of progress on a terminal, rewritten in place and erased at the end.

    Example:
        >>> line = StatusLine(sys.stderr)      # on a terminal
        >>> line.show("CloudWatch: 2/5 batches")  # "natfleet: CloudWatch: 2/5 batches"
        >>> line.clear()                          # gone: the table prints on a clean line
    """

    def __init__(self, stream: TextIO) -> None:
        self.stream, self.shown = stream, False

    def show(self, text: str) -> None:
        width = terminal_width(self.stream) or 80
        line = cut(safe(f"natfleet: {text}"), max(width - 1, 10), "~")
        self.stream.write("\r\x1b[K" + line)
        self.stream.flush()
        self.shown = True

    def clear(self) -> None:
        if self.shown:
            self.stream.write("\r\x1b[K")
            self.stream.flush()
            self.shown = False


@contextlib.contextmanager
def status_line(stream: TextIO) -> Iterator[Optional[Callable[[str], None]]]:
    """A :class:`StatusLine`'s ``show`` when ``stream`` is a terminal (erased when the
    block ends, error or not), else None: pipes and files get no progress text.

    Example:
        >>> with status_line(io.StringIO()) as show:
        ...     show is None
        True
    """
    if not is_terminal(stream) or os.environ.get("TERM") == "dumb":
        yield None
        return
    line = StatusLine(stream)
    try:
        yield line.show
    finally:
        line.clear()
