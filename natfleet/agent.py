"""natfleet agent: read, parse, classify, filter and summarise a Linux conntrack table.

Stdlib only, Python 3.6+, one file: natfleet ships it to a NAT box's own python3 on stdin
and imports the very same file locally (``natfleet local``, ``--input``, raw dumps).

It reads one JSON request (at most 1 MiB) on stdin and answers in wire format 2: ASCII-only
strict JSON, one object per line; the header first (the answer without its rows, with
``"rows": N`` in list mode), then the N rows:

    $ echo '{"mode": "list", "limit": 1}' | sudo python3 natfleet/agent.py
    {"agent":2,"ok":true,"warnings":[],"hostname":"nat-a",...,"matched":9,...,"rows":1}
    {"proto":"tcp","l3":"ipv4","state":"ESTABLISHED","nat":"snat",...}
    $ echo '{"top": "x"}' | python3 natfleet/agent.py
    {"agent":2,"ok":false,"error":{"kind":"bad_request","message":"top: ..."}}

The request and the answer are documented in docs/json.md. Every read goes through a
*sources* object (``LocalSources(root)`` for a live machine or a fixture folder,
``DumpSources`` for captured texts), so parsers never open paths themselves.
"""

import gc
import io
import ipaddress
import json
import marshal
import math
import os
import re
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from operator import itemgetter
from typing import (
    IO,
    Any,
    Callable,
    Dict,
    FrozenSet,
    Iterable,
    Iterator,
    List,
    Optional,
    Sequence,
    Set,
    Tuple,
    Union,
)

AGENT_VERSION = 2
MAX_REQUEST_BYTES = 1 << 20  # a request is a few hundred bytes; more is not a request
OUT_CHUNK_CHARS = 1 << 20  # main() writes stdout in chunks of about this many characters
MESSAGE_MAX = 2000  # an error message's characters (an exception may quote a whole file)
HOSTNAME_MAX = 253  # a DNS name (the kernel's own limit is 64)
WARNINGS_MAX = 100  # warnings in one answer (the last one then says how many more)

TABLE_PROC = "/proc/net/nf_conntrack"
TABLE_OLD = "/proc/net/ip_conntrack"
CONNTRACK_CMD = ("conntrack", "-L", "-o", "extended")
COUNT_PATH = "/proc/sys/net/netfilter/nf_conntrack_count"
MAX_PATH = "/proc/sys/net/netfilter/nf_conntrack_max"
STAT_PATH = "/proc/net/stat/nf_conntrack"
PORT_RANGE_PATH = "/proc/sys/net/ipv4/ip_local_port_range"
FIB_TRIE_PATH = "/proc/net/fib_trie"
IF_INET6_PATH = "/proc/net/if_inet6"
HOSTNAME_PATH = "/proc/sys/kernel/hostname"
SYS_NET = "/sys/class/net"

PROTO_NAMES = {
    1: "icmp",
    6: "tcp",
    17: "udp",
    33: "dccp",
    47: "gre",
    58: "icmpv6",
    132: "sctp",
    136: "udplite",
}
PROTO_NUMBERS = {name: num for num, name in PROTO_NAMES.items()}
PORT_PROTOS = frozenset((6, 17, 132, 136))  # always printed with ports
ICMP_PROTOS = frozenset((1, 58))
GRE = 47
TCP_STATES = (
    "NONE SYN_SENT SYN_RECV ESTABLISHED FIN_WAIT CLOSE_WAIT LAST_ACK TIME_WAIT CLOSE SYN_SENT2"
)
SCTP_STATES = (
    "CLOSED COOKIE_WAIT COOKIE_ECHOED ESTABLISHED SHUTDOWN_SENT SHUTDOWN_RECD "
    "SHUTDOWN_ACK_SENT HEARTBEAT_SENT HEARTBEAT_ACKED"
)
DCCP_STATES = "REQUEST RESPOND PARTOPEN OPEN CLOSEREQ CLOSING TIMEWAIT IGNORE INVALID"
STATES = frozenset(" ".join((TCP_STATES, SCTP_STATES, DCCP_STATES)).split(" "))
FLAG_TOKENS = frozenset(("[UNREPLIED]", "[ASSURED]", "[OFFLOAD]", "[HW_OFFLOAD]"))
NAT_KINDS = ("snat", "dnat", "snat+dnat", "local", "routed")
TRANSLATED = frozenset(("snat", "dnat", "snat+dnat"))
SORT_KEYS = ("src", "dst", "src-port", "dst-port", "state")
ENA_KEYS = (
    "conntrack_allowance_exceeded",
    "conntrack_allowance_available",
    "bw_in_allowance_exceeded",
    "bw_out_allowance_exceeded",
    "pps_allowance_exceeded",
    "linklocal_allowance_exceeded",
)
MALFORMED_EXAMPLES = 5
COUNTER_CAPACITY = 20000

RAW_MARK = "@@natfleet "
RAW_FILES = (
    TABLE_PROC,
    TABLE_OLD,
    COUNT_PATH,
    MAX_PATH,
    STAT_PATH,
    PORT_RANGE_PATH,
    FIB_TRIE_PATH,
    IF_INET6_PATH,
    HOSTNAME_PATH,
)
# For boxes without python3: a constant command (no user input), split by split_raw_dump().
RAW_COMMAND = (
    "sh -c 'for f in "
    + " ".join(RAW_FILES)
    + '; do if [ -r "$f" ]; then echo "'
    + RAW_MARK
    + 'file $f"; cat "$f"; fi; done; '
    + "if [ ! -r "
    + TABLE_PROC
    + ' ] && command -v conntrack >/dev/null 2>&1; then echo "'
    + RAW_MARK
    + "cmd "
    + " ".join(CONNTRACK_CMD)
    + '"; '
    + " ".join(CONNTRACK_CMD)
    + " 2>/dev/null; fi'"
)


# parse_fields' tuple: (pnum, timeout, state, osrc, odst, osp, odp, rsrc, rdst, rsp, rdp, l3,
# gre); ports, ICMP ids and GRE keys stay text.
Fields = Tuple[
    int,
    Optional[int],
    Optional[str],
    str,
    str,
    Optional[str],
    Optional[str],
    str,
    str,
    Optional[str],
    Optional[str],
    Optional[str],
    Optional[Dict[str, int]],
]
Json = Dict[str, Any]


class Malformed(ValueError):
    """A table line that does not follow the conntrack grammar."""


class AgentError(Exception):
    """The request cannot be served: ``kind`` is permission, no_table, bad_request or agent."""

    def __init__(self, kind: str, message: str) -> None:
        Exception.__init__(self, message)
        self.kind = kind


# --------------------------------------------------------------------------- sources


class LocalSources(object):
    """Reads a live machine (root ``/``) or a folder laid out like one (tests).

    >>> LocalSources("tests/data/root").path("/proc/net/nf_conntrack")
    'tests/data/root/proc/net/nf_conntrack'
    """

    def __init__(self, root: str = "/") -> None:
        self.root = root

    def path(self, path: str) -> str:
        return os.path.join(self.root, path.lstrip("/"))

    def exists(self, path: str) -> bool:
        return os.path.exists(self.path(path))

    def open_lines(self, path: str) -> IO[str]:
        """A text stream (read/readline); raises FileNotFoundError or PermissionError."""
        return open(self.path(path), "r", encoding="ascii", errors="replace", buffering=1 << 20)

    def read(self, path: str) -> Optional[str]:
        """The file's text, or None if it is missing or unreadable."""
        try:
            with open(self.path(path), "r", encoding="ascii", errors="replace") as handle:
                return handle.read()
        except (IOError, OSError):
            return None

    def listdir(self, path: str) -> List[str]:
        try:
            return sorted(os.listdir(self.path(path)))
        except (IOError, OSError):
            return []

    def readlink(self, path: str) -> Optional[str]:
        try:
            return os.readlink(self.path(path))
        except (IOError, OSError):
            return None

    def command_lines(self, argv: Sequence[str]) -> "Optional[_CommandLines]":
        """A command's output stream, or None when it is not installed (live root only)."""
        if self.root != "/":
            return None
        try:
            proc = subprocess.Popen(
                list(argv),
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,  # a line or two: its count, or why it failed
                encoding="ascii",
                errors="replace",  # bytes that are not text become malformed lines
                bufsize=1 << 20,
            )
        except (IOError, OSError):
            return None
        return _CommandLines(proc, " ".join(argv))

    def command(self, argv: Sequence[str], timeout: float = 10) -> Optional[str]:
        """A command's output as text, or None when missing, failing or slow."""
        if self.root != "/":
            return None
        try:
            out = subprocess.run(
                list(argv),
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                encoding="ascii",
                errors="replace",
                timeout=timeout,
            )
        except (IOError, OSError, subprocess.SubprocessError):
            return None
        return out.stdout if out.returncode == 0 else None


class _CommandLines(object):
    """A command's stdout as a stream; on exit it is reaped, and a command that failed
    raises AgentError with what it said (a failing ``conntrack -L`` is not an empty table)."""

    def __init__(self, proc: "subprocess.Popen[str]", name: str) -> None:
        self.proc = proc
        self.name = name
        assert proc.stdout is not None and proc.stderr is not None
        self.stdout: IO[str] = proc.stdout
        self.stderr: IO[str] = proc.stderr
        self.buffer = proc.stdout.buffer  # type: ignore[attr-defined]  # the bytes below

    def read(self, size: int = -1) -> str:
        return self.stdout.read(size)

    def readline(self) -> str:
        return self.stdout.readline()

    def __enter__(self) -> "_CommandLines":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stdout.close()
        said = self.stderr.read(MESSAGE_MAX).strip()
        self.stderr.close()
        if self.proc.wait() != 0 and exc[0] is None:
            kind = "permission" if "not permitted" in said.lower() else "no_table"
            raise AgentError(
                kind,
                "%s failed (exit %d): %s" % (self.name, self.proc.returncode, said),
            )


class DumpSources(object):
    """Serves captured texts: ``{path: text}``, commands under ``"$ " + argv``.

    ``table_file`` streams a saved table from disk (``--input``) as the conntrack table.

    >>> DumpSources({"/proc/sys/net/netfilter/nf_conntrack_max": "65536\\n"}).read(MAX_PATH)
    '65536\\n'
    """

    def __init__(
        self, files: Optional[Dict[str, str]] = None, table_file: Optional[str] = None
    ) -> None:
        self.files = dict(files or {})
        self.table_file = table_file

    def exists(self, path: str) -> bool:
        return path in self.files or (path == TABLE_PROC and self.table_file is not None)

    def open_lines(self, path: str) -> "Union[IO[str], _Borrowed]":
        if path == TABLE_PROC and self.table_file is not None:
            if self.table_file == "-":  # bytes as they come, like a file: never a traceback
                return _Borrowed(io.TextIOWrapper(sys.stdin.buffer, "ascii", "replace"))
            return open(self.table_file, "r", encoding="ascii", errors="replace")
        if path not in self.files:
            raise FileNotFoundError(path)
        return io.StringIO(self.files[path], newline=None)

    def read(self, path: str) -> Optional[str]:
        return self.files.get(path)

    def listdir(self, path: str) -> List[str]:
        prefix = path.rstrip("/") + "/"
        names = set(p[len(prefix) :].split("/")[0] for p in self.files if p.startswith(prefix))
        return sorted(names)

    def readlink(self, path: str) -> Optional[str]:
        return self.files.get(path)

    def command_lines(self, argv: Sequence[str]) -> Optional[IO[str]]:
        text = self.files.get("$ " + " ".join(argv))
        return None if text is None else io.StringIO(text, newline=None)

    def command(self, argv: Sequence[str], timeout: float = 10) -> Optional[str]:
        return self.files.get("$ " + " ".join(argv))


class _Borrowed(object):
    """A stream the agent reads but does not own (stdin): not closed on exit."""

    def __init__(self, stream: IO[str]) -> None:
        self.stream = stream
        self.buffer = stream.buffer  # type: ignore[attr-defined]  # the bytes below

    def read(self, size: int = -1) -> str:
        return self.stream.read(size)

    def readline(self) -> str:
        return self.stream.readline()

    def __enter__(self) -> "_Borrowed":
        return self

    def __exit__(self, *exc: Any) -> None:
        return None


Sources = Union[LocalSources, DumpSources]
# What open_table() hands out: read(size), readline(), and a context manager.
Stream = Union[IO[str], _CommandLines, _Borrowed]


def split_raw_dump(text: str) -> Dict[str, str]:
    """Turn RAW_COMMAND's output into a ``{path: text}`` dict for DumpSources.

    >>> split_raw_dump("@@natfleet file /proc/sys/net/netfilter/nf_conntrack_max\\n65536\\n")
    {'/proc/sys/net/netfilter/nf_conntrack_max': '65536\\n'}
    """
    files: Dict[str, str] = {}
    key: Optional[str] = None
    chunk: List[str] = []
    for line in text.splitlines(True):
        if line.startswith(RAW_MARK):
            if key is not None:
                files[key] = "".join(chunk)
            kind, _, name = line[len(RAW_MARK) :].strip().partition(" ")
            key = name if kind == "file" else "$ " + name
            chunk = []
        elif key is not None:
            chunk.append(line)
    if key is not None:
        files[key] = "".join(chunk)
    return files


# --------------------------------------------------------------------------- addresses

_ADDR_CACHE: Dict[str, str] = {}
_ADDR_CACHE_MAX = 1 << 16


def canonical_address(text: str) -> str:
    """The compressed form of an IPv4/IPv6 address; raises Malformed otherwise.

    >>> canonical_address("2001:0db8:0000:0000:0000:0000:0000:0010")
    '2001:db8::10'
    """
    found = _ADDR_CACHE.get(text)
    if found is not None:
        return found
    try:
        if ":" in text:
            canon = socket.inet_ntop(socket.AF_INET6, socket.inet_pton(socket.AF_INET6, text))
        else:
            socket.inet_pton(socket.AF_INET, text)
            canon = text
    except (OSError, ValueError, UnicodeError):
        raise Malformed("bad address %r" % text) from None
    if len(_ADDR_CACHE) >= _ADDR_CACHE_MAX:
        _ADDR_CACHE.clear()
    _ADDR_CACHE[text] = canon
    return canon


_SORT_CACHE: Dict[str, Tuple[bool, bytes]] = {}


def address_key(addr: str) -> Tuple[bool, bytes]:
    """A sort key putting IPv4 before IPv6, each in numeric order (10.0.0.2 < 10.0.0.10)."""
    found = _SORT_CACHE.get(addr)
    if found is None:
        if len(_SORT_CACHE) >= _ADDR_CACHE_MAX:
            _SORT_CACHE.clear()
        family = socket.AF_INET6 if ":" in addr else socket.AF_INET
        found = _SORT_CACHE[addr] = (family == socket.AF_INET6, socket.inet_pton(family, addr))
    return found


# --------------------------------------------------------------------------- parsing


_DIGITS = "0123456789"
_HEX = "0123456789abcdefABCDEF"
PORT_MAX = "65535"  # ports and ICMP ids
BYTE_MAX = "255"  # protocol numbers, ICMP type and code
U32_MAX = "4294967295"  # timeouts
U64_MAX = "18446744073709551615"  # counters, marks, zones, use
GRE_KEY_MAX = 10  # "0x" and at most 8 hex digits


def _number_ok(text: str, most: str) -> bool:
    """``text`` is ASCII digits for a number from 0 to ``most`` (digits too).

    >>> _number_ok("65535", "65535"), _number_ok("65536", "65535"), _number_ok("-1", "9")
    (True, False, False)
    """
    n = len(text)
    if not n or n > len(most) or text.strip(_DIGITS):
        return False
    return n < len(most) or text <= most


def _gre_key_ok(text: str) -> bool:
    return 2 < len(text) <= GRE_KEY_MAX and text[:2] == "0x" and not text[2:].strip(_HEX)


def _tuple(tokens: List[str], pnum: int) -> Tuple[str, str, Optional[str], Optional[str], int]:
    """(src, dst, sport-like, dport-like, consumed) from ``['A', 'dst=B', 'sport=1', ...]``.

    The layout is read from the tokens, not guessed from the protocol (the kernel prints
    DCCP as ``unknown 33`` with no ports); tcp, udp, udplite and sctp must have ports.
    Every number must be in its range, so that a row always fits docs/json.md.
    """
    if len(tokens) >= 4:  # the usual port tuple, checked with the fewest steps
        src, dst, sport, dport = tokens[0], tokens[1], tokens[2], tokens[3]
        if sport[:6] == "sport=" and dport[:6] == "dport=" and dst[:4] == "dst=":
            sport, dport, dst = sport[6:], dport[6:], dst[4:]
            if (
                sport.isdecimal()  # what int() takes (isdigit() also says yes to "²")
                and dport.isdecimal()
                and (len(sport) < 5 or (len(sport) == 5 and sport <= PORT_MAX))
                and (len(dport) < 5 or (len(dport) == 5 and dport <= PORT_MAX))
            ):
                return (
                    _ADDR_CACHE.get(src) or canonical_address(src),
                    _ADDR_CACHE.get(dst) or canonical_address(dst),
                    sport,
                    dport,
                    4,
                )
    try:
        dst = tokens[1]
        if dst[:4] != "dst=":
            raise Malformed("no dst=")
        src = _ADDR_CACHE.get(tokens[0]) or canonical_address(tokens[0])
        dst = dst[4:]
        dst = _ADDR_CACHE.get(dst) or canonical_address(dst)
        third = tokens[2] if len(tokens) > 2 else ""
        if third[:6] == "sport=":
            sport, dport = third[6:], tokens[3]
            if dport[:6] != "dport=":
                raise Malformed("no dport=")
            dport = dport[6:]
            if not (_number_ok(sport, PORT_MAX) and _number_ok(dport, PORT_MAX)):
                raise Malformed("bad port")
            return src, dst, sport, dport, 4
        if pnum in PORT_PROTOS:
            raise Malformed("no ports")
        if third.startswith("type=") and pnum in ICMP_PROTOS:
            code, ident = tokens[3], tokens[4]
            if not (code.startswith("code=") and ident.startswith("id=")):
                raise Malformed("bad icmp tuple")
            ident = ident[3:]
            if not (
                _number_ok(third[5:], BYTE_MAX)
                and _number_ok(code[5:], BYTE_MAX)
                and _number_ok(ident, PORT_MAX)
            ):
                raise Malformed("bad icmp type, code or id")
            return src, dst, ident, None, 5
        if pnum in ICMP_PROTOS:
            raise Malformed("no icmp type/code/id")
        if third.startswith("srckey=") and pnum == GRE:
            dstkey = tokens[3]
            if not (
                dstkey.startswith("dstkey=") and _gre_key_ok(third[7:]) and _gre_key_ok(dstkey[7:])
            ):
                raise Malformed("bad gre keys")
            return src, dst, third[7:], dstkey[7:], 4
        return src, dst, None, None, 2
    except IndexError:
        raise Malformed("short tuple") from None


_COMMON_EXTRAS = frozenset(
    ("[UNREPLIED]", "[ASSURED]", "[OFFLOAD]", "[HW_OFFLOAD]", "mark=0", "zone=0")
    + tuple("use=%d" % n for n in range(1, 10))
)


SECCTX_MAX = 256


def _extras_ok(
    tokens: List[str], _common: Callable[[Iterable[str]], bool] = _COMMON_EXTRAS.issuperset
) -> bool:
    """Every field after a tuple is a known flag, ``key=DIGITS`` in that key's range (a u64
    unless _EXTRA_MAX says less) or ``secctx=...``."""
    if _common(tokens):
        return True  # the usual tail, checked in one C call
    for tok in tokens:
        key, eq, value = tok.partition("=")
        if value.isdecimal():  # int() takes every isdecimal() text
            n = len(value)
            if n < 5 and key:
                continue  # below every key's maximum
            most = _EXTRA_MAX.get(key, U64_MAX)
            if key and (n < len(most) or (n == len(most) and value <= most)):
                continue
            return False
        if tok in FLAG_TOKENS:
            continue
        if key != "secctx" or not eq or len(value) > SECCTX_MAX:
            return False
    return True


# docs/json.md's ranges for the numbered fields after a tuple (others: a u64)
_EXTRA_MAX = {
    "mark": U32_MAX,
    "use": U32_MAX,
    "delta-time": U32_MAX,
    "zone": PORT_MAX,
    "zone-orig": PORT_MAX,
    "zone-reply": PORT_MAX,
}


def parse_fields(line: str) -> Fields:
    """Parse one table line (nf_conntrack, ``conntrack -L [-o extended]`` or ip_conntrack)
    into a plain tuple ``(pnum, timeout, state, osrc, odst, osp, odp, rsrc, rdst, rsp, rdp,
    l3, gre)``: the one parser behind both the summary loop and :class:`Flow`.

    Addresses come back compressed; ports (ICMP ids, GRE keys) stay text. For ICMP the
    original id is ``osp`` and the reply's is ``rdp``. Raises :class:`Malformed`.

    >>> parse_fields("ipv4     2 udp      17 29 src=192.168.1.10 dst=203.0.113.53 "
    ...     "sport=5353 dport=53 packets=0 bytes=0 [UNREPLIED] src=203.0.113.53 "
    ...     "dst=198.51.100.1 sport=53 dport=5353 packets=0 bytes=0 mark=0 zone=0 "
    ...     "delta-time=0 use=2")[:7]
    (17, 29, None, '192.168.1.10', '203.0.113.53', '5353', '53')
    """
    parts = line.split(" src=", 2)
    if len(parts) != 3:
        raise Malformed("expected two tuples")
    head = parts[0].split()
    otoks = parts[1].split()
    rtoks = parts[2].split()
    n = len(head)
    if n and (head[0] == "ipv4" or head[0] == "ipv6"):
        if n < 4 or not head[1].isdecimal():
            raise Malformed("bad l3 fields")
        l3, k = head[0], 3
    elif n >= 2:
        l3, k = None, 1
    else:
        raise Malformed("short header")
    pnum_text = head[k]
    if not (pnum_text.isdecimal() and len(pnum_text) <= 3):
        raise Malformed("bad protocol number")
    pnum = int(pnum_text)
    if pnum > 255:
        raise Malformed("bad protocol number")
    timeout: Optional[int] = None
    state: Optional[str] = None
    gre: Optional[Dict[str, int]] = None
    k += 1
    if k < n and head[k].isdecimal():
        if len(head[k]) > 10:
            raise Malformed("bad timeout")
        timeout = int(head[k])
        if timeout > 0xFFFFFFFF:
            raise Malformed("bad timeout")
        k += 1
    if k < n:
        if k + 1 == n and head[k] in STATES:
            state = head[k]
        elif pnum == GRE and head[k].startswith("timeout=") and k + 2 == n:
            first, second = head[k][8:].rstrip(","), head[k + 1]
            if not (
                second.startswith("stream_timeout=")
                and _number_ok(first, U32_MAX)
                and _number_ok(second[15:], U32_MAX)
            ):
                raise Malformed("bad gre timeouts")
            gre = {"timeout": int(first), "stream_timeout": int(second[15:])}
        else:
            raise Malformed("unexpected %r before the tuples" % " ".join(head[k:]))
    osrc, odst, osp, odp, used = _tuple(otoks, pnum)
    if len(otoks) > used and not _extras_ok(otoks[used:]):
        raise Malformed("bad key=value field")
    rsrc, rdst, rsp, rdp, used = _tuple(rtoks, pnum)
    if rtoks[-1][:4] != "use=":
        raise Malformed("truncated line (no use= at the end)")
    if not _extras_ok(rtoks[used:]):
        raise Malformed("bad key=value field")
    if pnum in ICMP_PROTOS:
        rsp, rdp = None, rsp  # the reply's id identifies the original source
    v6 = ":" in osrc
    if (":" in odst) is not v6 or (":" in rsrc) is not v6 or (":" in rdst) is not v6:
        raise Malformed("IPv4 and IPv6 addresses in one entry")
    if l3 is None:
        l3 = "ipv6" if v6 else "ipv4"
    elif (l3 == "ipv6") is not v6:
        raise Malformed("%s with IPv%d addresses" % (l3, 6 if v6 else 4))
    return (pnum, timeout, state, osrc, odst, osp, odp, rsrc, rdst, rsp, rdp, l3, gre)


def nat_kind(fields: Fields, own: "Union[Set[str], FrozenSet[str], Tuple[str, ...]]") -> str:
    """snat, dnat, snat+dnat, local or routed, from parse_fields' tuple; ports count, so
    REDIRECT and port remapping are NAT. For ICMP the id plays the port.

    >>> nat_kind((6, None, "ESTABLISHED", "192.0.2.1", "203.0.113.5", "40000", "443",
    ...           "203.0.113.5", "192.0.2.1", "443", "40000", "ipv4", None), ())
    'routed'
    """
    pnum, _t, _s, osrc, odst, osp, odp, rsrc, rdst, rsp, rdp = fields[:11]
    snat = rdst != osrc or rdp != osp
    dnat = rsrc != odst or rsp != odp  # for ICMP both ports are None
    if snat:
        return "snat+dnat" if dnat else "snat"
    if dnat:
        return "dnat"
    if osrc in own or odst in own:
        return "local"
    return "routed"


def proto_name(pnum: int) -> str:
    """``tcp`` for 6; a protocol the kernel does not name keeps its number (``"99"``)."""
    return PROTO_NAMES.get(pnum) or str(pnum)


def line_state(state: Optional[str], line: str) -> str:
    """TCP/SCTP/DCCP state; otherwise what the line's flags say: UNREPLIED, ASSURED,
    HW_OFFLOAD, OFFLOAD, else REPLIED."""
    if state:
        return state
    if "[UNREPLIED]" in line:
        return "UNREPLIED"
    if "[ASSURED]" in line:
        return "ASSURED"
    if "[HW_OFFLOAD]" in line:
        return "HW_OFFLOAD"
    if "[OFFLOAD]" in line:
        return "OFFLOAD"
    return "REPLIED"


class Flow(object):
    """One conntrack entry for listings: the parsed fields, the NAT kind and the raw line
    (the rest is parsed only for ``to_json()``).

    >>> f = Flow.parse("ipv4     2 tcp      6 3599 ESTABLISHED src=192.168.1.10 "
    ...     "dst=203.0.113.5 sport=40000 dport=443 src=203.0.113.5 dst=198.51.100.1 "
    ...     "sport=443 dport=61000 [ASSURED] mark=0 zone=0 use=2", own=())
    >>> f.proto, f.state, f.nat, f.rdst, f.rdp
    ('tcp', 'ESTABLISHED', 'snat', '198.51.100.1', '61000')
    """

    __slots__ = (
        "pnum",
        "timeout",
        "state",
        "osrc",
        "odst",
        "osp",
        "odp",
        "rsrc",
        "rdst",
        "rsp",
        "rdp",
        "l3",
        "gre",
        "proto",
        "nat",
        "line",
        "row",
    )

    def __init__(
        self, fields: Fields, nat: str, line: Optional[str] = None, row: Optional[Json] = None
    ) -> None:
        (
            self.pnum,
            self.timeout,
            self.state,
            self.osrc,
            self.odst,
            self.osp,
            self.odp,
            self.rsrc,
            self.rdst,
            self.rsp,
            self.rdp,
            self.l3,
            self.gre,
        ) = fields
        self.proto = proto_name(self.pnum) if row is None else row["proto"]
        self.nat = nat
        self.line = line
        self.row = row

    @classmethod
    def parse(cls, line: str, own: "Union[Set[str], FrozenSet[str], Tuple[str, ...]]") -> "Flow":
        """A Flow from a table line, classified against the box's own addresses."""
        fields = parse_fields(line)
        return cls(fields, nat_kind(fields, own), line)

    def display_state(self) -> str:
        """TCP/SCTP state; otherwise UNREPLIED, ASSURED, OFFLOAD, HW_OFFLOAD or REPLIED."""
        if self.line is not None:
            return line_state(self.state, self.line)
        return line_state(self.state, " ".join("[%s]" % flag for flag in self.flags()))

    def flags(self) -> List[str]:
        """The conntrack flags (``ASSURED``, ...), each once, in the line's order."""
        if self.row is not None:
            return list(self.row.get("flags") or ())
        found: List[str] = []
        for token in (self.line or "").split():
            if token in FLAG_TOKENS and token[1:-1] not in found:
                found.append(token[1:-1])
        return found

    @classmethod
    def from_json(cls, row: Json) -> "Flow":
        """The inverse of :meth:`to_json`, for rows that came back from a remote agent;
        raises Malformed (or KeyError, TypeError) on a row that is not one.

        >>> row = {"proto": "udp", "l3": "ipv4", "state": None, "nat": "snat", "flags": [],
        ...        "orig": {"src": "198.18.1.10", "dst": "203.0.113.53", "sport": 5353,
        ...                 "dport": 53},
        ...        "reply": {"src": "203.0.113.53", "dst": "198.51.100.11", "sport": 53,
        ...                  "dport": 5353}}
        >>> Flow.from_json(row).shown()[1]
        ('198.51.100.11', '5353')
        """
        orig, reply = row["orig"], row["reply"]
        for tup in (orig, reply):  # a box's answer is data: addresses must be addresses
            tup["src"], tup["dst"] = canonical_address(tup["src"]), canonical_address(tup["dst"])
        osp, odp = _text(orig.get("sport")), _text(orig.get("dport"))
        rsp, rdp = _text(reply.get("sport")), _text(reply.get("dport"))
        if "id" in orig:
            osp, rdp = _text(orig["id"]), _text(reply.get("id"))
        elif "srckey" in orig:
            osp, odp = orig["srckey"], orig["dstkey"]
            rsp, rdp = reply.get("srckey"), reply.get("dstkey")
        fields: Fields = (
            _proto_number(row["proto"]),
            row.get("timeout"),
            row.get("state"),
            orig["src"],
            orig["dst"],
            osp,
            odp,
            reply["src"],
            reply["dst"],
            rsp,
            rdp,
            row.get("l3"),
            row.get("gre"),
        )
        return cls(fields, row["nat"], None, row)

    def shown(
        self,
    ) -> Tuple[
        Tuple[str, Optional[str]],
        Tuple[Optional[str], Optional[str]],
        Tuple[str, Optional[str]],
    ]:
        """(source, nat-host, destination) as (addr, port) pairs, the way netstat-nat lays
        them out, but right: DNAT's NAT host is the original destination *and its port*."""
        source = (self.osrc, self.osp)
        kind = self.nat
        if kind == "snat":
            return source, (self.rdst, self.rdp), (self.odst, self.odp)
        if kind == "dnat":
            return source, (self.odst, self.odp), (self.rsrc, self.rsp)
        if kind == "snat+dnat":
            return source, (self.rdst, self.rdp), (self.rsrc, self.rsp)
        return source, (None, None), (self.odst, self.odp)

    def to_json(self) -> Json:
        """The row of docs/json.md (optional keys only when the kernel printed them)."""
        if self.row is not None:
            return self.row
        _head, orig, reply = (self.line or "").split(" src=", 2)
        otoks, rtoks = orig.split(), reply.split()
        otuple, oused = _tuple_json(otoks, self.osrc, self.odst, self.pnum)
        rtuple, rused = _tuple_json(rtoks, self.rsrc, self.rdst, self.pnum)
        flags: List[str] = []
        row: Json = {
            "proto": self.proto,
            "l3": self.l3,
            "state": self.state,
            "nat": self.nat,
            "orig": otuple,
            "reply": rtuple,
            "flags": flags,
        }
        if self.timeout is not None:
            row["timeout"] = self.timeout
        if self.gre is not None:
            row["gre"] = self.gre
        flag_names = _FLAG_NAMES
        for names, tokens in ((_ORIG_KEYS, otoks[oused:]), (_REPLY_KEYS, rtoks[rused:])):
            for tok in tokens:  # the fields after the tuple (checked by parse_fields)
                flag = flag_names.get(tok)
                if flag is not None:
                    if flag not in flags:
                        flags.append(flag)
                    continue
                key, _eq, value = tok.partition("=")
                name = names.get(key)
                if name is not None:
                    row[name] = int(value)
                elif key == "secctx":
                    row["secctx"] = value
        return row


_FLAG_NAMES = dict((token, token[1:-1]) for token in FLAG_TOKENS)
_COMMON_KEYS = {
    "mark": "mark",
    "zone": "zone",
    "zone-orig": "zone_orig",
    "zone-reply": "zone_reply",
    "use": "use",
    "delta-time": "delta_time",
}
_ORIG_KEYS = dict(_COMMON_KEYS, packets="packets_orig", bytes="bytes_orig")
_REPLY_KEYS = dict(_COMMON_KEYS, packets="packets_reply", bytes="bytes_reply")


def _proto_number(name: Any) -> int:
    """A row's protocol as its number (``"tcp"`` 6, ``"99"`` 99); -1 for a name we lack."""
    if isinstance(name, str) and _number_ok(name, BYTE_MAX):
        return int(name)
    return PROTO_NUMBERS.get(name, -1)


def _text(value: Any) -> Optional[str]:
    return None if value is None else str(value)


def _tuple_json(tokens: List[str], src: str, dst: str, pnum: int) -> Tuple[Json, int]:
    """A tuple's JSON and how many tokens it took: read as :func:`_tuple` read it (which
    checked the numbers)."""
    out: Json = {"src": src, "dst": dst}
    third = tokens[2] if len(tokens) > 2 else ""
    if third[:6] == "sport=":
        out["sport"] = int(third[6:])
        out["dport"] = int(tokens[3][6:])
        return out, 4
    if third[:5] == "type=" and pnum in ICMP_PROTOS:
        out["type"] = int(third[5:])
        out["code"] = int(tokens[3][5:])
        out["id"] = int(tokens[4][3:])
        return out, 5
    if third[:7] == "srckey=" and pnum == GRE:
        out["srckey"] = third[7:]
        out["dstkey"] = tokens[3][7:]
        return out, 4
    return out, 2


def _is_trailer(line: str) -> bool:
    """conntrack's own count line, when a dump was saved with 2>&1."""
    return line.startswith("conntrack v") and "flow entries" in line


# --------------------------------------------------------------------------- host facts
#
# Each parser takes a file's text (None: the file is missing, which is normal and silent) and
# raises ValueError when the text is not what the kernel writes; host_facts() turns that into
# an unknown fact (None or empty) and a warning, so one garbled file never costs the answer.

FACT_NAME_MAX = 64


def _name_ok(name: str) -> bool:
    """A counter name as the kernel prints it: a lower-case letter, then letters, digits, ``_``.

    >>> _name_ok("insert_failed"), _name_ok("0000000b"), _name_ok("x=1")
    (True, False, False)
    """
    return (
        0 < len(name) <= FACT_NAME_MAX
        and name[0] in _LOWER
        and not name.strip(_LOWER + "_" + _DIGITS)
    )


_LOWER = "abcdefghijklmnopqrstuvwxyz"


def parse_int(text: Optional[str], most: str = U32_MAX) -> Optional[int]:
    """The one number of a /proc/sys file (nf_conntrack_count and _max are u32); None when
    the file is missing.

    >>> parse_int("262144\\n"), parse_int(None)
    (262144, None)
    """
    if text is None:
        return None
    fields = text.split()
    if len(fields) != 1 or not _number_ok(fields[0], most):
        raise ValueError("%r is not one number from 0 to %s" % (text[:40], most))
    return int(fields[0])


def read_int(sources: Sources, path: str) -> Optional[int]:
    """parse_int() of a file; raises ValueError when it is garbled."""
    return parse_int(sources.read(path))


def parse_stat(text: Optional[str]) -> Optional[Dict[str, int]]:
    """Sum /proc/net/stat/nf_conntrack by the header's names (``entries`` is not summed).

    >>> parse_stat("entries clashres found new invalid ignore delete chainlength insert "
    ...     "insert_failed drop early_drop\\n00000003 0 0 0 0 0 0 0 0 00000002 0 1\\n"
    ...     "00000003 0 0 0 0 0 0 0 0 00000001 0 0\\n")["insert_failed"]
    3
    """
    if text is None:
        return None
    lines = [line.split() for line in text.split("\n") if line.strip()]
    if not lines:
        raise ValueError("the file is empty")
    names = lines[0]
    if not all(_name_ok(name) for name in names):
        raise ValueError("the header is not counter names")
    if len(lines) < 2:
        raise ValueError("a header and no per-CPU rows")
    totals = dict((name, 0) for name in names)
    for number, values in enumerate(lines[1:], 2):
        if len(values) != len(names):
            raise ValueError(
                "line %d has %d fields, the header %d" % (number, len(values), len(names))
            )
        for name, value in zip(names, values):
            if not 0 < len(value) <= 16 or value.strip(_HEX):
                raise ValueError("line %d: %r is not a hex counter" % (number, value[:40]))
            count = int(value, 16)
            if name == "entries":
                totals[name] = count
            else:
                totals[name] += count
    return _bounded(totals)


def _bounded(totals: Dict[str, int]) -> Dict[str, int]:
    """Counter totals, each a u64 (docs/json.md); raises ValueError."""
    for name, total in totals.items():
        if total > 0xFFFFFFFFFFFFFFFF:
            raise ValueError("%s adds up to more than a 64-bit counter" % name)
    return totals


def parse_conntrack_stats(text: Optional[str]) -> Optional[Dict[str, int]]:
    """Sum ``conntrack -S`` per-CPU lines (for boxes without /proc/net/stat/nf_conntrack).

    >>> parse_conntrack_stats("cpu=0 found=0 insert_failed=2 drop=1\\n"
    ...     "cpu=1 found=0 insert_failed=3 drop=0\\n")
    {'found': 0, 'insert_failed': 5, 'drop': 1}
    """
    totals: Dict[str, int] = {}
    for line in (text or "").splitlines():
        for field in line.split():
            key, eq, value = field.partition("=")
            if not eq or key == "cpu":
                continue
            if not (_name_ok(key) and _number_ok(value, U64_MAX)):
                raise ValueError("%r is not name=number" % field[:40])
            totals[key] = totals.get(key, 0) + int(value)
    return _bounded(totals) or None


def parse_port_range(text: Optional[str]) -> Optional[List[int]]:
    """ip_local_port_range as ``[low, high]``; None when the file is missing.

    >>> parse_port_range("32768\\t60999\\n")
    [32768, 60999]
    """
    if text is None:
        return None
    fields = text.split()
    if len(fields) != 2 or not all(_number_ok(field, PORT_MAX) for field in fields):
        raise ValueError("%r is not two port numbers" % text[:40])
    low, high = int(fields[0]), int(fields[1])
    if low > high:
        raise ValueError("the range %d-%d is empty" % (low, high))
    return [low, high]


def parse_hostname(text: Optional[str]) -> Optional[str]:
    """The kernel's hostname; None when missing or empty.

    >>> parse_hostname("nat-a\\n")
    'nat-a'
    """
    name = (text or "").strip()
    if "\n" in name:
        raise ValueError("%d lines, not one name" % (name.count("\n") + 1))
    if len(name) > HOSTNAME_MAX:
        raise ValueError("%d characters, more than %d" % (len(name), HOSTNAME_MAX))
    return name or None


def parse_fib_trie(text: Optional[str]) -> List[str]:
    """The local IPv4 addresses (every interface and alias) from /proc/net/fib_trie.

    >>> parse_fib_trie("Local:\\n  +-- 198.51.100.0/24 2 0 2\\n     |-- 198.51.100.11\\n"
    ...     "        /32 host LOCAL\\n")
    ['198.51.100.11']
    """
    found: List[str] = []
    last = None
    for line in (text or "").splitlines():
        stripped = line.strip()
        if stripped.startswith("|-- "):
            last = stripped[4:]
        elif stripped.startswith("/32 host LOCAL") and last and last not in found:
            if ":" in last:
                raise ValueError("%r is not an IPv4 address" % last[:60])
            found.append(canonical_address(last))
    return found


def parse_if_inet6(text: Optional[str]) -> List[str]:
    """The IPv6 addresses from /proc/net/if_inet6 (32 hex digits, then index, ...).

    >>> parse_if_inet6("20010db8ffff00000000000000000001 02 40 00 80 eth0\\n")
    ['2001:db8:ffff::1']
    """
    found: List[str] = []
    for number, line in enumerate((text or "").splitlines(), 1):
        fields = line.split()
        if not fields:
            continue
        raw = fields[0]
        if len(raw) != 32 or raw.strip(_HEX):
            raise ValueError("line %d does not start with 32 hex digits" % number)
        addr = canonical_address(":".join(raw[i : i + 4] for i in range(0, 32, 4)))
        if addr not in found:
            found.append(addr)
    return found


def parse_ethtool_stats(text: Optional[str]) -> Dict[str, int]:
    """The ENA allowance counters an ``ethtool -S`` output has (missing keys stay missing).

    >>> parse_ethtool_stats("NIC statistics:\\n     pps_allowance_exceeded: 3\\n")
    {'pps_allowance_exceeded': 3}
    """
    found: Dict[str, int] = {}
    for line in (text or "").splitlines():
        key, _, value = line.strip().partition(":")
        if key in ENA_KEYS:
            value = value.strip()
            if not _number_ok(value, U64_MAX):
                raise ValueError("%s: %r is not a counter" % (key, value[:40]))
            found[key] = int(value)
    return found


def _describe(exc: BaseException) -> str:
    """An exception as a short message (ValueErrors say enough; others name their type)."""
    text = str(exc)
    if not isinstance(exc, ValueError) or isinstance(exc, UnicodeError):
        text = "%s: %s" % (type(exc).__name__, text)
    return text[:MESSAGE_MAX]


def _fact(
    warnings: List[str], what: str, unknown: Any, func: Callable[..., Any], *args: Any
) -> Any:
    """``func(*args)``, or ``unknown`` and a warning naming ``what`` when it raises anything."""
    try:
        return func(*args)
    except Exception as exc:
        warnings.append("%s: %s; taken as unknown" % (what, _describe(exc)))
        return unknown


def _parsed(parse: Callable[[Any], Any], read: Callable[[Any], Any], what: Any) -> Any:
    """``parse(read(what))``: a fact from its text."""
    return parse(read(what))


_IFACE_CHARS = _LOWER + _LOWER.upper() + _DIGITS + "_.:@-"


def read_ena(sources: Sources, warnings: Optional[List[str]] = None) -> Dict[str, Dict[str, int]]:
    """ENA allowance counters per ENA interface; {} where there is none (an interface whose
    ``ethtool -S`` is garbled is left out, with a warning)."""
    said = [] if warnings is None else warnings
    result: Dict[str, Dict[str, int]] = {}
    for iface in sources.listdir(SYS_NET):
        driver = sources.readlink(SYS_NET + "/" + iface + "/device/driver") or ""
        if driver.rstrip("/").split("/")[-1] != "ena":
            continue
        if not 0 < len(iface) <= 15 or iface.strip(_IFACE_CHARS):
            said.append("an ENA interface named %r: left out" % iface[:40])
            continue
        argv = ("ethtool", "-S", iface)
        stats = _fact(said, " ".join(argv), {}, _parsed, parse_ethtool_stats, sources.command, argv)
        if stats:
            result[iface] = stats
    return result


def host_facts(sources: Sources, warnings: Optional[List[str]] = None) -> Json:
    """count, max, stats, port range, own addresses, ENA counters, hostname.

    Never raises: a fact whose file is garbled is unknown (None or empty), and ``warnings``
    (when given) says which file and why.
    """
    said = [] if warnings is None else warnings

    def fact(path: str, parse: Callable[[Optional[str]], Any], unknown: Any) -> Any:
        return _fact(said, path, unknown, _parsed, parse, sources.read, path)

    hostname = fact(HOSTNAME_PATH, parse_hostname, None)
    if not hostname and isinstance(sources, LocalSources) and sources.root == "/":
        hostname = _fact(said, "gethostname()", None, lambda: parse_hostname(socket.gethostname()))
    stats = fact(STAT_PATH, parse_stat, None)
    if stats is None:
        command = ("conntrack", "-S")
        stats = _fact(
            said, " ".join(command), None, _parsed, parse_conntrack_stats, sources.command, command
        )
    return {
        "hostname": hostname,
        "count": fact(COUNT_PATH, parse_int, None),
        "max": fact(MAX_PATH, parse_int, None),
        "stats": stats,
        "port_range": fact(PORT_RANGE_PATH, parse_port_range, None),
        "addresses": fact(FIB_TRIE_PATH, parse_fib_trie, [])
        + fact(IF_INET6_PATH, parse_if_inet6, []),
        "ena": _fact(said, SYS_NET, {}, read_ena, sources, said),
    }


def open_table(sources: Sources) -> Tuple[str, Stream]:
    """(source name, text stream) for the first table there is: /proc/net/nf_conntrack (or
    the ``--input`` dump), else ``conntrack -L -o extended``, else /proc/net/ip_conntrack.
    Raises AgentError."""
    for path, name in (
        (TABLE_PROC, getattr(sources, "table_file", None) or TABLE_PROC),
        (None, " ".join(CONNTRACK_CMD)),
        (TABLE_OLD, TABLE_OLD),
    ):
        if path is None:
            stream = sources.command_lines(CONNTRACK_CMD)
            if stream is not None:
                return name, stream
            continue
        if sources.exists(path):
            try:
                return name, sources.open_lines(path)
            except PermissionError:
                raise AgentError(
                    "permission",
                    "cannot read %s: permission denied; run natfleet as root" % name,
                ) from None
            except (IOError, OSError) as exc:
                raise AgentError("no_table", "cannot read %s: %s" % (name, exc)) from None
    raise AgentError(
        "no_table",
        "no conntrack table: %s is absent and conntrack-tools is not installed "
        "(load the module with 'modprobe nf_conntrack' or install the 'conntrack' package)"
        % TABLE_PROC,
    )


# --------------------------------------------------------------------------- own session
#
# natfleet's own SSH session to the box is a conntrack entry like any other: the remote agent
# (main()) leaves it out. It walks its parent processes up to the sshd serving the session,
# takes that process's TCP socket (/proc/<pid>/fd, then /proc/net/tcp and tcp6 of this network
# namespace) and skips the entry whose reply tuple is that socket, local -> remote: the
# original tuple remote -> local when nothing was translated on the way in. Earlier sessions'
# TIME_WAIT entries cannot be told from anyone else's and stay.

SSHD_NAMES = frozenset(("sshd", "sshd-session"))  # OpenSSH 9.8+ names the session process so
TCP_PATHS = ("/proc/net/tcp", "/proc/net/tcp6")
PARENTS_MAX = 32  # processes walked up from the agent (sudo, a shell, sshd: a handful)
TCP_ESTABLISHED, TCP_LISTEN = "01", "0A"
# (local address, local port, remote address, remote port) of a TCP socket
Socket = Tuple[str, int, str, int]


def parse_proc_stat(text: Optional[str]) -> Tuple[int, str, int]:
    """(pid, command name, parent pid) from /proc/<pid>/stat; raises ValueError.

    >>> parse_proc_stat("812 (sshd) S 790 812 812 0 -1 4194560 0 0 0 0 0 0 0 0 20 0 1 0\\n")
    (812, 'sshd', 790)
    """
    head, paren, tail = (text or "").rpartition(")")
    pid, opened, comm = head.partition(" (")  # (a name may hold spaces and parentheses)
    fields = tail.split()
    if not (paren and opened and len(fields) > 1 and pid.isdecimal() and fields[1].isdecimal()):
        raise ValueError("%r is not a /proc/<pid>/stat line" % (text or "")[:60])
    return int(pid), comm, int(fields[1])


def parse_tcp_address(text: str) -> Tuple[str, int]:
    """/proc/net/tcp's ``ADDRESS:PORT`` (hex, the address in host byte order per 32-bit word)
    as (address, port); an IPv4-mapped IPv6 address comes back as the IPv4 one, as conntrack
    shows it. Raises ValueError.

    >>> parse_tcp_address("0BFF13C6:0016")  # (on a little-endian machine)
    ('198.19.255.11', 22)
    >>> parse_tcp_address("0000000000000000FFFF000001FF13C6:D2F4")
    ('198.19.255.1', 54004)
    """
    addr, colon, port = text.partition(":")
    if not colon or len(port) != 4 or port.strip(_HEX) or len(addr) not in (8, 32):
        raise ValueError("%r is not ADDRESS:PORT" % text[:60])
    if addr.strip(_HEX):
        raise ValueError("%r is not ADDRESS:PORT" % text[:60])
    raw = b"".join(
        int(addr[i : i + 8], 16).to_bytes(4, sys.byteorder) for i in range(0, len(addr), 8)
    )
    if raw[:12] == b"\0" * 10 + b"\xff\xff":
        raw = raw[12:]
    family = socket.AF_INET if len(raw) == 4 else socket.AF_INET6
    return socket.inet_ntop(family, raw), int(port, 16)


def parse_tcp_table(text: Optional[str]) -> Tuple[Dict[int, Socket], Set[int]]:
    """(ESTABLISHED sockets by inode, the ports something listens on) from /proc/net/tcp or
    tcp6; lines that are not socket lines are left out.

    >>> parse_tcp_table("  sl  local_address rem_address   st tx_queue rx_queue tr tm->when "
    ...     "retrnsmt   uid  timeout inode\\n   3: 0BFF13C6:0016 01FF13C6:A2E8 01 "
    ...     "00000000:00000000 02:000A8DDA 00000000     0        0 466027 2 0 20 4 14 21 -1\\n")
    ({466027: ('198.19.255.11', 22, '198.19.255.1', 41704)}, set())
    """
    established: Dict[int, Socket] = {}
    listening: Set[int] = set()
    for line in (text or "").splitlines():
        fields = line.split()
        if len(fields) < 10 or not fields[0].endswith(":") or not fields[9].isdecimal():
            continue
        try:
            local, lport = parse_tcp_address(fields[1])
            remote, rport = parse_tcp_address(fields[2])
        except ValueError:
            continue
        if fields[3] == TCP_LISTEN:
            listening.add(lport)
        elif fields[3] == TCP_ESTABLISHED:
            established[int(fields[9])] = (local, lport, remote, rport)
    return established, listening


def _socket_inodes(sources: Sources, pid: int) -> List[int]:
    """The socket inodes among a process's open files (``socket:[466027]`` links)."""
    inodes = []
    folder = "/proc/%d/fd" % pid
    for fd in sources.listdir(folder):
        link = sources.readlink(folder + "/" + fd) or ""
        if link[:8] == "socket:[" and link[-1:] == "]" and link[8:-1].isdecimal():
            inodes.append(int(link[8:-1]))
    return inodes


def _tcp_sockets(sources: Sources) -> Tuple[Dict[int, Socket], Set[int]]:
    established: Dict[int, Socket] = {}
    listening: Set[int] = set()
    for path in TCP_PATHS:
        found, ports = parse_tcp_table(sources.read(path))
        established.update(found)
        listening.update(ports)
    return established, listening


def find_own_session(sources: Sources) -> Optional[Socket]:
    """The TCP socket (local, lport, remote, rport) of the SSH session this process runs
    under, or None: not under sshd, or the nearest sshd with a connection has several.

    >>> find_own_session(LocalSources("tests/data/own-session"))
    ('198.19.255.11', 22, '198.19.255.1', 41704)
    """
    pid = "self"
    sockets: Optional[Tuple[Dict[int, Socket], Set[int]]] = None
    for _ in range(PARENTS_MAX):
        try:
            number, comm, parent = parse_proc_stat(sources.read("/proc/%s/stat" % pid))
        except ValueError:
            return None
        if comm in SSHD_NAMES:
            if sockets is None:
                sockets = _tcp_sockets(sources)
            established, listening = sockets
            found = [established[i] for i in _socket_inodes(sources, number) if i in established]
            if len(found) > 1:  # a forwarded connection too: the session is the served one
                found = [s for s in found if s[1] in listening]
            if found:  # the first sshd with a connection is the session's: one, or unknown
                return found[0] if len(found) == 1 else None
        if parent <= 1 or parent == number:
            return None
        pid = str(parent)
    return None


def session_json(session: Optional[Socket]) -> Optional[Json]:
    """The answer's ``own_session``: the session as its conntrack entry's original tuple.

    >>> session_json(("198.19.255.11", 22, "198.19.255.1", 41704))["src"]
    '198.19.255.1'
    """
    if session is None:
        return None
    local, lport, remote, rport = session
    return {"src": remote, "sport": rport, "dst": local, "dport": lport, "proto": "tcp"}


def session_skip(session: Optional[Socket]) -> Optional[Tuple[str, str, str, str]]:
    """What parse_fields' reply tuple (rsrc, rdst, rsp, rdp) is for the session's entry."""
    if session is None:
        return None
    local, lport, remote, rport = session
    return (local, remote, str(lport), str(rport))


# --------------------------------------------------------------------------- requests

REQUEST_KEYS: Tuple[str, ...] = (
    "mode", "filters", "sort", "top", "limit", "resolve", "resolve_budget", "jobs",
)  # fmt: skip
REQUEST_KEYS += ("encoding",)  # "json" (wire format 2 as is) or "compact": natfleet/agent_wire.py
ENCODINGS = ("json", "compact")
FILTER_KEYS = ("proto", "src", "dst", "nat")
MODES = ("list", "summary", "info", "check")  # check: natfleet/agent_check.py
TOP_MAX = 1000
JOBS_MAX = 64
RESOLVE_BUDGET_MAX = 60.0
Network = Union[ipaddress.IPv4Network, ipaddress.IPv6Network]


def _bad(field: str, message: str) -> AgentError:
    """A bad_request naming the request field (``filters.src``, ``top``, ...)."""
    return AgentError("bad_request", "%s: %s" % (field, message))


def _shown(value: Any) -> str:
    """A request value, short, for an error message."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _type(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _int_field(
    data: Json, field: str, low: int, high: Optional[int], default: Optional[int]
) -> Optional[int]:
    """An integer from ``low`` to ``high`` (no bound when None); null only when the
    ``default`` is null."""
    value: Any = data.get(field.split(".")[-1], default)
    if value is None and default is None:
        return None
    span = "from %d to %d" % (low, high) if high is not None else "%d or more" % low
    if not _is_int(value):
        raise _bad(field, "must be an integer %s, not %s %s" % (span, _type(value), _shown(value)))
    if value < low or (high is not None and value > high):
        raise _bad(field, "must be an integer %s, not %s" % (span, _shown(value)))
    return value


def _networks(value: Any, field: str) -> List[Network]:
    """A list of addresses or CIDRs (null: no filter)."""
    if value is None:
        return []
    if not isinstance(value, list):
        message = "must be a list of addresses or CIDRs, not %s %s" % (_type(value), _shown(value))
        raise _bad(field, message)
    nets: List[Network] = []
    for item in value:
        if not isinstance(item, str):
            raise _bad(field, "%s is not an address or CIDR (a string)" % _shown(item))
        try:
            nets.append(ipaddress.ip_network(item, strict=False))
        except ValueError:
            raise _bad(field, "%s is not an address or CIDR" % _shown(item)) from None
    return nets


def _in_networks(addr: str, nets: List[Network], cache: Dict[str, bool]) -> bool:
    hit = cache.get(addr)
    if hit is None:
        ip = ipaddress.ip_address(addr)
        hit = cache[addr] = any(ip.version == n.version and ip in n for n in nets)
    return hit


def _proto(value: Any) -> Optional[int]:
    """A protocol filter: null, a name (``tcp``), digits (``"6"``) or a number 0-255."""
    field = "filters.proto"
    names = ", ".join(sorted(PROTO_NUMBERS))
    if value is None:
        return None
    if _is_int(value):
        if not 0 <= value <= 255:
            raise _bad(field, "protocol numbers are 0 to 255, not %s" % _shown(value))
        return int(value)
    if not isinstance(value, str):
        message = "must be a protocol name or number, not %s %s" % (_type(value), _shown(value))
        raise _bad(field, message)
    proto = value.lower()
    if _number_ok(proto, BYTE_MAX):
        return int(proto)
    if proto in PROTO_NUMBERS:
        return PROTO_NUMBERS[proto]
    raise _bad(field, "unknown protocol %s (one of %s, or a number 0-255)" % (_shown(proto), names))


def _keys(data: Json, allowed: Tuple[str, ...], where: str) -> None:
    """Only documented keys: a typo must not silently mean "no filter"."""
    for key in data:
        if key not in allowed:
            field = (where + str(key))[:80]
            raise _bad(field, "unknown key (the keys are %s)" % ", ".join(allowed))


class Request(object):
    """A validated request (see docs/json.md): the type and range of every field, each
    error a bad_request naming its field.

    >>> Request({"mode": "summary", "top": 3}).top
    3
    >>> handle({"filters": {"src": "192.0.2.0/24"}}, DumpSources())["error"]["message"]
    "filters.src: must be a list of addresses or CIDRs, not str '192.0.2.0/24'"
    """

    def __init__(self, data: Any) -> None:
        if not isinstance(data, dict):
            raise AgentError(
                "bad_request", "the request must be a JSON object, not %s" % _type(data)
            )
        _keys(data, REQUEST_KEYS, "")
        self.mode: str = data.get("mode", "list")
        if self.mode not in MODES:
            raise _bad("mode", "must be %s, not %s" % (" or ".join(MODES), _shown(self.mode)))
        filters = data.get("filters")
        if filters is None:
            filters = {}
        if not isinstance(filters, dict):
            raise _bad(
                "filters", "must be an object, not %s %s" % (_type(filters), _shown(filters))
            )
        _keys(filters, FILTER_KEYS, "filters.")
        self.pnum = _proto(filters.get("proto"))
        self.src = _networks(filters.get("src"), "filters.src")
        self.dst = _networks(filters.get("dst"), "filters.dst")
        self.nat = self._nat(filters.get("nat"))
        self.sort: Optional[str] = data.get("sort")
        if self.sort is not None and self.sort not in SORT_KEYS:
            message = "must be one of %s (or null), not %s" % (
                ", ".join(SORT_KEYS),
                _shown(self.sort),
            )
            raise _bad("sort", message)
        self.top = _int_field(data, "top", 1, TOP_MAX, 10) or 10
        self.limit = _int_field(data, "limit", 1, None, None)
        self.resolve: bool = data.get("resolve", False)
        if not isinstance(self.resolve, bool):
            raise _bad("resolve", "must be true or false, not %s" % _shown(self.resolve))
        self.resolve_budget = self._budget(data.get("resolve_budget", 5.0))
        self.jobs = _int_field(data, "jobs", 1, JOBS_MAX, None)
        self.encoding = data.get("encoding", "json")
        if self.encoding not in ENCODINGS:
            message = "must be json or compact, not %s" % _shown(self.encoding)
            raise _bad("encoding", message)
        self.idle_cutoff: Optional[int] = None  # check mode: set by agent_check.prepare()
        self._src_cache: Dict[str, bool] = {}
        self._dst_cache: Dict[str, bool] = {}

    @staticmethod
    def _nat(value: Any) -> FrozenSet[str]:
        if value is None:
            return TRANSLATED
        if not isinstance(value, list):
            message = "must be a list of NAT kinds, not %s %s" % (_type(value), _shown(value))
            raise _bad("filters.nat", message)
        for kind in value:
            if not isinstance(kind, str) or kind not in NAT_KINDS:
                message = "%s is not a NAT kind (one of %s)" % (_shown(kind), ", ".join(NAT_KINDS))
                raise _bad("filters.nat", message)
        return frozenset(value) or TRANSLATED

    @staticmethod
    def _budget(value: Any) -> float:
        if (
            not isinstance(value, (int, float))
            or isinstance(value, bool)
            or not math.isfinite(value)
            or not 0 < value <= RESOLVE_BUDGET_MAX
        ):
            message = "must be a number of seconds above 0 and at most %g, not %s" % (
                RESOLVE_BUDGET_MAX,
                _shown(value),
            )
            raise _bad("resolve_budget", message)
        return float(value)

    def matches(self, fields: Fields, nat: str) -> bool:
        """netstat-nat's -p/-s/-d/-S/-D/-L/-R on parse_fields' tuple, done right (-d also
        matches a DNAT's public address and its real server)."""
        if nat not in self.nat:
            return False
        if self.pnum is not None and fields[0] != self.pnum:
            return False
        if self.src and not _in_networks(fields[3], self.src, self._src_cache):
            return False
        if not self.dst:
            return True
        cache = self._dst_cache
        return _in_networks(fields[4], self.dst, cache) or _in_networks(fields[7], self.dst, cache)


def _port(value: Optional[str]) -> int:
    return int(value) if value and value.isdecimal() else -1


def _destination(flow: Flow) -> Tuple[str, Optional[str]]:
    """The destination the listing shows (:meth:`Flow.shown`'s third pair), without the rest."""
    if flow.nat == "dnat" or flow.nat == "snat+dnat":
        return flow.rsrc, flow.rsp
    return flow.odst, flow.odp


def sort_key(name: str) -> Callable[[Flow], Any]:
    """The sort key function for ``-r src|dst|src-port|dst-port|state``: numeric, and ties
    go by the next keys, always in one order: ``dst-port`` is the destination port, then
    its address, then the source address, its port, then the protocol (and the original
    destination, which with the rest is the kernel's own unique key). The keys are plain
    values (marshal-able, for worker processes); the fleet merge (natfleet.aggregate) sorts
    with this same function.

    >>> rows = [Flow.parse("ipv4 2 tcp 6 9 ESTABLISHED src=192.0.2.%d dst=203.0.113.5 "
    ...     "sport=4000%d dport=443 src=203.0.113.5 dst=198.51.100.1 sport=443 dport=6100%d "
    ...     "use=1" % (n, n, n), own=()) for n in (9, 2, 5)]
    >>> [f.osrc for f in sorted(rows, key=sort_key("dst-port"))]
    ['192.0.2.2', '192.0.2.5', '192.0.2.9']
    """
    addr, port = address_key, _port

    def src(f: Flow) -> Tuple[Any, ...]:
        daddr, dport = _destination(f)
        return (addr(f.osrc), port(f.osp), addr(daddr), port(dport), f.pnum, addr(f.odst),
                port(f.odp))  # fmt: skip

    def dst(f: Flow) -> Tuple[Any, ...]:
        daddr, dport = _destination(f)
        return (addr(daddr), port(dport), addr(f.osrc), port(f.osp), f.pnum, addr(f.odst),
                port(f.odp))  # fmt: skip

    def src_port(f: Flow) -> Tuple[Any, ...]:
        daddr, dport = _destination(f)
        return (port(f.osp), addr(f.osrc), addr(daddr), port(dport), f.pnum, addr(f.odst),
                port(f.odp))  # fmt: skip

    def dst_port(f: Flow) -> Tuple[Any, ...]:
        daddr, dport = _destination(f)
        return (port(dport), addr(daddr), addr(f.osrc), port(f.osp), f.pnum, addr(f.odst),
                port(f.odp))  # fmt: skip

    def state(f: Flow) -> Tuple[Any, ...]:
        return (f.display_state(),) + src(f)

    keys = {"dst": dst, "src-port": src_port, "dst-port": dst_port, "state": state}
    return keys.get(name, src)


class TopCounter(object):
    """Counts keys in bounded memory: exact up to ``capacity`` distinct keys, then keeps the
    heaviest half; ``error`` adds up the largest count dropped at each pruning, so every
    count is under by at most ``error``.

    >>> c = TopCounter(4)
    >>> for key in "aabbbc":
    ...     c.add(key)
    >>> c.top(2)
    [('b', 3), ('a', 2)]
    """

    def __init__(self, capacity: int = COUNTER_CAPACITY) -> None:
        self.counts: Dict[Any, int] = {}
        self.capacity = capacity
        self.error = 0

    def add(self, key: Any, n: int = 1) -> None:
        counts = self.counts
        counts[key] = counts.get(key, 0) + n
        self.prune()

    def prune(self) -> None:
        """Keep the heaviest half once over capacity (callers may add in bulk, then prune)."""
        counts = self.counts
        if len(counts) > self.capacity:
            keep = sorted(counts.items(), key=lambda kv: -kv[1])
            half = self.capacity // 2
            self.error += keep[half][1]  # a dropped key may come back and be dropped again
            self.counts = dict(keep[:half])

    def top(self, n: int) -> List[Tuple[Any, int]]:
        return sorted(self.counts.items(), key=lambda kv: (-kv[1], kv[0]))[:n]


# project(flow) -> (sort key, value): a listing of plain values (see run())
Project = Callable[[Flow], Tuple[Any, Any]]
BLOCK_CHARS = 1 << 20
PARALLEL_MIN_FLOWS = 50000
MAX_WORKERS = 4


def _blocks(stream: Stream, size: int = BLOCK_CHARS) -> Iterator[Tuple[int, str]]:
    """(first line number, text of whole lines) blocks of about ``size`` characters."""
    lineno = 1
    while True:
        text = stream.read(size)
        if not text:
            return
        if not text.endswith("\n"):
            text += stream.readline()
        yield lineno, text
        lineno += text.count("\n")


def _byte_blocks(raw: IO[bytes], size: int = BLOCK_CHARS) -> Iterator[Tuple[int, bytes]]:
    """(first line number, bytes of whole lines) blocks of about ``size`` bytes, read from
    the bytes under a text stream; line ends as the text stream reads them (``\\r\\n`` and
    ``\\r`` are ``\\n``), the text as :data:`TABLE_CODEC` decodes it.

    >>> list(_byte_blocks(io.BytesIO(b"a\\r\\nb\\rc\\nd"), size=3))
    [(1, b'a\\n'), (2, b'b\\nc\\n'), (4, b'd')]
    """
    lineno, rest = 1, b""
    while True:
        data = raw.read(size)
        if not data:
            break
        if rest:
            data = rest + data
        cut = data.rfind(b"\n") + 1
        if not cut:
            rest = data
            continue
        block, rest = _text_newlines(data[:cut]), data[cut:]
        yield lineno, block
        lineno += block.count(b"\n")
    if rest:
        yield lineno, _text_newlines(rest)


TABLE_CODEC = ("ascii", "replace")  # how every table stream decodes (see LocalSources)


def _text_newlines(data: bytes) -> bytes:
    if b"\r" not in data:
        return data
    return data.replace(b"\r\n", b"\n").replace(b"\r", b"\n")


def _table_blocks(stream: Stream) -> Iterator[Tuple[int, str]]:
    """:func:`_blocks`, read as bytes and decoded when the stream has bytes below."""
    raw = getattr(stream, "buffer", None)
    if raw is None:
        for block in _blocks(stream):
            yield block
        return
    for first, data in _byte_blocks(raw):
        yield first, data.decode(*TABLE_CODEC)


def _last_line(first: int, text: "Union[str, bytes]") -> int:
    """The number of a block's last line."""
    newline = "\n" if isinstance(text, str) else b"\n"
    return first + text.count(newline) + (not text.endswith(newline)) - 1  # type: ignore


def _lines(text: str) -> List[str]:
    lines = text.split("\n")
    if lines and not lines[-1]:
        lines.pop()
    return lines


class Tally(object):
    """What one pass over some lines found: a Summary or kept Flows, and the bad lines.

    ``project`` (list mode) turns each kept Flow into plain values (e.g. a sort key and a
    rendered line), which is what lets a listing run in worker processes too.
    """

    def __init__(
        self,
        request: Request,
        own: FrozenSet[str],
        project: Optional[Project] = None,
        skip: Optional[Tuple[str, str, str, str]] = None,
    ) -> None:
        self.own = own
        self.skip = skip  # session_skip(): natfleet's own session, left out
        self.skipped_own = 0
        self.summary = new_summary(request)
        self.matches = request.matches
        self.project = project
        self.kept: List[Any] = []
        self.bad = 0
        self.examples: List[Json] = []
        self.skipped = 0  # blank lines and conntrack's own count line: not table entries
        summary = self.summary  # a plain Summary (not a subclass counting more) goes fast
        self.fast = FastLines(summary, own, skip) if type(summary) is Summary else None

    @property
    def malformed(self) -> Json:
        return {"count": self.bad, "examples": self.examples}

    def feed(self, first: int, lines: List[str]) -> None:
        """Parse, classify and count ``lines`` (numbered from ``first``) with parse_fields."""
        self._feed_numbered(enumerate(lines, first))

    def feed_text(self, first: int, text: str) -> None:
        """Count a block of whole lines (the first numbered ``first``): a plain Summary by
        its fast path (:class:`FastLines`), anything else line by line (a listing through
        :class:`FastFields`, counters that need more fields through parse_fields)."""
        if self.fast is None:
            self.feed(first, _lines(text))
            return
        slow = self.fast.count(first, text)
        if slow:
            self._feed_numbered(slow)

    def _feed_numbered(self, numbered: Iterable[Tuple[int, str]]) -> None:
        own, summary, matches, kept = self.own, self.summary, self.matches, self.kept
        project, skip = self.project, self.skip
        parse = parse_fields if summary is not None else FastFields().parse  # (a listing)
        for lineno, line in numbered:
            try:
                fields = parse(line)
            except ValueError:  # Malformed, or a number Python will not convert
                if not line.strip() or _is_trailer(line):
                    self.skipped += 1
                    continue
                self.bad += 1
                if len(self.examples) < MALFORMED_EXAMPLES:
                    self.examples.append({"line": lineno, "text": line[:500]})
                continue
            if skip is not None and fields[7:11] == skip and fields[0] == 6:
                self.skipped_own += 1
                continue
            nat = nat_kind(fields, own)
            if summary is not None:
                summary.add(fields, nat, line)
            elif matches(fields, nat):
                flow = Flow(fields, nat, line)
                kept.append(project(flow) if project else flow)

    def merge(self, state: Json) -> None:
        """Add another process's :meth:`state`."""
        if self.summary is not None:
            self.summary.merge(state["summary"])
        else:
            self.kept.extend(state["kept"])
        self.skipped += state["skipped"]
        self.skipped_own += state["own"]
        self.bad += state["malformed"]["count"]
        examples = self.examples + state["malformed"]["examples"]
        examples.sort(key=lambda ex: ex["line"])
        self.examples = examples[:MALFORMED_EXAMPLES]

    def state(self) -> Json:
        """What this process found, in plain values (marshal-able)."""
        found: Json = {"malformed": self.malformed, "skipped": self.skipped}
        found["own"] = self.skipped_own
        if self.summary is not None:
            found["summary"] = self.summary.state()
        else:
            found["kept"] = self.kept
        return found


def workers_for(request: Request, expected_flows: Optional[int], projected: bool = False) -> int:
    """How many processes a scan may use: one, unless the table is big, the machine has
    cores to spare and this process has no other threads (fork is only safe then).

    A listing goes parallel only when projected to plain values: shipping Flow objects
    back costs more than parsing them.
    """
    if not hasattr(os, "fork") or (request.mode == "list" and not projected):
        return 1
    if threading.active_count() > 1:
        return 1
    if request.jobs is not None:
        return max(1, min(MAX_WORKERS, request.jobs))
    if (expected_flows or 0) < PARALLEL_MIN_FLOWS:
        return 1
    return max(1, min(MAX_WORKERS, os.cpu_count() or 1))


def scan(
    request: Request,
    sources: Sources,
    own: Optional[Iterable[str]] = None,
    expected_flows: Optional[int] = None,
    project: Optional[Project] = None,
    skip: Optional[Tuple[str, str, str, str]] = None,
) -> "Tuple[str, Union[Summary, List[Any]], int, Json, int]":
    """Walk the table once: (source name, kept Flows or a Summary, table lines read (not
    counting blank lines and conntrack's count line), malformed, entries left out as
    natfleet's own session).

    ``own`` is the box's own addresses (for local vs routed); ``skip`` the reply tuple of
    natfleet's own session (:func:`session_skip`), not counted. In list mode the matching
    flows are kept; in summary mode only counters, so memory does not grow with the table.
    A big summary is spread over worker processes (see :func:`workers_for`).
    """
    mine = frozenset(own or ())
    source, stream = open_table(sources)
    tally = Tally(request, mine, project, skip)
    lines = 0
    workers = workers_for(request, expected_flows, project is not None)
    with stream:
        if workers > 1:
            lines = _scan_parallel(stream, tally, request, mine, workers, project)
        else:
            first, text = 1, ""
            for first, text in _table_blocks(stream):
                tally.feed_text(first, text)
            lines = _last_line(first, text) if text else 0
    result: Any = tally.summary if tally.summary is not None else tally.kept
    return source, result, lines - tally.skipped, tally.malformed, tally.skipped_own


def _scan_parallel(
    stream: Stream,
    tally: Tally,
    request: Request,
    own: FrozenSet[str],
    workers: int,
    project: Optional[Project] = None,
) -> int:
    """Deal blocks round-robin to forked workers over pipes; merge what they counted.

    Workers run at a lower priority (nice 10): on a NAT box the forwarding path comes first.
    """
    children: List[Tuple[int, int, int]] = []
    for _ in range(workers):
        block_r, block_w = os.pipe()
        result_r, result_w = os.pipe()
        pid = os.fork()
        if pid == 0:  # worker
            status = 1
            try:
                os.close(block_w)
                os.close(result_r)
                for _pid, w, r in children:  # earlier workers' parent ends
                    os.close(w)
                    os.close(r)
                os.nice(10)
                gc.disable()  # a short life that makes no cycles: no collections needed
                mine = Tally(request, own, project, tally.skip)
                with os.fdopen(block_r, "rb") as blocks:
                    for header in blocks:
                        start, size, codec = header.split()
                        chunk = blocks.read(int(size))
                        text = chunk.decode(*TABLE_CODEC if codec == b"a" else _TEXT_CODEC)
                        mine.feed_text(int(start), text)
                mine.kept.sort(key=_FIRST)  # sorted runs: run() then merges them (a stable
                with os.fdopen(result_w, "wb") as out:  # sort, so ties keep their order)
                    marshal.dump(mine.state(), out)
                status = 0
            finally:
                os._exit(status)
        os.close(block_r)
        os.close(result_w)
        _pipe_size(block_w, 1 << 20)  # (the most a user may ask for): fewer switches
        children.append((pid, block_w, result_r))
    lines = 0
    raw = getattr(stream, "buffer", None)
    if raw is not None:  # the file's bytes go to the workers as they are
        dealt: Iterator[Tuple[int, bytes, bytes]] = (
            (first, chunk, b"a") for first, chunk in _byte_blocks(raw)
        )
    else:  # captured text
        dealt = ((first, text.encode(*_TEXT_CODEC), b"u") for first, text in _blocks(stream))
    first, chunk = 1, b""
    try:
        for n, (first, chunk, codec) in enumerate(dealt):
            fd = children[n % workers][1]
            _write_all(fd, b"%d %d %s\n" % (first, len(chunk), codec))
            _write_all(fd, chunk)
        lines = _last_line(first, chunk) if chunk else 0
    except OSError:  # a worker died (broken pipe): reap them all, then say so below
        lines = -1
    finally:
        for _pid, block_w, _r in children:
            os.close(block_w)
    failed = 0 if lines >= 0 else 1
    for pid, _w, result_r in children:
        with os.fdopen(result_r, "rb") as results:
            data = results.read()
        _pid, status = os.waitpid(pid, 0)
        if status != 0 or not data:
            failed += 1
            continue
        tally.merge(marshal.loads(data))
    if failed:
        raise AgentError("agent", "a summary worker process failed; try again with --jobs 1")
    return lines


_TEXT_CODEC = ("utf-8", "surrogatepass")  # captured text to a worker and back
_FIRST = itemgetter(0)  # a projected row's sort key
F_SETPIPE_SZ = 1031  # fcntl.F_SETPIPE_SZ (Linux; the fcntl module names it from 3.10)


def _pipe_size(fd: int, size: int) -> None:
    """Ask for a pipe buffer of ``size`` bytes (best effort: the kernel may cap it)."""
    try:
        import fcntl

        fcntl.fcntl(fd, F_SETPIPE_SZ, size)
    except (ImportError, IOError, OSError, ValueError):
        pass


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


class Summary(object):
    """Streaming per-box counters: states, protocols, NAT kinds, top talkers, port pressure.

    The hot loop does plain dict increments; the counters are pruned every PRUNE_EVERY flows
    so memory stays bounded (see TopCounter).
    """

    PRUNE_EVERY = 4096

    def __init__(self, top: int = 10) -> None:
        self.top_n = top
        self.flows = 0
        self.kinds: Dict[Tuple[int, str, str], int] = {}
        self.sources = TopCounter()
        self.destinations = TopCounter()
        self.ports = TopCounter()
        self.tcp_snat_established = 0

    def add(self, fields: Fields, nat: str, line: str) -> None:
        """Count one flow (parse_fields' tuple, its NAT kind, its raw line)."""
        self.flows += 1
        pnum, _timeout, state, osrc, _odst, _osp, _odp, rsrc, rdst, rsp = fields[:10]
        key = (pnum, state or line_state(None, line), nat)
        kinds = self.kinds
        kinds[key] = kinds.get(key, 0) + 1
        counts = self.sources.counts
        counts[osrc] = counts.get(osrc, 0) + 1
        counts = self.destinations.counts
        counts[rsrc] = counts.get(rsrc, 0) + 1
        if (nat == "snat" or nat == "snat+dnat") and pnum in PORT_PROTOS:
            port_key = (rdst, rsrc, rsp, pnum)
            counts = self.ports.counts
            counts[port_key] = counts.get(port_key, 0) + 1
            if state == "ESTABLISHED" and pnum == 6:
                self.tcp_snat_established += 1
        if not self.flows % self.PRUNE_EVERY:
            self.prune()

    def add_many(self, fast: "FastFlow", n: int) -> None:
        """Count ``n`` flows alike (:class:`FastLines`): what ``n`` calls of :meth:`add`
        count, pruned when the flow count passes a multiple of PRUNE_EVERY as add() does."""
        pnum, state, shown, nat, osrc, rsrc, rdst, rsp = fast
        self.flows += n
        key = (pnum, shown, nat)
        kinds = self.kinds
        kinds[key] = kinds.get(key, 0) + n
        counts = self.sources.counts
        counts[osrc] = counts.get(osrc, 0) + n
        counts = self.destinations.counts
        counts[rsrc] = counts.get(rsrc, 0) + n
        if (nat == "snat" or nat == "snat+dnat") and pnum in PORT_PROTOS:
            port_key = (rdst, rsrc, rsp, pnum)
            counts = self.ports.counts
            counts[port_key] = counts.get(port_key, 0) + n
            if state == "ESTABLISHED" and pnum == 6:
                self.tcp_snat_established += n
        if self.flows % self.PRUNE_EVERY < n:
            self.prune()

    def counters(self) -> Tuple[TopCounter, TopCounter, TopCounter]:
        return self.sources, self.destinations, self.ports

    def prune(self) -> None:
        for counter in self.counters():
            counter.prune()

    def state(self) -> Json:
        """Everything counted, in plain values (for merging across processes)."""
        self.prune()
        return {
            "flows": self.flows,
            "tcp_snat_established": self.tcp_snat_established,
            "kinds": self.kinds,
            "counters": [(c.counts, c.error) for c in self.counters()],
        }

    def merge(self, state: Json) -> None:
        """Add another Summary's :meth:`state`; dropped-count bounds add up."""
        self.flows += state["flows"]
        self.tcp_snat_established += state["tcp_snat_established"]
        for key, n in state["kinds"].items():
            self.kinds[key] = self.kinds.get(key, 0) + n
        for counter, (counts, error) in zip(self.counters(), state["counters"]):
            counter.error += error
            for key, n in counts.items():
                counter.add(key, n)

    def _by(self, index: int) -> Dict[str, int]:
        out: Dict[str, int] = {}
        for key, n in self.kinds.items():
            proto = proto_name(key[0])
            name = proto if index == 0 else key[2] if index == 2 else proto + ":" + key[1]
            out[name] = out.get(name, 0) + n
        return out

    def to_json(self, port_range: Optional[List[int]]) -> Json:
        self.prune()
        by_nat = self._by(2)
        size = port_range[1] - port_range[0] + 1 if port_range else None
        pressure = []
        for (nat_ip, dst, dport, pnum), used in self.ports.top(self.top_n):
            pressure.append(
                {
                    "nat_ip": nat_ip,
                    "dst": dst,
                    "dport": int(dport),
                    "proto": proto_name(pnum),
                    "ports": used,
                    "pct": round(100.0 * used / size, 2) if size else None,
                }
            )
        return {
            "flows": self.flows,
            "by_state": self._by(1),
            "by_proto": self._by(0),
            "by_nat": dict((k, by_nat.get(k, 0)) for k in NAT_KINDS),
            "tcp_snat_established": self.tcp_snat_established,
            "top_sources": [[a, n] for a, n in self.sources.top(self.top_n)],
            "top_destinations": [[a, n] for a, n in self.destinations.top(self.top_n)],
            "top_error": max(self.sources.error, self.destinations.error, self.ports.error),
            "port_range_size": size,
            "port_pressure": pressure,
        }


def new_summary(request: Request) -> Optional[Summary]:
    """The counters of a table walk: a Summary, in check mode agent_check's CheckSummary
    (it also counts idle ESTABLISHED flows), or None (a listing)."""
    if request.mode == "check":
        from natfleet import agent_check

        return agent_check.CheckSummary(request.top, request.idle_cutoff)
    return Summary(request.top) if request.mode == "summary" else None


# --------------------------------------------------------------------------- fast summary
#
# A summary needs a few fields of each line. FAST_LINE picks them out of a whole block in one
# C-level pass, for lines of the regular shape only (a port tuple each way, the usual fields
# after each tuple; ranges of ports and timeouts in the pattern itself). The ephemeral ports
# that make each line unique are matched, not kept: only whether the reply's dport is the
# original sport (a backreference). So a block's lines collapse into a few distinct keys,
# each checked once the way parse_fields checks a line (protocol, state, addresses and their
# family, the fields after each tuple) and counted n times. A block with a line of any other
# shape, or a key that does not check, goes line by line: regular lines by the same pattern,
# every other line by parse_fields, so the malformed-line accounting is unchanged.

_FAST_PORT = r"(?:[0-5]?[0-9]{1,4}|6[0-4][0-9]{3}|65[0-4][0-9]{2}|655[0-2][0-9]|6553[0-5])"
_FAST_ADDR = r"([0-9a-f.:]{2,39})"
_FAST_TAIL = r"([ A-Za-z0-9=\[\]_]*)"  # the fields after a tuple, checked by _extras_ok
# The counters of nf_conntrack_acct and the timestamp of nf_conntrack_timestamp are matched
# (in the ranges parse_fields takes) but not kept, so that they do not make every line's key
# unique; the reply's last fields are kept apart when a timestamp comes between them.
_FAST_PARTS = {
    "a": _FAST_ADDR,
    "p": _FAST_PORT,
    "t": _FAST_TAIL,
    "n": r"(?: packets=[0-9]{1,19} bytes=[0-9]{1,19})?",
    "end": r"(?:packets=[0-9]{1,19} bytes=[0-9]{1,19} )?%s(?: delta-time=[0-9]{1,9}"
    r"( use=[0-9]{1,9}))?$" % _FAST_TAIL,
}
FAST_LINE = re.compile(
    r"^((?:ipv[46] +[0-9]+ +)?[a-z]+ +[0-9]{1,3}) +(?:[0-9]{1,9} +)?(?:([A-Z][A-Z0-9_]*) +)?"
    r"src=%(a)s dst=%(a)s sport=(%(p)s) dport=(%(p)s)%(n)s%(t)s"
    r" src=%(a)s dst=%(a)s sport=(%(p)s) dport=(?:\5( )|%(p)s )%(end)s" % _FAST_PARTS,
    re.M,
)
# FAST_LINE's groups without the original sport (5th): (head, state, osrc, odst, odp, orig
# fields, rsrc, rdst, rsp, " " when the reply's dport is the original sport, reply fields,
# the reply's use= after a timestamp)
_FAST_KEY = itemgetter(0, 1, 2, 3, 5, 6, 7, 8, 9, 10, 11, 12)
FastKey = Tuple[str, str, str, str, str, str, str, str, str, str, str, str]
# what Summary.add_many counts: (pnum, state, shown state, nat, osrc, rsrc, rdst, rsp)
FastFlow = Tuple[int, Optional[str], str, str, str, str, str, str]
FAST_CACHE_MAX = 1 << 13  # keys and fields remembered (each about 1 KB; cleared when full)


def fast_key(line: str) -> Optional[FastKey]:
    """The fast path's key of one line, or None when the line is not of the regular shape.

    >>> fast_key("ipv4     2 udp      17 29 src=192.168.1.10 dst=203.0.113.53 sport=5353 "
    ...     "dport=53 [UNREPLIED] src=203.0.113.53 dst=198.51.100.1 sport=53 dport=5353 "
    ...     "mark=0 zone=0 use=2")[:5]
    ('ipv4     2 udp      17', '', '192.168.1.10', '203.0.113.53', '53')
    """
    found = FAST_LINE.match(line)
    return None if found is None else _FAST_KEY(found.groups(""))


def _fast_head(head: str) -> Optional[Tuple[int, Optional[str]]]:
    """(protocol number, l3 or None) of FAST_LINE's head, as parse_fields reads it; None for
    a number over 255 and for ICMP (whose ids parse_fields moves)."""
    tokens = head.split()
    l3 = tokens[0] if len(tokens) == 4 else None
    pnum = int(tokens[-1])
    if pnum > 255 or pnum in ICMP_PROTOS:
        return None
    return pnum, l3


def _fast_tail(tail: str, reply: bool) -> bool:
    """The fields after a tuple are what parse_fields takes (no ``src=`` among them: that is
    where parse_fields splits a line); after the reply tuple they end with ``use=``."""
    tokens = tail.split()
    if reply and (not tokens or tokens[-1][:4] != "use="):
        return False
    if any(tok[:4] == "src=" for tok in tokens):
        return False
    return not tokens or _extras_ok(tokens)


class FastLines(object):
    """The fast path of a plain summary: counts blocks of regular lines into a Summary and
    hands back the lines it cannot vouch for, for parse_fields.

    >>> s = Summary()
    >>> FastLines(s, frozenset(), None).count(1, "ipv4 2 tcp 6 9 ESTABLISHED src=192.0.2.1 "
    ...     "dst=203.0.113.5 sport=40000 dport=443 src=203.0.113.5 dst=198.51.100.1 sport=443 "
    ...     "dport=61000 [ASSURED] mark=0 zone=0 use=2\\nnot a line\\n")
    [(2, 'not a line')]
    >>> s.flows, s.tcp_snat_established
    (1, 1)
    """

    def __init__(
        self, summary: Summary, own: FrozenSet[str], skip: Optional[Tuple[str, str, str, str]]
    ) -> None:
        self.summary = summary
        self.own = own
        self.skip = skip
        self.known: Dict[FastKey, Optional[FastFlow]] = {}
        self.checks = FastFields()

    def count(self, first: int, text: str) -> List[Tuple[int, str]]:
        """Count the block ``text`` (whole lines, the first numbered ``first``); the
        (line number, line) pairs left for parse_fields, in order."""
        found = Counter(map(_FAST_KEY, FAST_LINE.findall(text)))
        lines = text.count("\n") + (not text.endswith("\n"))
        if sum(found.values()) == lines:
            ready = []
            for key, n in found.items():
                flow = self.flow(key)
                if flow is None:
                    break
                ready.append((flow, n))
            else:
                for flow, n in ready:
                    self.summary.add_many(flow, n)
                return []
        slow = []
        add = self.summary.add_many
        for lineno, line in enumerate(_lines(text), first):
            match = FAST_LINE.match(line)
            flow = None if match is None else self.flow(_FAST_KEY(match.groups("")))
            if flow is None:
                slow.append((lineno, line))
            else:
                add(flow, 1)
        return slow

    def flow(self, key: FastKey) -> Optional[FastFlow]:
        """What to count for a key, or None: parse_fields must read such a line."""
        known = self.known
        if key in known:
            return known[key]
        if len(known) >= FAST_CACHE_MAX:
            known.clear()
        flow = known[key] = self._check(key)
        return flow

    def _check(self, key: FastKey) -> Optional[FastFlow]:
        head, state, osrc, odst, odp, otail, rsrc, rdst, rsp, same_port, rtail, use = key
        rtail += use
        checked = self.checks.check(head, state, otail, rtail, osrc, odst, rsrc, rdst)
        if checked is None:
            return None
        pnum, _l3, osrc, odst, rsrc, rdst = checked
        skip = self.skip
        if skip is not None and pnum == 6 and (rsrc, rdst, rsp) == skip[:3]:
            return None  # maybe natfleet's own session: its reply dport decides
        snat = rdst != osrc or not same_port
        dnat = rsrc != odst or rsp != odp
        if snat:
            nat = "snat+dnat" if dnat else "snat"
        elif dnat:
            nat = "dnat"
        elif osrc in self.own or odst in self.own:
            nat = "local"
        else:
            nat = "routed"
        shown = state or line_state(None, otail + " " + rtail)
        return pnum, state or None, shown, nat, osrc, rsrc, rdst, rsp


# A listing needs every field: LIST_LINE takes them all from a line of the regular shape,
# checked as FastLines checks a summary's keys; any other line is parse_fields' to read.
LIST_LINE = re.compile(
    r"^((?:ipv[46] +[0-9]+ +)?[a-z]+ +[0-9]{1,3}) +(?:([0-9]{1,9}) +)?(?:([A-Z][A-Z0-9_]*) +)?"
    r"src=%(a)s dst=%(a)s sport=(%(p)s) dport=(%(p)s)%(n)s%(t)s"
    r" src=%(a)s dst=%(a)s sport=(%(p)s) dport=(%(p)s) %(end)s" % _FAST_PARTS
)


class FastFields(object):
    """parse_fields for a listing, quicker on lines of the regular shape (LIST_LINE).

    >>> line = ("ipv4     2 tcp      6 3599 ESTABLISHED src=192.168.1.10 dst=203.0.113.5 "
    ...     "sport=40000 dport=443 src=203.0.113.5 dst=198.51.100.1 sport=443 dport=61000 "
    ...     "[ASSURED] mark=0 zone=0 use=2")
    >>> FastFields().parse(line) == parse_fields(line)
    True
    """

    def __init__(self) -> None:
        self.heads: Dict[str, Optional[Tuple[int, Optional[str]]]] = {}
        self.tails: Dict[str, bool] = {}  # the fields after an original tuple, and
        self.rtails: Dict[str, bool] = {}  # after a reply tuple: whether they check

    def parse(self, line: str) -> Fields:
        """parse_fields(line); raises Malformed as it does."""
        found = LIST_LINE.match(line)
        if found is not None:
            fields = self.fields(found.groups(""))
            if fields is not None:
                return fields
        return parse_fields(line)

    def fields(self, groups: Sequence[str]) -> Optional[Fields]:
        """LIST_LINE's groups as parse_fields' tuple, or None when they do not check."""
        head, timeout, state, osrc, odst, osp, odp, otail, rsrc, rdst, rsp, rdp, rtail, use = groups
        checked = self.check(head, state, otail, rtail + use, osrc, odst, rsrc, rdst)
        if checked is None:
            return None
        pnum, l3, osrc, odst, rsrc, rdst = checked
        seconds = int(timeout) if timeout else None
        return (pnum, seconds, state or None, osrc, odst, osp, odp, rsrc, rdst, rsp, rdp, l3, None)

    def check(
        self, head: str, state: str, otail: str, rtail: str, *addrs: str
    ) -> Optional[Tuple[int, str, str, str, str, str]]:
        """What parse_fields checks beyond the pattern (the protocol, state, the fields after
        each tuple, the addresses and their family): (pnum, l3, osrc, odst, rsrc, rdst),
        addresses canonical; None when parse_fields must read the line."""
        heads, tails = self.heads, self.tails
        if head not in heads:
            heads[head] = _fast_head(head)
        parsed = heads[head]
        if parsed is None or (state and state not in STATES):
            return None
        if not (tails.get(otail) or self._tail(otail, False)):
            return None
        if not (self.rtails.get(rtail) or self._tail(rtail, True)):
            return None
        cache = _ADDR_CACHE
        try:
            osrc = cache.get(addrs[0]) or canonical_address(addrs[0])
            odst = cache.get(addrs[1]) or canonical_address(addrs[1])
            rsrc = cache.get(addrs[2]) or canonical_address(addrs[2])
            rdst = cache.get(addrs[3]) or canonical_address(addrs[3])
        except Malformed:
            return None
        v6 = ":" in osrc
        if (":" in odst) is not v6 or (":" in rsrc) is not v6 or (":" in rdst) is not v6:
            return None
        pnum, l3 = parsed
        if l3 is None:
            l3 = "ipv6" if v6 else "ipv4"
        elif (l3 == "ipv6") is not v6:
            return None
        return pnum, l3, osrc, odst, rsrc, rdst

    def _tail(self, tail: str, reply: bool) -> bool:
        known = self.rtails if reply else self.tails
        if len(known) >= FAST_CACHE_MAX:
            known.clear()
        ok = known[tail] = _fast_tail(tail, reply)
        return ok


RESOLVER_THREADS = 16


def printable(text: str) -> str:
    r"""``text`` with every unprintable character (controls, DEL, C1, bidi overrides and
    marks, line separators: :meth:`str.isprintable` false) escaped visibly. The one
    implementation: natfleet's output layer uses it too.

    >>> printable("nat-a\x1b[2J\u202e\n")
    'nat-a\\x1b[2J\\u202e\\n'
    """
    if text.isprintable():
        return text
    return "".join(
        c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text
    )


_HOST_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-._")


def is_host_name(name: str) -> bool:
    r"""A DNS host name (letters, digits, '-', '_', '.'; at most 253) that is not an address.

    >>> is_host_name("www.example"), is_host_name("192.0.2.99"), is_host_name("a\nb")
    (True, False, False)
    """
    if not 0 < len(name) <= 253 or not _HOST_NAME_CHARS.issuperset(name):
        return False
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return True
    return False


def printable_answer(answer: Json) -> Json:
    """An answer whose free text (host name, table source, warnings, malformed-line
    examples, error message) is printable: what a box says is text to show, never terminal
    control. natfleet's boundary refuses unprintable free text from a box.
    """
    for key in ("hostname", "source"):
        if isinstance(answer.get(key), str):
            answer[key] = printable(answer[key])
    if isinstance(answer.get("warnings"), list):
        answer["warnings"] = [printable(str(w)) for w in answer["warnings"]]
    malformed = answer.get("malformed")
    if isinstance(malformed, dict):
        for example in malformed.get("examples") or ():
            example["text"] = printable(str(example.get("text", "")))
    error = answer.get("error")
    if isinstance(error, dict):
        error["message"] = printable(str(error.get("message", "")))
    return answer


def resolve_names(addresses: Iterable[Optional[str]], budget: float) -> Dict[str, str]:
    """Reverse-resolve addresses within ``budget`` seconds in all; unresolved are left out.

    Lookups run on daemon threads, so one still blocked in the resolver when the budget is
    spent delays neither the answer nor the agent's exit.
    """
    pending = sorted(set(a for a in addresses if a))
    names: Dict[str, str] = {}
    if not pending:
        return names
    lock = threading.Lock()
    done = threading.Event()
    left = [len(pending)]

    def work() -> None:
        while True:
            with lock:
                if not pending:
                    return
                addr = pending.pop()
            try:
                name: Optional[str] = socket.gethostbyaddr(addr)[0]
            except (OSError, UnicodeError):
                name = None
            if name is not None and not is_host_name(name):
                name = None  # a PTR that is no host name (or poses as an address): a number
            with lock:
                if name:
                    names[addr] = name
                left[0] -= 1
                if not left[0]:
                    done.set()

    for _ in range(min(RESOLVER_THREADS, len(pending))):
        threading.Thread(target=work, daemon=True).start()
    done.wait(budget)
    with lock:
        del pending[:]  # budget spent: the rest print as numbers
        return dict(names)


def run(
    request: Request,
    sources: Sources,
    project: Optional[Project] = None,
    skip_own: bool = False,
) -> Tuple[Json, List[Any]]:
    """Serve a validated Request: the answer dict minus rows, and the kept flows (list mode).

    Used in-process by ``natfleet local`` (which renders Flow objects directly) and by
    :func:`handle` (which turns them into JSON rows). With ``project(flow) -> (sort key,
    value)`` the listing is a sorted list of those pairs instead, and may use several
    processes; names are not resolved then. A garbled host fact is unknown, with a warning.
    With ``skip_own`` (the remote agent, :func:`main`) the SSH session it runs under is
    found (:func:`find_own_session`) and its entry left out: ``own_session`` and
    ``own_flows`` say so.
    """
    started, cpu = time.monotonic(), cpu_seconds()
    warnings: List[str] = []
    facts = host_facts(sources, warnings)
    answer: Json = {"agent": AGENT_VERSION, "ok": True, "warnings": warnings}
    answer.update(facts)
    session = None
    if skip_own:
        session = _fact(warnings, "natfleet's own session", None, find_own_session, sources)
    answer["own_session"] = session_json(session)
    answer["own_flows"] = 0
    flows: List[Any] = []
    if request.mode == "info":
        answer["source"] = None
        _cap_warnings(warnings)
        answer["cpu"] = round(max(0.0, cpu_seconds() - cpu), 3)
        return answer, flows
    own = set(facts["addresses"])
    if not own:
        warnings.append("the box's own addresses are unknown: connections to it show as routed")
    check = None
    if request.mode == "check":  # the check facts first: the walk needs the idle cutoff
        from natfleet import agent_check

        check = agent_check.prepare(request, sources, warnings)
    source, result, lines, malformed, own_flows = scan(
        request, sources, own, facts["count"], project, session_skip(session)
    )
    answer["own_flows"] = own_flows
    answer["source"] = source
    answer["lines"] = lines
    answer["malformed"] = malformed
    if answer["count"] is None and source != TABLE_PROC:
        answer["count"] = lines - malformed["count"]
    if isinstance(result, Summary):
        answer["summary"] = result.to_json(facts["port_range"])
        answer["matched"] = result.flows
        answer["summary"]["fill_pct"] = _percent(answer["count"], answer["max"])
        if check is not None:
            answer["check"] = agent_check.facts_json(check, result)
    else:
        flows = result
        flows.sort(key=_FIRST if project else sort_key(request.sort or "src"))
        if request.limit is not None:
            flows = flows[: request.limit]
        answer["matched"] = len(result)
        if request.resolve and not project:
            addrs: Set[str] = set()
            for flow in flows:
                addrs.update((flow.osrc, flow.odst, flow.rsrc, flow.rdst))
            answer["names"] = resolve_names(addrs, request.resolve_budget)
    _cap_warnings(warnings)
    answer["seconds"] = round(max(0.0, time.monotonic() - started), 3)
    answer["cpu"] = round(max(0.0, cpu_seconds() - cpu), 3)
    return answer, flows


def cpu_seconds() -> float:
    """CPU seconds (user and system) this process and its finished children (the summary
    workers) have used: what the agent costs a busy box, next to its wall ``seconds``."""
    used = os.times()
    return used[0] + used[1] + used[2] + used[3]


def _cap_warnings(warnings: List[str]) -> None:
    """At most WARNINGS_MAX warnings, the last saying how many more there were."""
    if len(warnings) > WARNINGS_MAX:
        more = len(warnings) - WARNINGS_MAX + 1
        warnings[WARNINGS_MAX - 1 :] = ["and %d more warnings" % more]


def _percent(part: Optional[int], whole: Optional[int]) -> Optional[float]:
    """``part`` in percent of ``whole``, to 2 places; None when either is unknown or 0.

    >>> _percent(1, 3), _percent(5, 0), _percent(None, 10), _percent(10**400, 3)
    (33.33, None, None, None)
    """
    if part is None or not whole or part < 0 or whole < 0:
        return None
    try:
        value = round(100 * part / whole, 2)  # int / int: exact until the float rounding
    except OverflowError:
        return None
    return value if math.isfinite(value) else None


def failure(kind: str, message: str) -> Json:
    """An ``ok: false`` answer (the message capped at MESSAGE_MAX characters).

    >>> failure("bad_request", "top: must be an integer")["error"]["kind"]
    'bad_request'
    """
    error = {"kind": kind, "message": printable(message[:MESSAGE_MAX])}
    return {"agent": AGENT_VERSION, "ok": False, "error": error}


def _failure_for(exc: BaseException) -> Json:
    """The failure answer for an exception: an AgentError says its kind, anything else is a
    bug that must still end in an answer."""
    if isinstance(exc, AgentError):
        return failure(exc.kind, str(exc))
    return failure("agent", "internal error: %s: %s" % (type(exc).__name__, exc))


def _serve(data: Any, sources: Sources, skip_own: bool = False) -> Tuple[Json, Optional[List[Any]]]:
    """(answer without rows, the flows to list or None) for a request; raises."""
    request = Request(data)
    answer, flows = run(request, sources, skip_own=skip_own)
    return printable_answer(answer), flows if request.mode == "list" else None


def handle(data: Any, sources: Sources, skip_own: bool = False) -> Json:
    """Serve a request dict in-process, rows as a list; never raises: an error is an
    ``{"ok": false, "error": ...}`` answer.

    >>> handle({"mode": "bogus"}, DumpSources())["error"]["kind"]
    'bad_request'
    >>> handle({"top": "x"}, DumpSources())["error"]["message"]
    "top: must be an integer from 1 to 1000, not str 'x'"
    """
    try:
        answer, flows = _serve(data, sources, skip_own)
        if flows is not None:
            answer["rows"] = [flow.to_json() for flow in flows]
        return answer
    except Exception as exc:
        return _failure_for(exc)


_ENCODER = json.JSONEncoder(ensure_ascii=True, allow_nan=False, separators=(",", ":"))


def encode(value: Any) -> str:
    """One line of the wire format: strict, ASCII-only, compact JSON (raises ValueError for
    a non-finite number rather than writing ``NaN``).

    >>> encode({"host": "nat-\\u00e9", "pct": 0.5})
    '{"host":"nat-\\\\u00e9","pct":0.5}'
    """
    return _ENCODER.encode(value)


def answer_lines(data: Any, sources: Sources, skip_own: bool = False) -> Iterator[str]:
    """Serve a request as wire format 2 (docs/json.md): the header line (the answer without
    rows; ``"rows": N`` in list mode), then N row lines; lines have no newline. Never
    raises: a failure is the single failure line. Should a row fail after the header (a bug),
    the failure line takes its place and ends the answer, so it is never short unnoticed.

    >>> table = DumpSources({TABLE_PROC: "ipv4 2 udp 17 29 src=192.0.2.1 dst=203.0.113.53 "
    ...     "sport=5353 dport=53 [UNREPLIED] src=203.0.113.53 dst=198.51.100.1 sport=53 "
    ...     "dport=5353 use=1\\n"})
    >>> header, row = answer_lines({"mode": "list"}, table)
    >>> json.loads(header)["rows"], json.loads(row)["reply"]["dst"]
    (1, '198.51.100.1')
    >>> list(answer_lines({"mode": "bogus"}, table))[0][:40]
    '{"agent":2,"ok":false,"error":{"kind":"b'
    """
    try:
        answer, flows = _serve(data, sources, skip_own)
        if flows is not None:
            answer["rows"] = len(flows)
        header = encode(answer)
    except Exception as exc:
        yield encode(_failure_for(exc))
        return
    yield header
    for number, flow in enumerate(flows or (), 1):
        try:
            line = encode(flow.to_json())
        except Exception as exc:
            message = "row %d of %d: %s" % (number, len(flows or ()), _describe(exc))
            yield encode(_failure_for(AgentError("agent", "internal error: " + message)))
            return
        yield line


def answer_bytes(data: Any, sources: Sources, skip_own: bool = False) -> Iterator[bytes]:
    """Serve a request as a compact answer (``"encoding": "compact"``, natfleet/agent_wire.py):
    one zlib stream of the header line (``"encoding": "compact"`` in list mode) and the rows
    in column blocks; pieces of the stream. Never raises: a failure is the failure line,
    compressed, and a row that fails (a bug) ends the answer with one in its place.

    >>> import zlib
    >>> zlib.decompress(b"".join(answer_bytes({"mode": "bogus"}, DumpSources())))[:31]
    b'{"agent":2,"ok":false,"error":{'
    """
    from natfleet import agent_wire

    try:
        answer, flows = _serve(data, sources, skip_own)
        if flows is not None:
            answer["rows"] = len(flows)
            answer["encoding"] = "compact"
        header = encode(answer)
    except Exception as exc:
        yield from agent_wire.compressed_lines([encode(_failure_for(exc))])
        return
    if flows is None:
        yield from agent_wire.compressed_lines([header])
        return
    rows = flows

    def failed(exc: BaseException, sent: int) -> str:
        message = "row block after row %d of %d: %s" % (sent, len(rows), _describe(exc))
        return encode(_failure_for(AgentError("agent", "internal error: " + message)))

    yield from agent_wire.compact_answer(header, rows, failed)


def read_request(stream: IO[bytes], limit: int = MAX_REQUEST_BYTES) -> Any:
    """The request object from a byte stream (empty means ``{}``); raises AgentError
    (bad_request) for more than ``limit`` bytes or text that is not JSON.

    >>> read_request(io.BytesIO(b'{"mode": "info"}'))
    {'mode': 'info'}
    """
    raw = stream.read(limit + 1)
    if len(raw) > limit:
        raise AgentError("bad_request", "the request is over %d bytes" % limit)
    try:
        return json.loads(raw.decode("utf-8").strip() or "{}")
    except Exception as exc:  # bad UTF-8, bad JSON, nesting too deep for the parser
        raise AgentError("bad_request", "request is not JSON: %s" % _describe(exc)) from None


def write_lines(out: IO[str], lines: Iterable[str], chunk: int = OUT_CHUNK_CHARS) -> None:
    """Write ``lines``, each ended by a newline, in writes of about ``chunk`` characters."""
    pending: List[str] = []
    size = 0
    for line in lines:
        pending.append(line)
        size += len(line) + 1
        if size >= chunk:
            pending.append("")
            out.write("\n".join(pending))
            pending = []
            size = 0
    if pending:
        pending.append("")
        out.write("\n".join(pending))
    out.flush()


def main(sources: Optional[Sources] = None) -> int:
    """Read one JSON request on stdin, write the wire format 2 answer on stdout (with
    ``"encoding": "compact"`` the compact answer, :func:`answer_bytes`); 0, or 1 if stdout
    was closed before the answer was all written. This is the remote agent: the SSH session
    it runs under is left out of the answer (see :func:`run`)."""
    chunks: Optional[Iterator[bytes]] = None  # a compact answer (agent_wire)
    try:
        data = read_request(sys.stdin.buffer)
    except AgentError as exc:
        lines: Iterator[str] = iter([encode(_failure_for(exc))])
    else:
        if isinstance(data, dict) and data.get("mode") == "watch":  # a stream: its own module
            from natfleet import agent_watch

            return agent_watch.main(data, sources)
        here = LocalSources("/") if sources is None else sources
        if isinstance(data, dict) and data.get("encoding") == "compact":
            chunks = answer_bytes(data, here, True)
        else:
            lines = answer_lines(data, here, True)
    try:
        if chunks is not None:
            out = sys.stdout.buffer
            for chunk in chunks:
                if chunk:
                    out.write(chunk)
            out.flush()
        else:
            write_lines(sys.stdout, lines)
    except (IOError, OSError):  # the reader went away (e.g. natfleet's byte cap): say nothing
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())  # no second error when Python flushes at exit
        except (IOError, OSError, ValueError):
            pass
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
