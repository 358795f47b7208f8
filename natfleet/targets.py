"""Build the list of boxes to read from the command line: hosts, a hosts file, the local
machine, saved dumps, or (when none of those is given) AWS discovery.

Target names and host strings are data only: they are validated here and never reach a shell
(the remote command is a constant, see natfleet/ssh.py).

Example:
    >>> split_host_spec("root@[2001:db8::1]:2222")
    ('root', '2001:db8::1', 2222)
    >>> resolve_targets(hosts=["admin@198.51.100.7:2200"])[0][0].user
    'admin'
"""

from __future__ import annotations

import ipaddress
import os
import re
import socket
from collections.abc import Iterable, Sequence
from typing import Callable, Optional

from natfleet.errors import TableError, UsageError
from natfleet.models import HostError, Target

SNIFF_LINES = 20  # --input: a file none of whose first lines is a conntrack entry is refused
SNIFF_BYTES = 64 * 1024

_USER_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]{0,63}$")
# A DNS name or an ~/.ssh/config alias: letters, digits, '.', '-', '_' (as OpenSSH accepts).
_HOST_RE = re.compile(r"^[A-Za-z0-9_](?:[A-Za-z0-9._-]{0,252})$")


def _bad(spec: str, why: str, where: str = "") -> UsageError:
    prefix = f"{where}: " if where else ""
    return UsageError(f"{prefix}bad host {spec!r}: {why} (expected [USER@]ADDR[:PORT])")


def split_host_spec(spec: str, where: str = "") -> tuple[Optional[str], str, Optional[int]]:
    """``[USER@]ADDR[:PORT]`` -> ``(user, addr, port)``; IPv6 with a port as ``[addr]:port``.

    Raises UsageError (naming ``where``, e.g. ``hosts.txt:3``) for anything that is not a
    plain user, an IP address or host name, and a port 1-65535.

    >>> split_host_spec("nat-a")
    (None, 'nat-a', None)
    >>> split_host_spec("2001:db8::1")
    (None, '2001:db8::1', None)
    """
    text = spec.strip()
    user: Optional[str] = None
    if "@" in text:
        user, _, text = text.rpartition("@")
        if not _USER_RE.match(user):
            raise _bad(spec, f"user {user!r} is not a plain login name", where)
    port_text: Optional[str] = None
    if text.startswith("["):
        addr, sep, rest = text[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            raise _bad(spec, "unbalanced '[' ']'", where)
        port_text = rest[1:] if rest else None
    elif text.count(":") == 1:
        addr, _, port_text = text.partition(":")
    else:
        addr = text  # a name, an IPv4 address, or a bare IPv6 address (no port)
    if not addr:
        raise _bad(spec, "no address", where)
    try:
        addr = str(ipaddress.ip_address(addr))
    except ValueError:
        if not _HOST_RE.match(addr):
            raise _bad(spec, "not an IP address or host name", where) from None
    port: Optional[int] = None
    if port_text is not None:
        if not port_text.isascii() or not port_text.isdigit() or not 0 < int(port_text) < 65536:
            raise _bad(spec, f"port {port_text!r} is not 1-65535", where)
        port = int(port_text)
    return user, addr, port


def host_target(spec: str, where: str = "") -> Target:
    """A Target for one ``--host`` value (see :func:`split_host_spec`); it is named as
    typed, without the user: ``root@[2001:db8::1]:2222`` is ``[2001:db8::1]:2222``."""
    user, addr, port = split_host_spec(spec, where)
    name = addr
    if port is not None:
        name = f"[{addr}]:{port}" if ":" in addr else f"{addr}:{port}"
    return Target(name=name, host=addr, kind="ssh", user=user, port=port)


def read_hosts_file(path: str) -> list[Target]:
    """One ``[USER@]ADDR[:PORT]`` per line; ``#`` starts a comment; blank lines are skipped.

    >>> # hosts.txt: "root@198.51.100.7  # nat-a" -> [Target(host='198.51.100.7', user='root')]
    """
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            lines = handle.read().splitlines()
    except OSError as exc:
        raise UsageError(f"--hosts-file {path!r}: {exc.strerror or exc}") from None
    targets = []
    for lineno, line in enumerate(lines, 1):
        text = line.split("#", 1)[0].strip()
        if text:
            targets.append(host_target(text, where=f"{path}:{lineno}"))
    return targets


def local_target() -> Target:
    """This machine, read directly (no SSH)."""
    return Target(name=socket.gethostname(), host="", kind="local")


def input_target(path: str) -> Target:
    """A saved conntrack dump (``/proc/net/nf_conntrack`` or ``conntrack -L`` text); '-' is
    stdin (read as it comes, so not checked here). A file that is not a conntrack table is
    refused (:func:`check_table_file`)."""
    if path != "-":
        if not os.path.isfile(path):
            raise UsageError(f"--input {path!r}: no such file")
        from natfleet.snapshot import is_snapshot  # a natfleet snapshot: its boxes, offline

        if is_snapshot(path):
            return Target(name=path, host="", kind="snapshot", path=path)
        check_table_file(path)
    return Target(name="stdin" if path == "-" else path, host="", kind="file", path=path)


def check_table_file(path: str, where: str = "--input") -> None:
    """Raise TableError when none of the first SNIFF_LINES non-blank lines of ``path`` looks
    like a conntrack entry (``/etc/passwd``, a gzip file, a log). A damaged table (entries
    that do not parse) passes: its malformed lines are counted and reported when read. An
    empty file is an empty table; a file that cannot be opened is left to the reader.

    >>> check_table_file("tests/data/tables/lab-box.txt")
    >>> check_table_file("pyproject.toml")
    Traceback (most recent call last):
    ...
    natfleet.errors.TableError: --input 'pyproject.toml': not a conntrack table (none of its \
first 20 lines is a /proc/net/nf_conntrack or 'conntrack -L' entry; line 1: '[build-system]')
    """
    try:
        with open(path, "rb") as handle:
            head = handle.read(SNIFF_BYTES)
    except OSError:
        return
    lines = head.decode("ascii", "replace").splitlines()
    if len(head) == SNIFF_BYTES and len(lines) > 1:
        lines.pop()  # cut by the read: not judged
    judged: list[tuple[int, str]] = []
    for number, line in enumerate(lines, 1):
        if not line.strip() or (line.startswith("conntrack v") and "flow entries" in line):
            continue
        if _table_like(line):
            return
        judged.append((number, line))
        if len(judged) == SNIFF_LINES:
            break
    if judged:
        number, first = judged[0]
        shown = first if len(first) <= 80 else first[:80] + "..."
        raise TableError(
            f"{where} {path!r}: not a conntrack table (none of its first {len(judged)} lines "
            f"is a /proc/net/nf_conntrack or 'conntrack -L' entry; line {number}: {shown!r})"
        )


def _table_like(line: str) -> bool:
    """A conntrack entry, or what is left of one: ``ipv4 2 tcp 6 ... src=... dst=...``.

    >>> _table_like("tcp      6 431999 ESTABLISHED src=192.0.2.1 dst=203.0.113.5 sport=1 dport=x")
    True
    >>> _table_like("root:x:0:0:root:/root:/bin/bash")
    False
    """
    from natfleet.agent import PROTO_NUMBERS, parse_fields

    try:
        parse_fields(line)
        return True
    except ValueError:
        pass
    words = line.split(None, 1)
    first = words[0] if words else ""
    known = first in ("ipv4", "ipv6") or first in PROTO_NUMBERS or first.isdecimal()
    return known and " src=" in line and " dst=" in line


def _unique(targets: Iterable[Target]) -> list[Target]:
    seen: set[Target] = set()
    out = []
    for target in targets:
        if target not in seen:
            seen.add(target)
            out.append(target)
    return out


def resolve_targets(
    hosts: Sequence[str] = (),
    hosts_files: Sequence[str] = (),
    local: bool = False,
    inputs: Sequence[str] = (),
    discover: Optional[Callable[[], tuple[list[Target], list[HostError]]]] = None,
) -> tuple[list[Target], list[HostError]]:
    """Every target named on the command line, in order and without duplicates; with none
    named, ``discover()`` (AWS discovery) supplies them, plus ready-made errors for instances
    it cannot reach (no address). Without ``discover`` that is a UsageError.
    """
    if sum(1 for path in inputs if path == "-") > 1:
        raise UsageError("--input - (stdin) can be given only once")
    named: list[Target] = [host_target(spec, where="--host") for spec in hosts]
    for path in hosts_files:
        named.extend(read_hosts_file(path))
    if local:
        named.append(local_target())
    named.extend(input_target(path) for path in inputs)
    if hosts_files and not named:
        raise UsageError(f"--hosts-file {', '.join(hosts_files)}: no hosts in the file")
    if named:
        return _unique(named), []
    if discover is None:
        raise UsageError("no targets: give --host, --hosts-file, --local or --input")
    return discover()
