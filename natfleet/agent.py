"""natfleet agent: read, parse, classify, filter and summarise a Linux conntrack table.

Stdlib only, Python 3.6+, one file: natfleet ships it to a NAT box's own python3 on stdin
and imports the very same file locally (``natfleet local``, ``--input``, raw dumps).

    $ echo '{"mode": "summary"}' | sudo python3 natfleet/agent.py
    {"agent":1,"ok":true,"source":"/proc/net/nf_conntrack","count":3,...}

The request/answer JSON is documented in docs/json.md. Every read goes through a *sources*
object (``LocalSources(root)`` for a live machine or a fixture folder, ``DumpSources`` for
captured texts), so parsers never open paths themselves.
"""

import io
import ipaddress
import json
import marshal
import os
import socket
import subprocess
import sys
import threading
import time

AGENT_VERSION = 1

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


class Malformed(ValueError):
    """A table line that does not follow the conntrack grammar."""


class AgentError(Exception):
    """The request cannot be served: ``kind`` is permission, no_table or bad_request."""

    def __init__(self, kind, message):
        Exception.__init__(self, message)
        self.kind = kind


# --------------------------------------------------------------------------- sources


class LocalSources(object):
    """Reads a live machine (root ``/``) or a folder laid out like one (tests).

    >>> LocalSources("tests/data/root").path("/proc/net/nf_conntrack")
    'tests/data/root/proc/net/nf_conntrack'
    """

    def __init__(self, root="/"):
        self.root = root

    def path(self, path):
        return os.path.join(self.root, path.lstrip("/"))

    def exists(self, path):
        return os.path.exists(self.path(path))

    def open_lines(self, path):
        """A text stream (read/readline); raises FileNotFoundError or PermissionError."""
        return open(self.path(path), "r", encoding="ascii", errors="replace", buffering=1 << 20)

    def read(self, path):
        """The file's text, or None if it is missing or unreadable."""
        try:
            with open(self.path(path), "r", encoding="ascii", errors="replace") as handle:
                return handle.read()
        except (IOError, OSError):
            return None

    def listdir(self, path):
        try:
            return sorted(os.listdir(self.path(path)))
        except (IOError, OSError):
            return []

    def readlink(self, path):
        try:
            return os.readlink(self.path(path))
        except (IOError, OSError):
            return None

    def command_lines(self, argv):
        """A command's output stream, or None when it is not installed (live root only)."""
        if self.root != "/":
            return None
        try:
            proc = subprocess.Popen(
                list(argv),
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,  # a line or two: its count, or why it failed
                universal_newlines=True,
                bufsize=1 << 20,
            )
        except (IOError, OSError):
            return None
        return _CommandLines(proc)

    def command(self, argv, timeout=10):
        """A command's output as text, or None when missing, failing or slow."""
        if self.root != "/":
            return None
        try:
            out = subprocess.run(
                list(argv),
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                universal_newlines=True,
                timeout=timeout,
            )
        except (IOError, OSError, subprocess.SubprocessError):
            return None
        return out.stdout if out.returncode == 0 else None


class _CommandLines(object):
    """A command's stdout as a stream; on exit it is reaped, and a command that failed
    raises AgentError with what it said (a failing ``conntrack -L`` is not an empty table)."""

    def __init__(self, proc):
        self.proc = proc

    def read(self, size=-1):
        return self.proc.stdout.read(size)

    def readline(self):
        return self.proc.stdout.readline()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.proc.stdout.close()
        said = self.proc.stderr.read().strip()
        self.proc.stderr.close()
        if self.proc.wait() != 0 and exc[0] is None:
            kind = "permission" if "not permitted" in said.lower() else "no_table"
            raise AgentError(
                kind,
                "%s failed (exit %d): %s" % (" ".join(self.proc.args), self.proc.returncode, said),
            )


class DumpSources(object):
    """Serves captured texts: ``{path: text}``, commands under ``"$ " + argv``.

    ``table_file`` streams a saved table from disk (``--input``) as the conntrack table.

    >>> DumpSources({"/proc/sys/net/netfilter/nf_conntrack_max": "65536\\n"}).read(MAX_PATH)
    '65536\\n'
    """

    def __init__(self, files=None, table_file=None):
        self.files = dict(files or {})
        self.table_file = table_file

    def exists(self, path):
        return path in self.files or (path == TABLE_PROC and self.table_file is not None)

    def open_lines(self, path):
        if path == TABLE_PROC and self.table_file is not None:
            if self.table_file == "-":  # bytes as they come, like a file: never a traceback
                return _Borrowed(io.TextIOWrapper(sys.stdin.buffer, "ascii", "replace"))
            return open(self.table_file, "r", encoding="ascii", errors="replace")
        if path not in self.files:
            raise FileNotFoundError(path)
        return io.StringIO(self.files[path], newline=None)

    def read(self, path):
        return self.files.get(path)

    def listdir(self, path):
        prefix = path.rstrip("/") + "/"
        names = set(p[len(prefix) :].split("/")[0] for p in self.files if p.startswith(prefix))
        return sorted(names)

    def readlink(self, path):
        return self.files.get(path)

    def command_lines(self, argv):
        text = self.files.get("$ " + " ".join(argv))
        return None if text is None else io.StringIO(text, newline=None)

    def command(self, argv, timeout=10):
        return self.files.get("$ " + " ".join(argv))


class _Borrowed(object):
    """A stream the agent reads but does not own (stdin): not closed on exit."""

    def __init__(self, stream):
        self.stream = stream

    def read(self, size=-1):
        return self.stream.read(size)

    def readline(self):
        return self.stream.readline()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def split_raw_dump(text):
    """Turn RAW_COMMAND's output into a ``{path: text}`` dict for DumpSources.

    >>> split_raw_dump("@@natfleet file /proc/sys/net/netfilter/nf_conntrack_max\\n65536\\n")
    {'/proc/sys/net/netfilter/nf_conntrack_max': '65536\\n'}
    """
    files = {}
    key = None
    chunk = []
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

_ADDR_CACHE = {}
_ADDR_CACHE_MAX = 1 << 16


def canonical_address(text):
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


_SORT_CACHE = {}


def address_key(addr):
    """A sort key putting IPv4 before IPv6, each in numeric order (10.0.0.2 < 10.0.0.10)."""
    found = _SORT_CACHE.get(addr)
    if found is None:
        if len(_SORT_CACHE) >= _ADDR_CACHE_MAX:
            _SORT_CACHE.clear()
        family = socket.AF_INET6 if ":" in addr else socket.AF_INET
        found = _SORT_CACHE[addr] = (family == socket.AF_INET6, socket.inet_pton(family, addr))
    return found


# --------------------------------------------------------------------------- parsing


def _tuple(tokens, pnum):
    """(src, dst, sport-like, dport-like, consumed) from ``['A', 'dst=B', 'sport=1', ...]``.

    The layout is read from the tokens, not guessed from the protocol (the kernel prints
    DCCP as ``unknown 33`` with no ports); tcp, udp, udplite and sctp must have ports.
    """
    if len(tokens) >= 4:  # the usual port tuple, checked with the fewest steps
        src, dst, sport, dport = tokens[0], tokens[1], tokens[2], tokens[3]
        if sport[:6] == "sport=" and dport[:6] == "dport=" and dst[:4] == "dst=":
            sport, dport, dst = sport[6:], dport[6:], dst[4:]
            if sport.isdigit() and dport.isdigit():
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
            if not (sport.isdigit() and dport.isdigit()):
                raise Malformed("bad port")
            return src, dst, sport, dport, 4
        if pnum in PORT_PROTOS:
            raise Malformed("no ports")
        if third.startswith("type="):
            if not (tokens[3].startswith("code=") and tokens[4].startswith("id=")):
                raise Malformed("bad icmp tuple")
            ident = tokens[4][3:]
            if not ident.isdigit():
                raise Malformed("bad icmp id")
            return src, dst, ident, None, 5
        if pnum in ICMP_PROTOS:
            raise Malformed("no icmp type/code/id")
        if third.startswith("srckey="):
            if not tokens[3].startswith("dstkey="):
                raise Malformed("bad gre keys")
            return src, dst, third[7:], tokens[3][7:], 4
        return src, dst, None, None, 2
    except IndexError:
        raise Malformed("short tuple") from None


_COMMON_EXTRAS = frozenset(
    ("[UNREPLIED]", "[ASSURED]", "[OFFLOAD]", "[HW_OFFLOAD]", "mark=0", "zone=0")
    + tuple("use=%d" % n for n in range(1, 10))
)


def _extras_ok(tokens, _common=_COMMON_EXTRAS.issuperset):
    """Every field after a tuple is a known flag, ``key=DIGITS`` or ``secctx=...``."""
    if _common(tokens):
        return True  # the usual tail, checked in one C call
    for tok in tokens:
        if tok in FLAG_TOKENS:
            continue
        key, eq, value = tok.partition("=")
        if not eq or not key:
            return False
        if key != "secctx" and not value.isdigit():
            return False
    return True


def parse_fields(line):
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
        if n < 4 or not head[1].isdigit():
            raise Malformed("bad l3 fields")
        l3, k = head[0], 3
    elif n >= 2:
        l3, k = None, 1
    else:
        raise Malformed("short header")
    pnum_text = head[k]
    if not pnum_text.isdigit():
        raise Malformed("bad protocol number")
    pnum = int(pnum_text)
    timeout = state = gre = None
    k += 1
    if k < n and head[k].isdigit():
        timeout = int(head[k])
        k += 1
    if k < n:
        if k + 1 == n and head[k] in STATES:
            state = head[k]
        elif pnum == GRE and head[k].startswith("timeout=") and k + 2 == n:
            try:
                gre = {
                    "timeout": int(head[k][8:].rstrip(",")),
                    "stream_timeout": int(head[k + 1][15:]),
                }
            except ValueError:
                raise Malformed("bad gre timeouts") from None
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
    if l3 is None:
        l3 = "ipv6" if ":" in osrc else "ipv4"
    return (pnum, timeout, state, osrc, odst, osp, odp, rsrc, rdst, rsp, rdp, l3, gre)


def nat_kind(fields, own):
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


def proto_name(pnum):
    """``tcp`` for 6; a protocol the kernel does not name keeps its number (``"99"``)."""
    return PROTO_NAMES.get(pnum) or str(pnum)


def line_state(state, line):
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

    def __init__(self, fields, nat, line=None, row=None):
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
    def parse(cls, line, own):
        """A Flow from a table line, classified against the box's own addresses."""
        fields = parse_fields(line)
        return cls(fields, nat_kind(fields, own), line)

    def display_state(self):
        """TCP/SCTP state; otherwise UNREPLIED, ASSURED, OFFLOAD, HW_OFFLOAD or REPLIED."""
        if self.line is not None:
            return line_state(self.state, self.line)
        return line_state(self.state, " ".join("[%s]" % flag for flag in self.flags()))

    def flags(self):
        if self.row is not None:
            return list(self.row.get("flags") or ())
        return [t[1:-1] for t in self.line.split() if t in FLAG_TOKENS]

    @classmethod
    def from_json(cls, row):
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
        fields = (
            PROTO_NUMBERS.get(row["proto"], -1),
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

    def shown(self):
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

    def to_json(self):
        """The row of docs/json.md (optional keys only when the kernel printed them)."""
        if self.row is not None:
            return self.row
        _head, orig, reply = self.line.split(" src=", 2)
        otoks, rtoks = orig.split(), reply.split()
        row = {
            "proto": self.proto,
            "l3": self.l3,
            "state": self.state,
            "nat": self.nat,
            "orig": _tuple_json(otoks, self.osrc, self.odst),
            "reply": _tuple_json(rtoks, self.rsrc, self.rdst),
            "flags": self.flags(),
        }
        if self.timeout is not None:
            row["timeout"] = self.timeout
        if self.gre is not None:
            row["gre"] = self.gre
        for direction, tokens in (("orig", otoks), ("reply", rtoks)):
            for tok in tokens:
                key, eq, value = tok.partition("=")
                if not eq:
                    continue
                if key in ("packets", "bytes"):
                    row[key + "_" + direction] = int(value)
                elif key in ("mark", "zone", "zone-orig", "zone-reply", "use", "delta-time"):
                    row[key.replace("-", "_")] = int(value)
                elif key == "secctx":
                    row["secctx"] = value
        return row


def _text(value):
    return None if value is None else str(value)


def _tuple_json(tokens, src, dst):
    out = {"src": src, "dst": dst}
    third = tokens[2] if len(tokens) > 2 else ""
    if third.startswith("sport="):
        out["sport"] = int(third[6:])
        out["dport"] = int(tokens[3][6:])
    elif third.startswith("type="):
        out["type"] = int(third[5:])
        out["code"] = int(tokens[3][5:])
        out["id"] = int(tokens[4][3:])
    elif third.startswith("srckey="):
        out["srckey"] = third[7:]
        out["dstkey"] = tokens[3][7:]
    return out


def _is_trailer(line):
    """conntrack's own count line, when a dump was saved with 2>&1."""
    return line.startswith("conntrack v") and "flow entries" in line


# --------------------------------------------------------------------------- host facts


def read_int(sources, path):
    fields = (sources.read(path) or "").split()
    try:
        return int(fields[0]) if fields else None
    except ValueError:
        return None


def parse_stat(text):
    """Sum /proc/net/stat/nf_conntrack by the header's names (``entries`` is not summed).

    >>> parse_stat("entries clashres found new invalid ignore delete chainlength insert "
    ...     "insert_failed drop early_drop\\n00000003 0 0 0 0 0 0 0 0 00000002 0 1\\n"
    ...     "00000003 0 0 0 0 0 0 0 0 00000001 0 0\\n")["insert_failed"]
    3
    """
    if not text:
        return None
    lines = text.split("\n")
    names = lines[0].split()
    totals = dict((name, 0) for name in names)
    for row in lines[1:]:
        values = row.split()
        if len(values) != len(names):
            continue
        for name, value in zip(names, values):
            number = int(value, 16)
            if name == "entries":
                totals[name] = number
            else:
                totals[name] += number
    return totals


def parse_conntrack_stats(text):
    """Sum ``conntrack -S`` per-CPU lines (for boxes without /proc/net/stat/nf_conntrack).

    >>> parse_conntrack_stats("cpu=0 found=0 insert_failed=2 drop=1\\n"
    ...     "cpu=1 found=0 insert_failed=3 drop=0\\n")
    {'found': 0, 'insert_failed': 5, 'drop': 1}
    """
    totals = {}
    for line in (text or "").splitlines():
        for field in line.split():
            key, eq, value = field.partition("=")
            if eq and key != "cpu" and value.isdigit():
                totals[key] = totals.get(key, 0) + int(value)
    return totals or None


def parse_fib_trie(text):
    """The local IPv4 addresses (every interface and alias) from /proc/net/fib_trie.

    >>> parse_fib_trie("Local:\\n  +-- 198.51.100.0/24 2 0 2\\n     |-- 198.51.100.11\\n"
    ...     "        /32 host LOCAL\\n")
    ['198.51.100.11']
    """
    found = []
    last = None
    for line in (text or "").splitlines():
        stripped = line.strip()
        if stripped.startswith("|-- "):
            last = stripped[4:]
        elif stripped.startswith("/32 host LOCAL") and last and last not in found:
            found.append(last)
    return found


def parse_if_inet6(text):
    """The IPv6 addresses from /proc/net/if_inet6 (32 hex digits, then index, ...)."""
    found = []
    for line in (text or "").splitlines():
        fields = line.split()
        if fields and len(fields[0]) == 32:
            raw = fields[0]
            full = ":".join(raw[i : i + 4] for i in range(0, 32, 4))
            try:
                addr = canonical_address(full)
            except Malformed:
                continue
            if addr not in found:
                found.append(addr)
    return found


def parse_ethtool_stats(text):
    """The ENA allowance counters an ``ethtool -S`` output has (missing keys stay missing)."""
    found = {}
    for line in (text or "").splitlines():
        key, _, value = line.strip().partition(":")
        if key in ENA_KEYS:
            try:
                found[key] = int(value.strip())
            except ValueError:
                continue
    return found


def read_ena(sources):
    """ENA allowance counters per ENA interface; {} where there is none."""
    result = {}
    for iface in sources.listdir(SYS_NET):
        driver = sources.readlink(SYS_NET + "/" + iface + "/device/driver") or ""
        if driver.rstrip("/").split("/")[-1] != "ena":
            continue
        stats = parse_ethtool_stats(sources.command(("ethtool", "-S", iface)))
        if stats:
            result[iface] = stats
    return result


def host_facts(sources):
    """count, max, stats, port range, own addresses, ENA counters, hostname."""
    port_range = None
    text = sources.read(PORT_RANGE_PATH)
    if text:
        try:
            low, high = [int(x) for x in text.split()[:2]]
            port_range = [low, high]
        except ValueError:
            port_range = None
    hostname = (sources.read(HOSTNAME_PATH) or "").strip()
    if not hostname and isinstance(sources, LocalSources) and sources.root == "/":
        hostname = socket.gethostname()
    return {
        "hostname": hostname or None,
        "count": read_int(sources, COUNT_PATH),
        "max": read_int(sources, MAX_PATH),
        "stats": parse_stat(sources.read(STAT_PATH))
        or parse_conntrack_stats(sources.command(("conntrack", "-S"))),
        "port_range": port_range,
        "addresses": parse_fib_trie(sources.read(FIB_TRIE_PATH))
        + parse_if_inet6(sources.read(IF_INET6_PATH)),
        "ena": read_ena(sources),
    }


def open_table(sources):
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
                    "cannot read %s: permission denied; run as root (sudo natfleet ...)" % name,
                ) from None
    raise AgentError(
        "no_table",
        "no conntrack table: %s is absent and conntrack-tools is not installed "
        "(load the module with 'modprobe nf_conntrack' or install the 'conntrack' package)"
        % TABLE_PROC,
    )


# --------------------------------------------------------------------------- requests


def _networks(values, what):
    nets = []
    for value in values or ():
        try:
            nets.append(ipaddress.ip_network(str(value), strict=False))
        except ValueError:
            message = "%s: %r is not an address or CIDR" % (what, value)
            raise AgentError("bad_request", message) from None
    return nets


def _in_networks(addr, nets, cache):
    hit = cache.get(addr)
    if hit is None:
        ip = ipaddress.ip_address(addr)
        hit = cache[addr] = any(ip.version == n.version and ip in n for n in nets)
    return hit


class Request(object):
    """A validated request (see docs/json.md); raises AgentError('bad_request')."""

    def __init__(self, data):
        if not isinstance(data, dict):
            raise AgentError("bad_request", "the request must be a JSON object")
        self.mode = data.get("mode", "list")
        if self.mode not in ("list", "summary", "info"):
            raise AgentError("bad_request", "mode must be list, summary or info")
        filters = data.get("filters") or {}
        proto = filters.get("proto")
        self.pnum = None
        if proto not in (None, ""):
            proto = str(proto).lower()
            if proto.isdigit():
                self.pnum = int(proto)
            elif proto in PROTO_NUMBERS:
                self.pnum = PROTO_NUMBERS[proto]
            else:
                raise AgentError(
                    "bad_request",
                    "unknown protocol %r (one of %s, or a number)"
                    % (proto, ", ".join(sorted(PROTO_NUMBERS))),
                )
        self.src = _networks(filters.get("src"), "-s")
        self.dst = _networks(filters.get("dst"), "-d")
        nat = filters.get("nat")
        self.nat = frozenset(nat) if nat else TRANSLATED
        if not self.nat <= frozenset(NAT_KINDS):
            raise AgentError("bad_request", "nat kinds are %s" % ", ".join(NAT_KINDS))
        self.sort = data.get("sort")
        if self.sort not in (None,) + SORT_KEYS:
            raise AgentError("bad_request", "sort must be one of %s" % ", ".join(SORT_KEYS))
        self.top = int(data.get("top") or 10)
        self.limit = data.get("limit")
        self.resolve = bool(data.get("resolve"))
        jobs = data.get("jobs")
        self.jobs = None if jobs is None else int(jobs)
        self.resolve_budget = float(data.get("resolve_budget") or 5.0)
        self._src_cache = {}
        self._dst_cache = {}

    def matches(self, fields, nat):
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


def _port(value):
    return int(value) if value and value.isdigit() else -1


def sort_key(name):
    """A numeric sort key function for ``-r src|dst|src-port|dst-port|state``."""

    def src(flow):
        return address_key(flow.osrc), _port(flow.osp)

    def dst(flow):
        d = flow.shown()[2]
        return address_key(d[0]), _port(d[1])

    if name == "dst":
        return dst
    if name == "src-port":
        return lambda f: (_port(f.osp), src(f))
    if name == "dst-port":
        return lambda f: (_port(f.shown()[2][1]), dst(f))
    if name == "state":
        return lambda f: (f.display_state(), src(f))
    return src


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

    def __init__(self, capacity=COUNTER_CAPACITY):
        self.counts = {}
        self.capacity = capacity
        self.error = 0

    def add(self, key, n=1):
        counts = self.counts
        counts[key] = counts.get(key, 0) + n
        self.prune()

    def prune(self):
        """Keep the heaviest half once over capacity (callers may add in bulk, then prune)."""
        counts = self.counts
        if len(counts) > self.capacity:
            keep = sorted(counts.items(), key=lambda kv: -kv[1])
            half = self.capacity // 2
            self.error += keep[half][1]  # a dropped key may come back and be dropped again
            self.counts = dict(keep[:half])

    def top(self, n):
        return sorted(self.counts.items(), key=lambda kv: (-kv[1], kv[0]))[:n]


BLOCK_CHARS = 1 << 20
PARALLEL_MIN_FLOWS = 50000
MAX_WORKERS = 4


def _blocks(stream, size=BLOCK_CHARS):
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


def _lines(text):
    lines = text.split("\n")
    if lines and not lines[-1]:
        lines.pop()
    return lines


class Tally(object):
    """What one pass over some lines found: a Summary or kept Flows, and the bad lines.

    ``project`` (list mode) turns each kept Flow into plain values (e.g. a sort key and a
    rendered line), which is what lets a listing run in worker processes too.
    """

    def __init__(self, request, own, project=None):
        self.own = own
        self.summary = Summary(request.top) if request.mode == "summary" else None
        self.matches = request.matches
        self.project = project
        self.kept = []
        self.malformed = {"count": 0, "examples": []}
        self.skipped = 0  # blank lines and conntrack's own count line: not table entries

    def feed(self, first, lines):
        """Parse, classify and count ``lines`` (numbered from ``first``)."""
        own, summary, matches, kept = self.own, self.summary, self.matches, self.kept
        project = self.project
        for lineno, line in enumerate(lines, first):
            try:
                fields = parse_fields(line)
            except Malformed:
                if not line.strip() or _is_trailer(line):
                    self.skipped += 1
                    continue
                self.malformed["count"] += 1
                if len(self.malformed["examples"]) < MALFORMED_EXAMPLES:
                    self.malformed["examples"].append({"line": lineno, "text": line[:500]})
                continue
            nat = nat_kind(fields, own)
            if summary is not None:
                summary.add(fields, nat, line)
            elif matches(fields, nat):
                flow = Flow(fields, nat, line)
                kept.append(project(flow) if project else flow)

    def merge(self, state):
        """Add another process's :meth:`state`."""
        if self.summary is not None:
            self.summary.merge(state["summary"])
        else:
            self.kept.extend(state["kept"])
        self.skipped += state["skipped"]
        self.malformed["count"] += state["malformed"]["count"]
        examples = self.malformed["examples"] + state["malformed"]["examples"]
        examples.sort(key=lambda ex: ex["line"])
        self.malformed["examples"] = examples[:MALFORMED_EXAMPLES]

    def state(self):
        """What this process found, in plain values (marshal-able)."""
        found = {"malformed": self.malformed, "skipped": self.skipped}
        if self.summary is not None:
            found["summary"] = self.summary.state()
        else:
            found["kept"] = self.kept
        return found


def workers_for(request, expected_flows, projected=False):
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


def scan(request, sources, own=None, expected_flows=None, project=None):
    """Walk the table once: (source name, kept Flows or a Summary, table lines read (not
    counting blank lines and conntrack's count line), malformed).

    ``own`` is the box's own addresses (for local vs routed). In list mode the matching
    flows are kept; in summary mode only counters, so memory does not grow with the table.
    A big summary is spread over worker processes (see :func:`workers_for`).
    """
    own = frozenset(own or ())
    source, stream = open_table(sources)
    tally = Tally(request, own, project)
    lines = 0
    workers = workers_for(request, expected_flows, project is not None)
    with stream:
        if workers > 1:
            lines = _scan_parallel(stream, tally, request, own, workers, project)
        else:
            for first, text in _blocks(stream):
                block = _lines(text)
                tally.feed(first, block)
                lines = first + len(block) - 1
    result = tally.summary if tally.summary is not None else tally.kept
    return source, result, lines - tally.skipped, tally.malformed


def _scan_parallel(stream, tally, request, own, workers, project=None):
    """Deal blocks round-robin to forked workers over pipes; merge what they counted.

    Workers run at a lower priority (nice 10): on a NAT box the forwarding path comes first.
    """
    children = []
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
                mine = Tally(request, own, project)
                with os.fdopen(block_r, "rb") as blocks:
                    for header in blocks:
                        first, size = header.split()
                        text = blocks.read(int(size)).decode("utf-8", "surrogatepass")
                        mine.feed(int(first), _lines(text))
                with os.fdopen(result_w, "wb") as out:
                    marshal.dump(mine.state(), out)
                status = 0
            finally:
                os._exit(status)
        os.close(block_r)
        os.close(result_w)
        children.append((pid, block_w, result_r))
    lines = 0
    try:
        for n, (first, text) in enumerate(_blocks(stream)):
            data = text.encode("utf-8", "surrogatepass")
            _write_all(children[n % workers][1], b"%d %d\n" % (first, len(data)) + data)
            lines = first + text.count("\n") + (not text.endswith("\n")) - 1
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


def _write_all(fd, data):
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


class Summary(object):
    """Streaming per-box counters: states, protocols, NAT kinds, top talkers, port pressure.

    The hot loop does plain dict increments; the counters are pruned every PRUNE_EVERY flows
    so memory stays bounded (see TopCounter).
    """

    PRUNE_EVERY = 4096

    def __init__(self, top=10):
        self.top_n = top
        self.flows = 0
        self.kinds = {}  # (proto, state, nat) -> flows
        self.sources = TopCounter()
        self.destinations = TopCounter()
        self.ports = TopCounter()
        self.tcp_snat_established = 0

    def add(self, fields, nat, line):
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

    def counters(self):
        return self.sources, self.destinations, self.ports

    def prune(self):
        for counter in self.counters():
            counter.prune()

    def state(self):
        """Everything counted, in plain values (for merging across processes)."""
        self.prune()
        return {
            "flows": self.flows,
            "tcp_snat_established": self.tcp_snat_established,
            "kinds": self.kinds,
            "counters": [(c.counts, c.error) for c in self.counters()],
        }

    def merge(self, state):
        """Add another Summary's :meth:`state`; dropped-count bounds add up."""
        self.flows += state["flows"]
        self.tcp_snat_established += state["tcp_snat_established"]
        for key, n in state["kinds"].items():
            self.kinds[key] = self.kinds.get(key, 0) + n
        for counter, (counts, error) in zip(self.counters(), state["counters"]):
            counter.error += error
            for key, n in counts.items():
                counter.add(key, n)

    def _by(self, index):
        out = {}
        for key, n in self.kinds.items():
            proto = proto_name(key[0])
            name = proto if index == 0 else key[2] if index == 2 else proto + ":" + key[1]
            out[name] = out.get(name, 0) + n
        return out

    def to_json(self, port_range):
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


RESOLVER_THREADS = 16


def resolve_names(addresses, budget):
    """Reverse-resolve addresses within ``budget`` seconds in all; unresolved are left out.

    Lookups run on daemon threads, so one still blocked in the resolver when the budget is
    spent delays neither the answer nor the agent's exit.
    """
    pending = sorted(set(a for a in addresses if a))
    names = {}
    if not pending:
        return names
    lock = threading.Lock()
    done = threading.Event()
    left = [len(pending)]

    def work():
        while True:
            with lock:
                if not pending:
                    return
                addr = pending.pop()
            try:
                name = socket.gethostbyaddr(addr)[0]
            except (OSError, UnicodeError):
                name = None
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


def run(request, sources, project=None):
    """Serve a validated Request: the answer dict minus rows, and the kept flows (list mode).

    Used in-process by ``natfleet local`` (which renders Flow objects directly) and by
    :func:`handle` (which turns them into JSON rows). With ``project(flow) -> (sort key,
    value)`` the listing is a sorted list of those pairs instead, and may use several
    processes; names are not resolved then.
    """
    started = time.time()
    facts = host_facts(sources)
    answer = {"agent": AGENT_VERSION, "ok": True, "warnings": []}
    answer.update(facts)
    flows = []
    if request.mode == "info":
        answer["source"] = None
        return answer, flows
    own = set(facts["addresses"])
    if not own:
        answer["warnings"].append(
            "the box's own addresses are unknown: connections to it show as routed"
        )
    source, result, lines, malformed = scan(request, sources, own, facts["count"], project)
    answer["source"] = source
    answer["lines"] = lines
    answer["malformed"] = malformed
    if answer["count"] is None and source != TABLE_PROC:
        answer["count"] = lines - malformed["count"]
    if request.mode == "summary":
        answer["summary"] = result.to_json(facts["port_range"])
        answer["matched"] = result.flows
        fill = None
        if answer["count"] is not None and answer["max"]:
            fill = round(100.0 * answer["count"] / answer["max"], 2)
        answer["summary"]["fill_pct"] = fill
    else:
        flows = result
        flows.sort(key=(lambda pair: pair[0]) if project else sort_key(request.sort or "src"))
        if request.limit is not None:
            flows = flows[: int(request.limit)]
        answer["matched"] = len(result)
        if request.resolve and not project:
            addrs = set()
            for flow in flows:
                addrs.update((flow.osrc, flow.odst, flow.rsrc, flow.rdst))
            answer["names"] = resolve_names(addrs, request.resolve_budget)
    answer["seconds"] = round(time.time() - started, 3)
    return answer, flows


def failure(kind, message):
    """An ``ok: false`` answer."""
    return {"agent": AGENT_VERSION, "ok": False, "error": {"kind": kind, "message": message}}


def handle(data, sources):
    """Serve a request dict; never raises (errors become ``{"ok": false, "error": ...}``).

    >>> handle({"mode": "bogus"}, DumpSources())["error"]["kind"]
    'bad_request'
    """
    try:
        request = Request(data)
        answer, flows = run(request, sources)
        if request.mode == "list":
            answer["rows"] = [flow.to_json() for flow in flows]
        return answer
    except AgentError as exc:
        return {
            "agent": AGENT_VERSION,
            "ok": False,
            "error": {"kind": exc.kind, "message": str(exc)},
        }


def main():
    """Read one JSON request on stdin, write one JSON answer on stdout."""
    raw = sys.stdin.buffer.read()
    try:
        data = json.loads(raw.decode("utf-8") or "{}")
        answer = handle(data, LocalSources("/"))
    except ValueError as exc:
        answer = failure("bad_request", "request is not JSON: %s" % exc)
    sys.stdout.write(json.dumps(answer, separators=(",", ":")))
    sys.stdout.write("\n")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
