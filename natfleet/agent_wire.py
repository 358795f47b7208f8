"""The compact answer (request ``"encoding": "compact"``): box side, stdlib only, Python 3.6+.

A compact answer is one zlib stream. Inflated, it is the header line of wire format 2 (JSON,
``"encoding": "compact"``, ``"rows": N``) and, in list mode, the N rows in blocks of at most
:data:`BLOCK_ROWS`. A block is a descriptor line, JSON::

    {"n": 4096, "addresses": ["198.18.1.10", ...], "shapes": [["udp", "ipv4", null, "snat",
     ["UNREPLIED"], true, [["mark", 0], ["zone", 0], ["use", 2]]]], "columns": [],
     "others": [], "bytes": 114688}

then ``bytes`` bytes of columns: for each of :data:`COLUMNS` (then each extra column named
in ``columns``) ``n`` little-endian integers, each the difference between a value and the
one above it (the first from 0), so a sorted table's runs and steps become zeros and ones
for zlib: ``i64`` for the ``u32`` columns and ``i32`` for the ports (``u16``), exact; the
extra columns (``u64`` counters) ``u64`` modulo 2**64.

- ``addresses`` and ``shapes`` are appended to tables that grow over the answer (indices
  count from 0 in ``addresses``, from 1 in ``shapes``): a row's ``osrc``, ``odst``,
  ``rsrc``, ``rdst`` are indices into the addresses, ``shape`` an index into the shapes.
- A shape is what many rows share: ``[proto, l3, state, nat, flags, has_timeout,
  extras]``, ``extras`` the optional keys in row order as ``[key, value]``, ``value`` null
  when the key's value is in the extra column of that name (counters, ``delta_time``).
- Shape 0 is "a JSON row": the row is the next of ``others`` (a row object of wire format 2:
  ICMP, GRE and any row without ports).

A row becomes ``{"proto", "l3", "state", "nat", "orig": {"src", "dst", "sport", "dport"},
"reply": {...}, "flags", ["timeout"], extras...}``: exactly the JSON row of wire format 2.

>>> rows = [{"proto": "udp", "l3": "ipv4", "state": None, "nat": "snat",
...          "orig": {"src": "198.18.1.10", "dst": "203.0.113.5", "sport": 5000, "dport": 53},
...          "reply": {"src": "203.0.113.5", "dst": "198.51.100.1", "sport": 53,
...                    "dport": 5000}, "flags": ["UNREPLIED"], "timeout": 29, "use": 2}]
>>> block = BlockWriter().block(rows)
>>> head, payload = block.split(b"\\n", 1)
>>> json.loads(head.decode())["shapes"], len(payload)
([['udp', 'ipv4', None, 'snat', ['UNREPLIED'], True, [['use', 2]]]], 64)
"""

import array
import json
import sys
import zlib
from typing import Any, Callable, Dict, Iterable, Iterator, List, Optional, Set, Tuple

BLOCK_ROWS = 4096
ZLIB_LEVEL = 6
PORTED = frozenset(("tcp", "udp", "udplite", "sctp", "dccp"))
BASE_KEYS = frozenset(("proto", "l3", "state", "nat", "orig", "reply", "flags", "timeout"))
SHAPE_EXTRAS = frozenset(("mark", "zone", "zone_orig", "zone_reply", "use", "secctx"))
COLUMN_EXTRAS = ("packets_orig", "bytes_orig", "packets_reply", "bytes_reply", "delta_time")
COLUMNS = ("shape", "osrc", "odst", "rsrc", "rdst", "osp", "odp", "rsp", "rdp", "timeout")
PORT_COLUMNS = frozenset(("osp", "odp", "rsp", "rdp"))


def typecode(size: int, signed: bool = False) -> str:
    """The array typecode of (un)signed integers of ``size`` bytes on this machine."""
    for code in ("b", "h", "i", "l", "q") if signed else ("B", "H", "I", "L", "Q"):
        if array.array(code).itemsize == size:
            return code
    raise RuntimeError(f"no integer type of {size} bytes")


I32, I64, U64 = typecode(4, True), typecode(8, True), typecode(8)
# a column holds differences: exact in a signed type twice as wide as its values (ports
# u16, the rest u32), so inflating is a running sum; extra counters (u64) wrap modulo 2**64
COLUMN_TYPES = tuple(I32 if name in PORT_COLUMNS else I64 for name in COLUMNS)
COLUMN_HIGH = tuple(65535 if name in PORT_COLUMNS else (1 << 32) - 1 for name in COLUMNS)
BIG_ENDIAN = sys.byteorder == "big"

_ENCODER = json.JSONEncoder(ensure_ascii=True, allow_nan=False, separators=(",", ":"))


def deltas(values: List[int], bits: int = 0) -> List[int]:
    """Each value minus the one before it (the first minus 0); modulo 2**bits if given.

    >>> deltas([5, 5, 6, 4]), deltas([5, 5, 6, 4], 16)
    ([5, 0, 1, -2], [5, 0, 1, 65534])
    """
    if not bits:
        return [b - a for a, b in zip([0] + values, values)]
    mask = (1 << bits) - 1
    return [(b - a) & mask for a, b in zip([0] + values, values)]


def packed(code: str, values: List[int]) -> bytes:
    """``values`` as little-endian integers of the array type ``code``."""
    data = array.array(code, values)
    if BIG_ENDIAN:
        data.byteswap()
    return data.tobytes()


Split = Tuple[Any, Tuple[str, str, str, str], Tuple[int, int, int, int], int, Dict[str, int]]


def _split(row: Dict[str, Any]) -> Optional[Split]:
    """(shape, addresses, ports, timeout, extra column values) of a JSON row with ports;
    None for a row sent as JSON."""
    orig, reply = row["orig"], row["reply"]
    if (
        row["proto"] not in PORTED
        or len(orig) != 4
        or len(reply) != 4
        or "sport" not in orig
        or "sport" not in reply
    ):
        return None
    extras = []
    columns = {}
    for key, value in row.items():
        if key in BASE_KEYS:
            continue
        if key in SHAPE_EXTRAS:
            extras.append((key, value))
        elif key in COLUMN_EXTRAS:
            extras.append((key, None))
            columns[key] = value
        else:
            return None  # gre, or a key this encoding does not know: a JSON row
    shape = (
        row["proto"],
        row["l3"],
        row["state"],
        row["nat"],
        tuple(row["flags"]),
        "timeout" in row,
        tuple(extras),
    )
    addresses = (orig["src"], orig["dst"], reply["src"], reply["dst"])
    ports = (orig["sport"], orig["dport"], reply["sport"], reply["dport"])
    return shape, addresses, ports, row.get("timeout") or 0, columns


_TAILS = {}  # type: Dict[Tuple[str, str], Tuple[Tuple[str, ...], Tuple[Any, ...]]]
TAILS_MAX = 4096


def _tails(otail: str, rtail: str) -> Optional[Tuple[Tuple[str, ...], Tuple[Any, ...], Any]]:
    """(flags, extras, extra column values) of the fields after a line's two tuples, read
    with Flow.to_json's own tables; None for a field to_json would leave out (it decides)."""
    found = _TAILS.get((otail, rtail))
    if found is not None:
        return found[0], found[1], None
    from natfleet import agent

    flags = []  # type: List[str]
    extras = {}  # type: Dict[str, Any]
    # (a key given twice: its last value, as Flow.to_json takes it)
    columns = {}  # type: Dict[str, int]
    for tail, names in ((otail, agent._ORIG_KEYS), (rtail, agent._REPLY_KEYS)):
        for tok in tail.split():
            if tok in agent.FLAG_TOKENS:  # each flag once, in the line's order
                flags += [tok[1:-1]] if tok[1:-1] not in flags else []
                continue
            key, _eq, value = tok.partition("=")
            name = names.get(key)
            if name is None:
                if key != "secctx":
                    return None
                extras[key] = value
            elif name in COLUMN_EXTRAS:
                columns[name] = int(value)
                extras[name] = None
            else:
                extras[name] = int(value)
    done = (tuple(flags), tuple(extras.items()))
    if not columns:
        if len(_TAILS) >= TAILS_MAX:
            _TAILS.clear()
        _TAILS[(otail, rtail)] = done
    return done[0], done[1], columns


def _flow_split(flow: Any) -> Optional[Split]:
    """:func:`_split` of an agent Flow straight from its line, without building its JSON
    row (the common case: a port protocol); None when only Flow.to_json can tell."""
    line = flow.line
    if line is None or flow.proto not in PORTED or flow.gre is not None:
        return None
    parts = line.split(" src=", 2)
    if len(parts) != 3:
        return None
    orig = parts[1].split(" ", 4)
    reply = parts[2].split(" ", 4)
    if len(orig) < 4 or len(reply) < 4 or orig[2][:6] != "sport=" or reply[2][:6] != "sport=":
        return None
    tails = _tails(orig[4] if len(orig) == 5 else "", reply[4] if len(reply) == 5 else "")
    if tails is None:
        return None
    flags, extras, columns = tails
    timeout = flow.timeout
    shape = (flow.proto, flow.l3, flow.state, flow.nat, flags, timeout is not None, extras)
    addresses = (flow.osrc, flow.odst, flow.rsrc, flow.rdst)
    ports = (int(flow.osp), int(flow.odp), int(flow.rsp), int(flow.rdp))
    return shape, addresses, ports, timeout or 0, columns or {}


class BlockWriter:
    """Encodes rows into blocks; the address and shape tables grow over the answer."""

    def __init__(self) -> None:
        self.addresses = {}  # type: Dict[str, int]
        self.shapes = {}  # type: Dict[Any, int]

    def _address(self, addr: str, new: List[str]) -> int:
        index = self.addresses.get(addr)
        if index is None:
            index = self.addresses[addr] = len(self.addresses)
            new.append(addr)
        return index

    def block(self, rows: List[Any]) -> bytes:
        """One block (descriptor line and columns) of ``rows``: JSON rows, or agent Flows
        (encoded from their line where they can be, else from their JSON row)."""
        new_addresses = []  # type: List[str]
        new_shapes = []  # type: List[Any]
        others = []  # type: List[Dict[str, Any]]
        columns = [[] for _ in COLUMNS]  # type: List[List[int]]
        extra = dict((key, []) for key in COLUMN_EXTRAS)  # type: Dict[str, List[int]]
        used: Set[str] = set()
        address = self._address
        shapes = self.shapes
        for row in rows:
            split = None
            if isinstance(row, dict):
                split = _split(row)
            else:
                split = _flow_split(row)
                if split is None:
                    row = row.to_json()
                    split = _split(row)
            if split is None:
                others.append(row)
                for column in columns:
                    column.append(0)
                for zeros in extra.values():
                    zeros.append(0)
                continue
            shape, (osrc, odst, rsrc, rdst), ports, timeout, counters = split
            index = shapes.get(shape)
            if index is None:
                index = shapes[shape] = len(shapes) + 1
                new_shapes.append(
                    [shape[0], shape[1], shape[2], shape[3], list(shape[4]), shape[5]]
                    + [[list(pair) for pair in shape[6]]]
                )
            values = (
                (
                    index,
                    address(osrc, new_addresses),
                    address(odst, new_addresses),
                    address(rsrc, new_addresses),
                    address(rdst, new_addresses),
                )
                + ports
                + (timeout,)
            )
            for column, value in zip(columns, values):
                column.append(value)
            if counters:
                used.update(counters)
            for key, values_of in extra.items():
                values_of.append(counters.get(key, 0))
        names = [key for key in COLUMN_EXTRAS if key in used]
        parts = [packed(code, deltas(values)) for code, values in zip(COLUMN_TYPES, columns)]
        parts += [packed(U64, deltas(extra[key], 64)) for key in names]
        payload = b"".join(parts)
        descriptor = {
            "n": len(rows),
            "addresses": new_addresses,
            "shapes": new_shapes,
            "columns": names,
            "others": others,
            "bytes": len(payload),
        }
        return _ENCODER.encode(descriptor).encode("ascii") + b"\n" + payload


def compact_answer(
    header: str,
    rows: Iterable[Dict[str, Any]],
    failure: Callable[[BaseException, int], str],
    level: int = ZLIB_LEVEL,
) -> Iterator[bytes]:
    """The compressed answer: ``header`` (a wire format 2 header line), then the ``rows``
    (JSON rows, as many as the header says) in blocks; pieces of the zlib stream. Should a
    row fail (a bug), ``failure(exc, rows sent)`` is the line that takes the place of the
    remaining blocks and ends the answer.

    >>> data = b"".join(compact_answer('{"agent":2,"ok":true,"rows":0}', [], None))
    >>> zlib.decompress(data)
    b'{"agent":2,"ok":true,"rows":0}\\n'
    """
    z = zlib.compressobj(level)
    piece = z.compress(header.encode("ascii") + b"\n")
    if piece:
        yield piece
    writer = BlockWriter()
    block = []  # type: List[Dict[str, Any]]
    sent = 0
    try:
        for row in rows:
            block.append(row)
            if len(block) >= BLOCK_ROWS:
                piece = z.compress(writer.block(block))
                sent += len(block)
                block = []
                if piece:
                    yield piece
        if block:
            piece = z.compress(writer.block(block))
            if piece:
                yield piece
    except Exception as exc:
        yield z.compress(failure(exc, sent).encode("ascii") + b"\n")
    yield z.flush()


def compressed_lines(lines: Iterable[str], level: int = ZLIB_LEVEL) -> Iterator[bytes]:
    """Text lines (each ended by a newline) as pieces of one zlib stream: a compact answer
    without rows (summary, info, a failure)."""
    z = zlib.compressobj(level)
    for line in lines:
        piece = z.compress(line.encode("ascii") + b"\n")
        if piece:
            yield piece
    yield z.flush()
