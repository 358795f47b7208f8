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

Example:
    >>> safe("nat-a\\x1b]52;c;cm0gLXJmIH4=\\x07\\u202egnp.exe\\nfake row")
    'nat-a\\\\x1b]52;c;cm0gLXJmIH4=\\\\x07\\\\u202egnp.exe\\\\nfake row'
    >>> csv_cell("=HYPERLINK(1)"), csv_cell(-3), csv_cell(None)
    ("'=HYPERLINK(1)", -3, '')
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import json
import logging
import sys
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Optional, TextIO, Union

RECORD_FORMATS = ("table", "json", "csv")
NO_DATA = "no data"  # a metric without points: never shown as 0
SPARKS = "▁▂▃▄▅▆▇█"
SPARK_WIDTH = 24
MESSAGE_LIMIT = 2000  # characters of one stderr or log message (escaped) before it is cut
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
    if not isinstance(text, str):
        text = str(text)
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else _escape(c) for c in text)


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


def table_cell(value: Any) -> str:
    """A table cell: ``-`` for None, floats with 2 decimals, list items one a line; text
    escaped (:func:`safe`).

    Example:
        >>> table_cell(None), table_cell(2 / 3), table_cell(["a\\x1b[2J", "b"])
        ('-', '0.67', 'a\\\\x1b[2J\\nb')
    """
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.2f}"
    if isinstance(value, (list, tuple)):
        return "\n".join(safe(_plain(v, ", ")) for v in value)  # one escaped item a line
    return safe(_plain(value, ", "))


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


def write_records(
    out: TextIO,
    fmt: str,
    records: Sequence[Mapping[str, Any]],
    columns: Sequence[str],
    headers: Optional[Sequence[str]] = None,
) -> None:
    """Records as a table (``columns`` in order, headed by ``headers`` or the column
    names), CSV (a header of the column names) or JSON (the whole records, as a list).

    Example:
        >>> write_records(sys.stdout, "csv", [{"host": "=cmd", "flows": 3}], ("host", "flows"))
        host,flows
        '=cmd,3
    """
    if fmt == "json":
        write_json(out, [dict(r) for r in records])
    elif fmt == "csv":
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow([csv_cell(c) for c in columns])
        for record in records:
            writer.writerow([csv_cell(record.get(c)) for c in columns])
    elif fmt == "table":
        rows = [[record.get(c) for c in columns] for record in records]
        out.write(table_text(rows, list(headers or columns)))  # it makes the cells
    else:
        raise ValueError(f"unknown output format {fmt!r} (one of {', '.join(RECORD_FORMATS)})")


def table_text(rows: Sequence[Sequence[Any]], headers: Sequence[str]) -> str:
    """A plain text table (tabulate's "simple" style, no number parsing), ending in a
    newline; every cell and header passes through :func:`table_cell`.

    Example:
        >>> print(table_text([["nat-a", "3"]], ["host", "flows"]), end="")
        host    flows
        ------  -------
        nat-a   3
    """
    from tabulate import tabulate  # imported on first use: it is slow to import

    cells = [[table_cell(v) for v in row] for row in rows]
    heads = [table_cell(h) for h in headers]
    return tabulate(cells, headers=heads, tablefmt="simple", disable_numparse=True) + "\n"


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


def add_format_option(
    parser: argparse.ArgumentParser,
    formats: Sequence[str] = RECORD_FORMATS,
    default: Optional[str] = "table",
) -> None:
    """The one ``--format`` option of the record commands."""
    parser.add_argument(
        "--format",
        choices=tuple(formats),
        default=default,
        help=f"output format (default {default})" if default else "output format",
    )


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
