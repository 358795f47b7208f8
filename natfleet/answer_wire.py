"""The trust boundary for compact answers (natfleet/agent_wire.py): inflated under a cap,
checked block by block once whole, kept compressed, decoded again lazily for the merge.

A compact answer is one zlib stream. :class:`Inflater` inflates it in steps of at most
:data:`STEP` bytes (``zlib.decompressobj`` with ``max_length``), so a small answer that
inflates to gigabytes stops at the cap with no more than a step in memory; a stream that
does not end (cut short) or does not inflate (corrupt) is an :class:`AnswerError`.

Once the stream is whole (its checksum right: a corrupt answer is said to be corrupt, not a
field it happened to break), :class:`CompactBody` checks every block completely: the
descriptor's keys
and counts, every new address (an IP address, canonicalised) and shape (known protocol,
state, NAT kind, flags, optional keys in range), every column (indices inside the tables,
each row's addresses of its shape's family, counters in range), the JSON rows (the checks
of :func:`natfleet.answer.check_row`), the row count the header announced and the order the
request asked for (each row's sort key at least the one before it). A box whose answer
breaks a rule is that box's error row before anything is printed. What is kept is the
compressed bytes as they arrived and the (checked) address and shape tables: a few bytes
per flow.

:class:`WireRows` decodes the kept bytes again, block by block, when the rows are listed:
``merge_items()`` gives the fleet merge ``(sort key, box, shape, osrc, odst, rsrc, rdst, osp,
odp, rsp, rdp, timeout, extra counters...)`` a block at a time (a JSON row: ``(sort key, box,
CheckedFlow)``), the keys made a column at a time (:func:`block_keys`, the order of
:func:`flow_key`); ``items()`` gives ``(sort key, row)``; iterating gives Flow objects, like
the list of a plain answer.

Example:
    >>> from natfleet import agent
    >>> table = agent.DumpSources(table_file="tests/data/tables/lab-box.txt")
    >>> data = b"".join(agent.answer_bytes({"mode": "list", "encoding": "compact"}, table))
    >>> inflater = Inflater(cap=1 << 20)
    >>> text = b"".join(inflater.feed(data)); inflater.finish()
    >>> json.loads(text.split(b"\\n", 1)[0])["rows"]
    16
"""

from __future__ import annotations

import array
import itertools
import json  # noqa: F401 (the example uses it)
import operator
import zlib
from collections.abc import Iterator, Sequence
from typing import Any, Callable, Optional, Union

from natfleet import agent, agent_wire
from natfleet.agent import Flow
from natfleet.answer import (
    _U32_KEYS,
    _U64_KEYS,
    _ZONE_KEYS,
    FLAGS,
    U32,
    U64,
    AnswerError,
    CheckedFlow,
    _addr,
    _bad,
    _dict,
    _int,
    _list,
    _proto,
    _str,
    agent_failure,
    check_row,
    decode_line,
)

STEP = 1 << 18  # bytes inflated at a time
BLOCK_MAX = 1 << 16  # rows in one block (the agent sends agent_wire.BLOCK_ROWS)
DESCRIPTOR_KEYS = frozenset(("n", "addresses", "shapes", "columns", "others", "bytes"))
WIDTHS = tuple(array.array(code).itemsize for code in agent_wire.COLUMN_TYPES)
ROW_BYTES = sum(WIDTHS)
_EXTRA_RANGES = {
    "mark": U32,
    "use": U32,
    "zone": 65535,
    "zone_orig": 65535,
    "zone_reply": 65535,
    "delta_time": U32,
}
_EXTRA_ORDER = _U64_KEYS + _U32_KEYS + _ZONE_KEYS + ("secctx",)
EXTRA_AT = {name: len(agent_wire.COLUMNS) + i for i, name in enumerate(agent_wire.COLUMN_EXTRAS)}
Row = Union[tuple, Flow]  # a decoded wire row (a tuple of columns), or a JSON row's Flow


# --------------------------------------------------------------------------- inflating


class Inflater:
    """Inflates one zlib stream under a cap on the inflated bytes.

    >>> bomb = zlib.compress(b"\\0" * (10 << 20))
    >>> inflater = Inflater(cap=1 << 20)
    >>> sum(len(p) for p in inflater.feed(bomb))
    Traceback (most recent call last):
    ...
    natfleet.answer.AnswerError: the answer inflates to more than the cap of 1,048,576 bytes ...
    """

    def __init__(self, cap: int, what: str = "answer") -> None:
        self.cap = cap
        self.what = what
        self.inflated = 0
        self._z = zlib.decompressobj()

    def feed(self, data: bytes) -> Iterator[bytes]:
        """The inflated pieces of ``data`` (each at most STEP bytes); raises AnswerError."""
        z = self._z
        pending = data
        while pending:
            if z.eof:
                raise AnswerError(f"bytes after the end of the compressed {self.what}")
            try:
                piece = z.decompress(pending, STEP)
            except zlib.error as exc:
                raise AnswerError(f"the compressed {self.what} is corrupt ({exc})") from None
            self.inflated += len(piece)
            if self.inflated > self.cap:
                raise AnswerError(
                    f"the {self.what} inflates to more than the cap of {self.cap:,} bytes "
                    "(counted after decompression; raise it with --max-answer-mb or [limits] "
                    "in the config)"
                )
            if piece:
                yield piece
            pending = z.unconsumed_tail or z.unused_data

    def finish(self) -> None:
        """Raises AnswerError unless the stream ended."""
        if not self._z.eof:
            raise AnswerError(
                f"the compressed {self.what} was cut short: its zlib stream did not end "
                f"({self.inflated:,} bytes inflated)"
            )


class Blocks:
    """Splits an inflated body into blocks: ``feed`` yields (descriptor, columns bytes)."""

    def __init__(self, line_cap: int) -> None:
        self.line_cap = line_cap
        self._buf = bytearray()
        self._descriptor: Optional[dict[str, Any]] = None
        self._need = 0

    def feed(self, piece: bytes) -> Iterator[tuple[dict[str, Any], bytes]]:
        buf = self._buf
        buf += piece
        while True:
            if self._descriptor is None:
                end = buf.find(b"\n")
                if end < 0:
                    if len(buf) > self.line_cap:
                        raise AnswerError(
                            f"a row block's descriptor is longer than {self.line_cap:,} bytes"
                        )
                    return
                if end > self.line_cap:
                    raise AnswerError(
                        f"a row block's descriptor is longer than {self.line_cap:,} bytes"
                    )
                data = decode_line(bytes(buf[:end]), "a row block's descriptor")
                del buf[: end + 1]
                descriptor = _dict(data, "block", 16)
                if "agent" in descriptor:  # the agent failed after the header
                    if descriptor.get("ok") is not False:
                        raise _bad("block", "a row block or a failure", "an answer header")
                    raise agent_failure(descriptor)
                self._need = _int(descriptor.get("bytes"), "block.bytes", 0, self.line_cap)
                self._descriptor = descriptor
            if len(buf) < self._need:
                return
            columns = bytes(buf[: self._need])
            del buf[: self._need]
            descriptor, self._descriptor = self._descriptor, None
            yield descriptor, columns

    def finish(self) -> None:
        if self._descriptor is not None or self._buf.strip():
            raise AnswerError("the answer was cut short inside a row block")


# --------------------------------------------------------------------------- sort keys


_NUMBERS: dict[str, int] = {}


def address_number(addr: str) -> int:
    """An address as one integer in :func:`natfleet.agent.address_key`'s order (IPv4
    first, each family numeric): sort keys of plain integers compare fast.

    >>> address_number("10.0.0.2") < address_number("10.0.0.10") < address_number("::1")
    True
    """
    found = _NUMBERS.get(addr)
    if found is None:
        six, packed = agent.address_key(addr)
        found = int.from_bytes(packed, "big") | (1 << 128 if six else 0)
        if len(_NUMBERS) >= 1 << 17:
            _NUMBERS.clear()
        _NUMBERS[addr] = found
    return found


def _port(value: Optional[str]) -> int:
    return int(value) if value and value.isdecimal() else -1


def _ordered(name: Optional[str], head: tuple, src: tuple, dst: tuple, rest: tuple) -> tuple:
    """A sort key from its parts, in agent.sort_key's order for ``name``."""
    if name == "dst":
        return dst + src + rest
    if name == "src-port":
        return (src[1], src[0]) + dst + rest
    if name == "dst-port":
        return (dst[1], dst[0]) + src + rest
    return head + src + dst + rest


def flow_key(name: Optional[str]) -> Callable[[Flow], tuple]:
    """The merge's sort key of a Flow for ``-r NAME``: the order of agent.sort_key (numeric;
    ties by the next keys), as a tuple of integers (and the state, for ``state``).

    >>> f = Flow.parse("ipv4 2 udp 17 29 src=192.0.2.1 dst=203.0.113.53 sport=5353 dport=53 "
    ...     "src=203.0.113.53 dst=198.51.100.1 sport=53 dport=5353 use=1", own=())
    >>> flow_key("dst-port")(f)[:2] == (53, address_number("203.0.113.53"))
    True
    """
    number = address_number

    def key(f: Flow) -> tuple:
        if f.nat == "dnat" or f.nat == "snat+dnat":
            dst = (number(f.rsrc), _port(f.rsp))
        else:
            dst = (number(f.odst), _port(f.odp))
        head = (f.display_state(),) if name == "state" else ()
        rest = (f.pnum, number(f.odst), _port(f.odp))
        return _ordered(name, head, (number(f.osrc), _port(f.osp)), dst, rest)

    return key


class Shape:
    """A checked shape of a compact answer (agent_wire): what its rows share."""

    __slots__ = (
        "proto", "l3", "state", "nat", "flags", "timeout", "extras", "pnum", "dnat", "status",
        "version", "columns",
    )  # fmt: skip

    def __init__(self, data: Any, path: str) -> None:
        items = _list(data, path, 7)
        if len(items) != 7:
            raise _bad(path, "[proto, l3, state, nat, flags, has_timeout, extras]", data)
        proto, l3, state, nat, flags, timeout, extras = items
        self.proto = _proto(proto, f"{path}.proto")
        if self.proto not in agent_wire.PORTED:
            raise _bad(f"{path}.proto", "a protocol with ports", proto)
        if l3 not in ("ipv4", "ipv6"):
            raise _bad(f"{path}.l3", "ipv4 or ipv6", l3)
        self.l3 = l3
        self.version = 4 if l3 == "ipv4" else 6
        if state is not None and (not isinstance(state, str) or state not in agent.STATES):
            raise _bad(f"{path}.state", "a TCP, SCTP or DCCP state or null", state)
        self.state = state
        if nat not in agent.NAT_KINDS:
            raise _bad(f"{path}.nat", "a NAT kind", nat)
        self.nat = nat
        for flag in _list(flags, f"{path}.flags", 4):
            if flag not in FLAGS:
                raise _bad(f"{path}.flags[]", "a conntrack flag", flag)
        self.flags = tuple(flags)
        if not isinstance(timeout, bool):
            raise _bad(f"{path}.has_timeout", "true or false", timeout)
        self.timeout = timeout
        pairs: list[tuple[str, Any]] = []
        columns: list[str] = []
        for pair in _list(extras, f"{path}.extras", 16):
            pair = _list(pair, f"{path}.extras[]", 2)
            key = pair[0] if len(pair) == 2 else None
            value = pair[1] if key is not None else None
            if key in agent_wire.COLUMN_EXTRAS and value is None:
                columns.append(key)
            elif key == "secctx":
                value = _str(value, f"{path}.extras.secctx", 256)
            elif key in _EXTRA_RANGES and key not in agent_wire.COLUMN_EXTRAS:
                value = _int(value, f"{path}.extras.{key}", 0, _EXTRA_RANGES[key])
            else:
                raise _bad(f"{path}.extras[]", "[optional row key, value]", pair)
            if any(k == key for k, _v in pairs):
                raise _bad(f"{path}.extras[]", "each key once", key)
            pairs.append((key, value))
        pairs.sort(key=lambda pair: _EXTRA_ORDER.index(pair[0]))  # as check_row orders them
        self.extras = tuple(pairs)
        self.columns = tuple(columns)
        self.pnum = agent.PROTO_NUMBERS.get(self.proto, -1)
        self.dnat = nat in ("dnat", "snat+dnat")
        self.status = agent.line_state(state, " ".join(f"[{flag}]" for flag in self.flags))


class Tables:
    """The address and shape tables of one compact answer, as they grow (checked)."""

    def __init__(self) -> None:
        self.addresses: list[str] = []
        self.numbers: list[int] = []  # address_number of each address
        self.versions: list[int] = []  # 4 or 6
        self.shapes: list[Optional[Shape]] = [None]  # shape 0: a JSON row
        self.pnums: list[int] = [-1]  # by shape: what the sort keys take of it
        self.dnats: list[bool] = [False]
        self.statuses: list[str] = [""]

    def grow(self, descriptor: dict[str, Any], rows: int) -> None:
        for addr in _list(descriptor.get("addresses"), "block.addresses", 4 * rows):
            canon = _addr(addr, "block.addresses[]")
            self.addresses.append(canon)
            self.numbers.append(address_number(canon))
            self.versions.append(6 if ":" in canon else 4)
        for data in _list(descriptor.get("shapes"), "block.shapes", rows):
            shape = Shape(data, f"shapes[{len(self.shapes)}]")
            self.shapes.append(shape)
            self.pnums.append(shape.pnum)
            self.dnats.append(shape.dnat)
            self.statuses.append(shape.status)


def block_keys(
    name: Optional[str], tables: Tables, columns: list[Any], flows: Sequence[Flow]
) -> list[tuple]:
    """The sort keys of a block's rows, a column at a time: for a wire row the tuple
    :func:`flow_key` makes of its Flow; for a JSON row (shape 0: the next of ``flows``)
    :func:`flow_key` itself."""
    shape, osrc, odst, rsrc, _rdst, osp, odp, rsp = columns[:8]
    number = tables.numbers.__getitem__
    a_osrc, a_odst = list(map(number, osrc)), list(map(number, odst))
    used = set(shape)
    if any(tables.dnats[s] for s in used):  # DNAT rows: the destination is the reply's source
        dnat = list(map(tables.dnats.__getitem__, shape))
        a_dst = [number(r) if d else o for d, o, r in zip(dnat, a_odst, rsrc)]
        dport = [r if d else o for d, o, r in zip(dnat, odp, rsp)]
    else:
        a_dst, dport = a_odst, odp
    pnum = list(map(tables.pnums.__getitem__, shape))
    parts: tuple[Any, ...]
    if name == "dst":
        parts = (a_dst, dport, a_osrc, osp, pnum, a_odst, odp)
    elif name == "src-port":
        parts = (osp, a_osrc, a_dst, dport, pnum, a_odst, odp)
    elif name == "dst-port":
        parts = (dport, a_dst, a_osrc, osp, pnum, a_odst, odp)
    elif name == "state":
        status = list(map(tables.statuses.__getitem__, shape))
        parts = (status, a_osrc, osp, a_dst, dport, pnum, a_odst, odp)
    else:
        parts = (a_osrc, osp, a_dst, dport, pnum, a_odst, odp)
    keys = list(zip(*parts))
    if 0 in used:  # JSON rows: their Flow's key
        key = flow_key(name)
        in_turn = iter(flows)
        for i, s in enumerate(shape):
            if not s:
                keys[i] = key(next(in_turn))
    return keys


# --------------------------------------------------------------------------- blocks


def _columns(
    descriptor: dict[str, Any], payload: bytes, n: int, check: bool, first: int
) -> tuple[list[Any], list[str]]:
    """The block's columns (fixed, then extra), summed back from their differences; with
    ``check`` each fixed column in its range. Raises AnswerError."""
    extra = [
        str(name)
        for name in _list(descriptor.get("columns"), "block.columns", len(agent_wire.COLUMN_EXTRAS))
    ]
    if any(name not in agent_wire.COLUMN_EXTRAS for name in extra) or len(set(extra)) != len(extra):
        raise _bad("block.columns", "extra column names, each once", extra)
    want = n * (ROW_BYTES + 8 * len(extra))
    if len(payload) != want:
        raise _bad("block.bytes", f"{want} for {n} rows", len(payload))
    columns: list[Any] = []
    at = 0
    codes = agent_wire.COLUMN_TYPES + (agent_wire.U64,) * len(extra)
    for i, code in enumerate(codes):
        values = array.array(code)
        size = values.itemsize * n
        values.frombytes(payload[at : at + size])
        if agent_wire.BIG_ENDIAN:
            values.byteswap()
        at += size
        if i >= len(agent_wire.COLUMNS):  # u64 counters, modulo 2**64
            columns.append([v & U64 for v in itertools.accumulate(values)])
            continue
        column = list(itertools.accumulate(values))
        if check and (min(column) < 0 or max(column) > agent_wire.COLUMN_HIGH[i]):
            name, high = agent_wire.COLUMNS[i], agent_wire.COLUMN_HIGH[i]
            worst = min(column) if min(column) < 0 else max(column)
            raise _bad(f"rows[{first}..].{name}", f"an integer 0..{high}", worst)
        columns.append(column)
    return columns, extra


def _check_columns(
    columns: list[Any], extra: list[str], tables: Tables, others: int, first: int
) -> None:
    """Every index inside its table, each row's addresses of its shape's family, as many
    JSON rows as shape-0 rows, extra counters in range; raises AnswerError."""
    shapes, addresses = columns[0], columns[1:5]
    if max(shapes) >= len(tables.shapes):
        raise _bad(f"rows[{first}..].shape", f"an index below {len(tables.shapes)}", max(shapes))
    for name, column in zip(("osrc", "odst", "rsrc", "rdst"), addresses):
        if max(column) >= len(tables.addresses):
            high = len(tables.addresses)
            raise _bad(f"rows[{first}..].{name}", f"an address index below {high}", max(column))
    used = set(shapes)
    json_rows = shapes.count(0) if 0 in used else 0
    if json_rows != others:
        raise _bad("block.others", f"{json_rows} JSON rows (shape 0)", others)
    checked = [s for s in used if s]
    families = {tables.shapes[s].version for s in checked}
    versions = tables.versions
    if json_rows == 0 and len(families) == 1:
        version = families.pop()
        seen: set[int] = set()
        for column in addresses:
            seen.update(column)
        if any(versions[i] != version for i in seen):
            raise _bad(f"rows[{first}..]", f"IPv{version} addresses for an ipv{version} row", "")
    else:
        table = tables.shapes
        for i, (s, a, b, c, d) in enumerate(zip(shapes, *addresses)):
            if s:
                v = table[s].version
                if versions[a] != v or versions[b] != v or versions[c] != v or versions[d] != v:
                    raise _bad(f"rows[{first + i}]", f"IPv{v} addresses for an ipv{v} row", "")
    for s in checked:
        missing = set(tables.shapes[s].columns) - set(extra)
        if missing:
            raise _bad("block.columns", f"the columns its shapes use ({sorted(missing)[0]})", extra)
    for name, column in zip(extra, columns[len(agent_wire.COLUMNS) :]):
        most = _EXTRA_RANGES.get(name)
        if most is not None and max(column) > most:
            raise _bad(f"rows[{first}..].{name}", f"an integer 0..{most}", max(column))


def _decode_block(
    descriptor: dict[str, Any], payload: bytes, tables: Tables, first: int, check: bool
) -> tuple[list[Flow], list[Any]]:
    """(the JSON rows as Flows, the columns: fixed, then every extra one) of one block; with
    ``check`` every rule above (the tables grow with the block's new entries)."""
    if check:
        unknown = set(descriptor) - DESCRIPTOR_KEYS
        if unknown:
            raise _bad("block", "the documented block keys", sorted(unknown)[0])
    n = _int(descriptor.get("n"), "block.n", 1, BLOCK_MAX)
    if check:
        tables.grow(descriptor, n)
    columns, extra = _columns(descriptor, payload, n, check, first)
    others = _list(descriptor.get("others"), "block.others", n)
    if check:
        _check_columns(columns, extra, tables, len(others), first)
    flows = [check_row(row, f"rows[{first}+].others[{i}]") for i, row in enumerate(others)]
    if extra:  # every extra column, at its fixed place (EXTRA_AT): absent ones are zeros
        zeros = [0] * n
        given = dict(zip(extra, columns[len(agent_wire.COLUMNS) :]))
        columns = columns[: len(agent_wire.COLUMNS)]
        columns += [given.get(name, zeros) for name in agent_wire.COLUMN_EXTRAS]
    return flows, columns


# --------------------------------------------------------------------------- the body


def _inflated(chunks: list[bytes], skip: int) -> Iterator[bytes]:
    """The inflated pieces of kept compressed ``chunks``, the first ``skip`` bytes left out
    (the header line); the chunks were inflated under the cap as they arrived."""
    inflater = Inflater(1 << 62)
    for chunk in chunks:
        for piece in inflater.feed(chunk):
            if skip:
                cut = min(skip, len(piece))
                skip -= cut
                piece = piece[cut:]
            if piece:
                yield piece
    inflater.finish()


class CompactBody:
    """The row blocks of one compact answer: its compressed bytes as they arrived
    (``chunks``, shared with the reader), checked block by block once the stream is whole
    (:meth:`check`: a corrupt stream is said to be corrupt, not a field that broke), counted,
    and kept for :class:`WireRows`."""

    def __init__(
        self, rows: int, sort: Optional[str], line_cap: int, names: bool, header_bytes: int
    ) -> None:
        self.rows = rows
        self.sort = sort
        self.tables = Tables()
        self.blocks = Blocks(line_cap)
        self.line_cap = line_cap
        self.seen = 0
        self.referenced: Optional[set[str]] = set() if names else None
        self.header_bytes = header_bytes
        self.chunks: list[bytes] = []
        self._last: Optional[tuple] = None

    def feed(self, piece: bytes) -> None:
        for descriptor, payload in self.blocks.feed(piece):
            self._block(descriptor, payload)

    def _block(self, descriptor: dict[str, Any], payload: bytes) -> None:
        first = self.seen
        flows, columns = _decode_block(descriptor, payload, self.tables, first, True)
        n = len(columns[0])
        if first + n > self.rows:
            raise AnswerError("more rows than the answer's header announced")
        self.seen += n
        keys = block_keys(self.sort, self.tables, columns, flows)
        if self._last is not None and keys[0] < self._last:
            raise self._unordered(first)
        if not all(map(operator.le, keys, itertools.islice(keys, 1, None))):
            ahead = next(i for i in range(1, n) if keys[i] < keys[i - 1])
            raise self._unordered(first + ahead)
        self._last = keys[-1]
        if self.referenced is not None:
            addresses = self.tables.addresses
            shape = columns[0]
            for column in columns[1:5]:
                indices = [i for s, i in zip(shape, column) if s] if flows else column
                self.referenced.update(map(addresses.__getitem__, indices))
            for flow in flows:
                self.referenced.update((flow.osrc, flow.odst, flow.rsrc, flow.rdst))

    def _unordered(self, index: int) -> AnswerError:
        return AnswerError(
            f"rows[{index}] is out of order: the rows are not sorted by "
            f"{self.sort or 'src'} as the request asked"
        )

    def check(self) -> None:
        """Check every block of the whole (inflated, checksummed) answer; raises AnswerError."""
        for piece in _inflated(self.chunks, self.header_bytes):
            self.feed(piece)
        self.finish()

    def finish(self) -> None:
        self.blocks.finish()
        if self.seen < self.rows:
            raise AnswerError(
                f"the answer was cut short: {self.seen:,} of {self.rows:,} rows arrived"
            )


class WireRows(Sequence[Flow]):
    """A box's checked listing, kept compressed: ``len()`` is its row count; ``items()``
    decodes the blocks again, one at a time, as ``(sort key, row)``; iterating gives Flows.
    ``decoded`` counts the rows decoded so far (a ``--limit`` stops early)."""

    def __init__(self, body: CompactBody) -> None:
        self._chunks = body.chunks
        self._rows = body.seen
        self._header_bytes = body.header_bytes
        self._line_cap = body.line_cap
        self.tables = body.tables
        self.sort = body.sort
        self.decoded = 0
        self._list: Optional[list[Flow]] = None

    def __len__(self) -> int:
        return self._rows

    def __getitem__(self, index: Any) -> Any:
        if self._list is None:
            self._list = list(self)
        return self._list[index]

    def __iter__(self) -> Iterator[Flow]:
        to_flow = self.to_flow
        for _key, row in self.items(keys=False):
            yield to_flow(row)

    def _decoded(self) -> Iterator[tuple[list[Flow], list[Any]]]:
        """The blocks again (:func:`_decode_block`) from the kept bytes; raises AnswerError
        if they no longer decode (they were checked at receipt: a bug)."""
        blocks = Blocks(self._line_cap)
        first = 0
        for piece in _inflated(self._chunks, self._header_bytes):
            for descriptor, payload in blocks.feed(piece):
                flows, columns = _decode_block(descriptor, payload, self.tables, first, False)
                first += len(columns[0])
                self.decoded += len(columns[0])
                yield flows, columns

    def items(self, keys: bool = True) -> Iterator[tuple[Any, Row]]:
        """``(sort key, row)`` in the box's order (the key None without ``keys``): a wire
        row as a tuple of its columns (``shape`` first), a JSON row as its Flow."""
        for flows, columns in self._decoded():
            rows: list[Any] = list(zip(*columns))
            if flows:
                in_turn = iter(flows)
                rows = [row if row[0] else next(in_turn) for row in rows]
            ordered = block_keys(self.sort, self.tables, columns, flows) if keys else None
            yield from zip(ordered or itertools.repeat(None), rows)

    def merge_items(self, keys: bool, tag: Any) -> Iterator[list[tuple]]:
        """The rows as the fleet merge takes them, a block at a time: ``(sort key, tag,
        shape, osrc, ...)`` for a wire row (one tuple: the key, the tag and the columns),
        ``(sort key, tag, Flow)`` for a JSON row; the key None without ``keys``."""
        tags = itertools.repeat(tag)
        for flows, columns in self._decoded():
            ordered: Any = (
                block_keys(self.sort, self.tables, columns, flows)
                if keys
                else itertools.repeat(None)
            )
            items: list[tuple] = list(zip(ordered, tags, *columns))
            if flows:  # JSON rows: (key, tag, Flow)
                in_turn = iter(flows)
                for i, s in enumerate(columns[0]):
                    if not s:
                        items[i] = (items[i][0], tag, next(in_turn))
            yield items

    def to_flow(self, row: Row) -> Flow:
        """A decoded row as a Flow (a CheckedFlow), like a plain answer's."""
        if not isinstance(row, tuple):
            return row
        return wire_flow(row, self.tables)


_PORTS = [str(n) for n in range(65536)]


def wire_flow(row: tuple, tables: Tables) -> CheckedFlow:
    """The CheckedFlow of a decoded wire row (its to_json is the row of wire format 2)."""
    shape = tables.shapes[row[0]]
    assert shape is not None
    addresses = tables.addresses
    flow = CheckedFlow.__new__(CheckedFlow)
    flow.pnum = shape.pnum
    flow.timeout = row[9] if shape.timeout else None
    flow.state = shape.state
    flow.osrc, flow.odst = addresses[row[1]], addresses[row[2]]
    flow.rsrc, flow.rdst = addresses[row[3]], addresses[row[4]]
    flow.osp, flow.odp, flow.rsp, flow.rdp = (
        _PORTS[row[5]],
        _PORTS[row[6]],
        _PORTS[row[7]],
        _PORTS[row[8]],
    )
    flow.l3 = shape.l3
    flow.gre = None
    flow.proto = shape.proto
    flow.nat = shape.nat
    flow.line = None
    flow.row = None
    flow._flag_tuple = shape.flags
    if shape.columns:
        flow._extra = tuple((k, row[EXTRA_AT[k]] if v is None else v) for k, v in shape.extras)
    else:
        flow._extra = shape.extras
    return flow
