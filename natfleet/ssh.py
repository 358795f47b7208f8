"""Run one constant command on a box over SSH: the only module that imports paramiko.

:meth:`SshConnector.exec` is natfleet's SSH transport (the :class:`natfleet.remote.Executor`
interface): it connects (bastions, ProxyCommand, host keys), prefixes the constant ``sudo -n ``
when the login user is not root, writes stdin while it streams stdout, chunk by chunk, to a
callback, and keeps the tail of stderr. The command is always a constant from
natfleet.remote; no host name, tag, user string or request content is ever put into it. One
:class:`~natfleet.limits.Deadline` bounds everything: TCP connect, banner, key exchange and
authentication of every hop, the bastion's channel, the session, the exec request and the
reading. A watchdog closes the sockets when it passes, so no paramiko wait outlives it.

Honoured: ``~/.ssh/config`` (HostName, User, Port, IdentityFile, IdentitiesOnly, ProxyJump,
ProxyCommand, UserKnownHostsFile, GlobalKnownHostsFile, ``Include``), ssh-agent, ``-i`` key
files, a bastion (``--proxy-jump``), known_hosts read as OpenSSH reads it (hashed names,
``[host]:port``, wildcards, ``@revoked``; ``@cert-authority`` and corrupt lines are skipped
with a warning) with strict checking (OpenSSH ``accept-new`` on request), compression (off for
the agent, whose program and answers are zlib-compressed already).

Example:
    >>> from natfleet.remote import REMOTE_COMMAND, agent_stdin
    >>> connector = SshConnector(SshOptions(known_hosts="/tmp/nflab/known_hosts"))
    >>> chunks = []
    >>> connector.exec(Target(name="nat-a", host="198.19.255.11", user="root"),
    ...                REMOTE_COMMAND, agent_stdin({"mode": "info"}), chunks.append,
    ...                Deadline(20))
    ExecResult(status=0, stderr=b'', received=512, where='root@198.19.255.11:22', user='root')
"""

from __future__ import annotations

import binascii
import errno
import getpass
import glob
import hashlib
import hmac
import logging
import os
import re
import select
import shlex
import socket
import stat
import subprocess
import threading
import time
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import paramiko
from paramiko.hostkeys import HostKeyEntry, InvalidHostKey

from natfleet.config import SshConfig
from natfleet.errors import ConfigError, TargetError
from natfleet.limits import Deadline
from natfleet.models import Target
from natfleet.remote import REMOTE_COMMAND, ExecResult
from natfleet.targets import split_host_spec

log = logging.getLogger(__name__)

SUDO_PREFIX = "sudo -n "
SYSTEM_KNOWN_HOSTS = "/etc/ssh/ssh_known_hosts"
MAX_INCLUDE_DEPTH = 16  # OpenSSH's READCONF_MAX_DEPTH
_POLL = 0.005  # seconds between polls of an idle channel
_CHUNK = 1 << 16
_SHOWN = 200  # characters of a server's own text quoted in a message
_known_hosts_lock = threading.Lock()
TcpConnect = Callable[[tuple[str, int], float], Any]


def target_error(kind: str, message: str) -> TargetError:
    """A TargetError carrying ``kind`` (connect, auth, hostkey, timeout).

    >>> target_error("timeout", "no SSH answer from root@nat-a:22 within 10 s").kind
    'timeout'
    """
    return TargetError(message, kind=kind)


@dataclass
class SshOptions:
    """How to reach boxes; unset paths fall back to the environment, then to ~/.ssh.

    ``ssh_config``: ``$NATFLEET_SSH_CONFIG``, else ``~/.ssh/config`` when it exists.
    ``known_hosts``: ``$NATFLEET_KNOWN_HOSTS``, else ``~/.ssh/known_hosts`` (written only with
    ``accept_new_host_keys``); ``/etc/ssh/ssh_known_hosts`` is also read, never written.
    ``connect_timeout`` bounds each step of connecting (TCP, banner, authentication, per
    hop); the whole run of one box is bounded by the Deadline given to
    :meth:`SshConnector.exec`.

    >>> SshOptions(user="ec2-user", identity_files=("~/.ssh/nat.pem",)).connect_timeout
    10.0
    """

    ssh_config: Optional[str] = None
    user: Optional[str] = None
    identity_files: tuple[str, ...] = ()
    proxy_jump: Optional[str] = None
    known_hosts: Optional[str] = None
    system_known_hosts: str = SYSTEM_KNOWN_HOSTS
    accept_new_host_keys: bool = False
    connect_timeout: float = SshConfig.connect_timeout
    debug: bool = False

    def config_path(self) -> Optional[str]:
        """The ssh_config file to read, or None."""
        explicit = self.ssh_config or os.environ.get("NATFLEET_SSH_CONFIG")
        if explicit:
            return os.path.expanduser(explicit)
        default = os.path.expanduser("~/.ssh/config")
        return default if os.path.isfile(default) else None

    def known_hosts_path(self, from_config: Optional[str] = None) -> str:
        """The user's known_hosts file (may not exist yet): the option, the environment,
        then ssh_config's UserKnownHostsFile (``from_config``), then ~/.ssh/known_hosts."""
        path = (
            self.known_hosts
            or os.environ.get("NATFLEET_KNOWN_HOSTS")
            or from_config
            or "~/.ssh/known_hosts"
        )
        return os.path.expanduser(path)


@dataclass
class _Hop:
    """One SSH connection of a chain: resolved address, login and keys."""

    alias: str
    hostname: str
    port: int
    user: str
    known_hosts: str = ""
    system_known_hosts: str = SYSTEM_KNOWN_HOSTS
    accept_new: bool = False
    key_files: list[str] = field(default_factory=list)
    identities_only: bool = False
    proxy_command: Optional[str] = None

    @property
    def known_hosts_files(self) -> list[str]:
        return [self.known_hosts, self.system_known_hosts]

    @property
    def where(self) -> str:
        host = f"[{self.hostname}]" if ":" in self.hostname else self.hostname
        return f"{self.user}@{host}:{self.port}"

    @property
    def known_hosts_name(self) -> str:
        """How OpenSSH (and paramiko) name this host in known_hosts."""
        return self.hostname if self.port == 22 else f"[{self.hostname}]:{self.port}"


# --------------------------------------------------------------------------- ssh_config


_KEYWORD_RE = re.compile(r"(\w+)(?:\s*=\s*|\s+)(.+)")
_NO_PARAM = {"all", "canonical", "final"}  # Match criteria that take no argument


def expand_includes(path: str) -> str:
    """The ssh_config at ``path`` as one text, every ``Include`` replaced by the files it
    names, as OpenSSH reads them (paramiko ignores Include).

    Include takes globs and ``~``; relative paths are in ~/.ssh (in /etc/ssh for a file under
    /etc/ssh). Inside a Host or Match block the included lines apply within that block, and
    a Host or Match of the included file applies only where both match (a ``Match`` with the
    enclosing criteria added); after the include the enclosing block is reopened. Nesting
    deeper than 16 files is a ConfigError.

    Example: ``Host nat-*`` / ``Include nat.conf`` with ~/.ssh/nat.conf holding
    ``User ec2-user`` / ``Host nat-b`` / ``Port 2200`` becomes::

        Host nat-*
        User ec2-user
        Match originalhost 'nat-*' originalhost nat-b
        Port 2200
        Host nat-*
    """
    system = os.path.abspath(path).startswith("/etc/ssh/")
    base = "/etc/ssh" if system else os.path.expanduser("~/.ssh")
    out: list[str] = []
    _expand(path, Path(path).read_text(encoding="utf-8", errors="replace"), base, None, 0, out)
    return "\n".join(out) + "\n"


def _expand(
    path: str, text: str, base: str, outer: Optional[list[str]], depth: int, out: list[str]
) -> None:
    """Append the lines of ``text`` (file ``path``) to ``out`` inside the Match criteria
    ``outer`` (None: at the top level)."""
    criteria, header = outer, ("Host *" if outer is None else _match_line(outer))
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        found = _KEYWORD_RE.match(line) if line and not line.startswith("#") else None
        if found is None:
            out.append(line)
            continue
        keyword, value = found.group(1).lower(), found.group(2)
        if keyword not in ("host", "match", "include"):
            out.append(line)
            continue
        try:
            words = shlex.split(value)
        except ValueError:
            raise ConfigError(f"{path} line {lineno}: unbalanced quotes: {line}") from None
        if keyword == "host":
            own = ["originalhost", ",".join(words)]
            criteria = own if outer is None else _join_criteria(outer, own)
            header = line if outer is None else _match_line(criteria)
            out.append(header)
        elif keyword == "match":
            criteria = words if outer is None else _join_criteria(outer, words)
            header = line if outer is None else _match_line(criteria)
            out.append(header)
        else:
            before = len(out)
            for included in _include_files(words, base):
                if depth + 1 > MAX_INCLUDE_DEPTH:
                    raise ConfigError(
                        f"{path} line {lineno}: Include nested more than {MAX_INCLUDE_DEPTH} "
                        f"files deep (at {included}): does a file include itself?"
                    )
                try:
                    inner = Path(included).read_text(encoding="utf-8", errors="replace")
                except OSError as exc:
                    log.warning("cannot read %s (Include in %s): %s", included, path, exc)
                    continue
                _expand(included, inner, base, criteria, depth + 1, out)
            if any(_is_header(line) for line in out[before:]):
                out.append(header)  # back in the enclosing block


def _include_files(words: list[str], base: str) -> list[str]:
    """The files an ``Include`` names: ``~`` expanded, relative to ``base``, globs sorted."""
    files: list[str] = []
    for word in words:
        pattern = os.path.expanduser(word)
        if not os.path.isabs(pattern):
            pattern = os.path.join(base, pattern)
        files += [p for p in sorted(glob.glob(pattern)) if os.path.isfile(p)]
    return files


def _join_criteria(outer: list[str], inner: list[str]) -> list[str]:
    """Both sets of Match criteria (``all`` dropped: it would match before the others)."""
    joined: list[str] = []
    for tokens in (outer, inner):
        i = 0
        while i < len(tokens):
            width = 1 if tokens[i].lstrip("!").lower() in _NO_PARAM else 2
            if tokens[i].lower() != "all":
                joined += tokens[i : i + width]
            i += width
    return joined or ["all"]


def _match_line(criteria: list[str]) -> str:
    return "Match " + " ".join(shlex.quote(word) for word in criteria)


def _is_header(line: str) -> bool:
    found = _KEYWORD_RE.match(line)
    return found is not None and found.group(1).lower() in ("host", "match")


# --------------------------------------------------------------------------- host keys


@dataclass(frozen=True)
class KnownHost:
    """One usable known_hosts line: its host patterns, key, and where it is."""

    patterns: tuple[str, ...]
    key: paramiko.PKey
    path: str
    lineno: int
    revoked: bool = False

    def matches(self, name: str) -> bool:
        """OpenSSH's rule: no negated pattern matches ``name`` and some pattern does."""
        matched = False
        for pattern in self.patterns:
            if pattern.startswith("|1|"):
                matched = matched or _hashed_matches(pattern, name)
            elif pattern.startswith("!"):
                if _glob_matches(pattern[1:], name):
                    return False
            elif _glob_matches(pattern, name):
                matched = True
        return matched

    def holds(self, key: paramiko.PKey) -> bool:
        return self.key.get_name() == key.get_name() and self.key.asbytes() == key.asbytes()


def _glob_matches(pattern: str, name: str) -> bool:
    """OpenSSH host patterns: ``*`` and ``?`` only (``[host]:port`` is literal), any case."""
    regex = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern)
    return re.fullmatch(regex, name, re.IGNORECASE | re.DOTALL) is not None


def _hash_parts(pattern: str) -> Optional[tuple[bytes, bytes]]:
    """(salt, digest) of a ``|1|salt|digest`` hashed name, or None if it is not one."""
    parts = pattern.split("|")
    if len(parts) != 4 or parts[1] != "1":
        return None
    try:
        salt, digest = (binascii.a2b_base64(p) for p in parts[2:])
    except binascii.Error:
        return None
    return (salt, digest) if len(salt) == len(digest) == 20 else None


def _hashed_matches(pattern: str, name: str) -> bool:
    parts = _hash_parts(pattern)
    if parts is None:
        return False
    mac = hmac.new(parts[0], name.lower().encode("utf-8"), hashlib.sha1).digest()
    return hmac.compare_digest(mac, parts[1])


_BAD_KEY = (InvalidHostKey, paramiko.SSHException, ValueError, TypeError, IndexError)


def parse_known_hosts(text: str, path: str) -> tuple[list[KnownHost], list[str]]:
    """The entries of one known_hosts file and the warnings for the lines skipped.

    As OpenSSH: ``@revoked`` lines are kept (marked ``revoked``); ``@cert-authority`` lines
    are skipped (natfleet does not check host certificates) with one warning for the file;
    a corrupt line (too few fields, bad base64, unknown key type, a bad hashed name) is
    skipped with a warning naming the file and line, and never affects the other lines.

    >>> entries, warnings = parse_known_hosts(
    ...     "# lab\\n198.51.100.7 ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIJgisAcjaOTR/prSOpT7kn"
    ...     "SiqwZk4q93AQps8/AI2bXI\\n198.51.100.8 ssh-ed25519 AAAA!\\n", "known_hosts")
    >>> [(e.patterns, e.lineno) for e in entries], warnings
    ([(('198.51.100.7',), 2)], ['known_hosts line 3: bad key data, line skipped'])
    """
    entries: list[KnownHost] = []
    warnings: list[str] = []
    authorities: list[int] = []
    for lineno, raw in enumerate(text.splitlines(), 1):
        fields = raw.split()
        if not fields or fields[0].startswith("#"):
            continue
        marker = fields.pop(0) if fields[0].startswith("@") else ""
        if marker == "@cert-authority":
            authorities.append(lineno)
            continue
        key, problem = _line_key(marker, fields)
        if key is None:
            warnings.append(f"{path} line {lineno}: {problem}, line skipped")
            continue
        patterns = tuple(fields[0].split(","))
        entries.append(KnownHost(patterns, key, path, lineno, marker == "@revoked"))
    if authorities:
        lines = ", ".join(str(n) for n in authorities[:5]) + (", ..." if authorities[5:] else "")
        warnings.append(
            f"{path}: @cert-authority line(s) {lines} skipped: natfleet does not check host "
            "certificates (a box known only by a certificate fails as an unknown host key)"
        )
    return entries, warnings


def _line_key(marker: str, fields: list[str]) -> tuple[Optional[paramiko.PKey], str]:
    """(key, "") for a usable known_hosts line (its marker taken off), else (None, why)."""
    if marker not in ("", "@revoked"):
        return None, f"unknown marker {marker!r}"
    if len(fields) < 3:
        return None, "too few fields (want: hosts key-type base64-key)"
    hashed = [p for p in fields[0].split(",") if p.startswith("|")]
    if any(_hash_parts(p) is None for p in hashed):
        return None, "bad hashed host name"
    try:
        entry = HostKeyEntry.from_line(" ".join(fields[:3]))
    except _BAD_KEY:
        return None, "bad key data"
    if entry is None:
        return None, f"unknown key type {fields[1]!r}"
    if entry.key.asbytes() != binascii.a2b_base64(fields[2]):  # e.g. a truncated key
        return None, "bad key data"
    return entry.key, ""


class KnownHostsFiles:
    """known_hosts files read as OpenSSH reads them, each parsed again only when it changes;
    every warning about a file is logged once. Safe for many threads.

    >>> KnownHostsFiles().lookup(["/etc/ssh/ssh_known_hosts"], "[198.51.100.7]:2222")
    []
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._parsed: dict[str, tuple[tuple[int, int, int], list[KnownHost]]] = {}
        self._warned: set[str] = set()

    def entries(self, path: str) -> list[KnownHost]:
        try:
            info = os.stat(path)
        except OSError:
            return []
        if not stat.S_ISREG(info.st_mode):
            return []
        version = (info.st_ino, info.st_size, info.st_mtime_ns)
        with self._lock:
            cached = self._parsed.get(path)
        if cached and cached[0] == version:
            return cached[1]
        try:
            text = Path(path).read_text(encoding="utf-8", errors="replace")
        except OSError as exc:
            self._warn(f"cannot read {path}: {exc.strerror or exc}")
            return []
        entries, warnings = parse_known_hosts(text, path)
        with self._lock:
            self._parsed[path] = (version, entries)
        for warning in warnings:
            self._warn(warning)
        return entries

    def lookup(self, paths: list[str], name: str) -> list[KnownHost]:
        """Every entry of ``paths`` for host ``name`` (``host`` or ``[host]:port``)."""
        return [entry for path in paths for entry in self.entries(path) if entry.matches(name)]

    def _warn(self, message: str) -> None:
        with self._lock:
            if message in self._warned:
                return
            self._warned.add(message)
        log.warning("%s", message)


class _HostKeyPolicy(paramiko.MissingHostKeyPolicy):
    """Called when no usable key is known for the host: a revoked key is refused; otherwise
    OpenSSH ``StrictHostKeyChecking yes`` (refuse) or ``accept-new`` (record it)."""

    def __init__(self, hop: _Hop, known: KnownHostsFiles, revoked: list[KnownHost]) -> None:
        self.hop = hop
        self.known = known
        self.revoked = revoked

    def missing_host_key(self, client: Any, hostname: str, key: paramiko.PKey) -> None:
        _refuse_revoked(self.hop, key, self.revoked)
        if not self.hop.accept_new:
            files = self.hop.known_hosts_files
            raise target_error(
                "hostkey",
                f"unknown host key for {self.hop.where} ({key.get_name()} {key.fingerprint}): "
                f"it is not in {' or '.join(files)}. Check the fingerprint with the box's "
                f"owner (or the instance's console output), add it to {files[0]}, or pass "
                "--accept-new-host-keys to record it on first use",
            )
        self._accept_new(client, hostname, key)

    def _accept_new(self, client: Any, hostname: str, key: paramiko.PKey) -> None:
        path = self.hop.known_hosts
        if os.path.exists(path) and not os.path.isfile(path):
            # e.g. UserKnownHostsFile /dev/null: nothing would be recorded, so every key,
            # a changed one included, would pass: refuse instead
            raise target_error(
                "hostkey",
                f"unknown host key for {self.hop.where} ({key.get_name()} {key.fingerprint}) "
                f"and {path} is not a file natfleet can record it in: give a known_hosts "
                "file with --known-hosts",
            )
        with _known_hosts_lock:  # another thread may have just recorded this host
            entries = self.known.lookup(self.hop.known_hosts_files, self.hop.known_hosts_name)
            _refuse_revoked(self.hop, key, [e for e in entries if e.revoked])
            valid = [e for e in entries if not e.revoked]
            if valid and not any(e.holds(key) for e in valid):
                same = [e for e in valid if e.key.get_name() == key.get_name()]
                raise _changed_key_error(self.hop, key, (same or valid)[0])
            if not valid:
                _append_line(path, f"{hostname} {key.get_name()} {key.get_base64()}\n")
                log.warning(
                    "recorded new host key for %s (%s %s) in %s",
                    self.hop.where,
                    key.get_name(),
                    key.fingerprint,
                    path,
                )
        client.get_host_keys().add(hostname, key.get_name(), key)


def _append_line(path: str, line: str) -> None:
    """Append ``line`` to ``path`` (0600, created with its folder), on a line of its own
    even when the file does not end with a newline."""
    Path(path).parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        size = os.fstat(fd).st_size
        if size and os.pread(fd, 1, size - 1) != b"\n":
            line = "\n" + line
        os.write(fd, line.encode("ascii"))
    finally:
        os.close(fd)


def _refuse_revoked(hop: _Hop, key: paramiko.PKey, revoked: list[KnownHost]) -> None:
    for entry in revoked:
        if entry.holds(key):
            raise target_error(
                "hostkey",
                f"host key for {hop.where} ({key.get_name()} {key.fingerprint}) is REVOKED "
                f"in {entry.path} line {entry.lineno}: natfleet refuses it. The box may be "
                "compromised or still using a retired key: ask its owner for its current key",
            )


def _changed_key_error(hop: _Hop, got: paramiko.PKey, expected: KnownHost) -> TargetError:
    path = expected.path
    return target_error(
        "hostkey",
        f"host key for {hop.where} has CHANGED: the box offers {got.get_name()} "
        f"{got.fingerprint} but {path} line {expected.lineno} has {expected.key.fingerprint}. "
        "Someone may be intercepting the connection, or the box was rebuilt. If you know it "
        f"was rebuilt, remove the old key with: ssh-keygen -f '{path}' -R "
        f"'{hop.known_hosts_name}'",
    )


# --------------------------------------------------------------------------- one run


class _Session:
    """The sockets, clients and channel of one exec, closed together: when exec returns or
    raises, and by a watchdog as soon as the deadline passes (closing them ends any paramiko
    wait: banner, key exchange, auth, channel open, an exec request never answered)."""

    def __init__(self, deadline: Deadline) -> None:
        self.deadline = deadline
        self.socks: list[Any] = []
        self.clients: list[Any] = []
        self.channel: Any = None
        self.expired = False
        self._timer = threading.Timer(max(0.0, deadline.left()), self._expire)
        self._timer.daemon = True

    def __enter__(self) -> _Session:
        self._timer.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._timer.cancel()
        self.close()

    def _expire(self) -> None:
        self.expired = True
        self.close()

    def close(self) -> None:
        if self.channel is not None:
            with suppress(Exception):
                self.channel.close()
        for client in reversed(self.clients):
            with suppress(Exception):
                client.close()
        for sock in self.socks:
            if isinstance(sock, socket.socket):
                with suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)  # wakes a thread blocked reading it
            with suppress(Exception):
                sock.close()


def _label(target: Target, hop: _Hop, where: str) -> str:
    name = target.label
    return name if name == hop.hostname else f"{name} ({where})"


# --------------------------------------------------------------------------- connector


class SshConnector:
    """Runs constant commands on SSH targets; one instance serves many threads.

    ``client_factory`` makes the paramiko-like client and ``tcp_connect`` opens the TCP
    connection to a hop that has no bastion or ProxyCommand (tests hand in fakes).

    >>> SshConnector(SshOptions()).exec(Target(name="nat-a", host="nat-a"), REMOTE_COMMAND,
    ...                                 stdin, reader.feed, Deadline(20)).status
    0
    """

    def __init__(
        self,
        options: Optional[SshOptions] = None,
        client_factory: Callable[[], Any] = paramiko.SSHClient,
        tcp_connect: TcpConnect = socket.create_connection,
    ) -> None:
        self.options = options or SshOptions()
        self.client_factory = client_factory
        self.tcp_connect = tcp_connect
        self.known_hosts = KnownHostsFiles()
        # paramiko.transport logs each failed handshake as an ERROR with a traceback: the same
        # failure the TargetError reports, so it is shown only with --debug.
        debug = self.options.debug
        logging.getLogger("paramiko").setLevel(logging.DEBUG if debug else logging.WARNING)
        logging.getLogger("paramiko.transport").setLevel(
            logging.DEBUG if debug else logging.CRITICAL
        )
        self._config = self._load_config(self.options.config_path())

    @staticmethod
    def _load_config(path: Optional[str]) -> Optional[paramiko.SSHConfig]:
        if not path:
            return None
        try:
            return paramiko.SSHConfig.from_text(expand_includes(path))
        except OSError as exc:
            raise ConfigError(f"cannot read SSH config {path}: {exc.strerror or exc}") from None
        except paramiko.ssh_exception.ConfigParseError as exc:
            raise ConfigError(f"SSH config {path} (with its Includes): {exc}") from None

    # ---- resolving hosts

    def _resolve(self, alias: str, user: Optional[str], port: Optional[int]) -> _Hop:
        """Apply ~/.ssh/config to one host; explicit user/port win over the file."""
        conf: dict[str, Any] = dict(self._config.lookup(alias)) if self._config else {}
        key_files = [os.path.expanduser(p) for p in self.options.identity_files]
        key_files += [os.path.expanduser(p) for p in conf.get("identityfile", [])]
        proxy_command = conf.get("proxycommand")
        # ssh_config may ask for accept-new; "no"/"off" is never honoured (natfleet does not
        # trust unknown keys unless told with --accept-new-host-keys), and a changed key is
        # always refused.
        strict = str(conf.get("stricthostkeychecking", "yes")).lower()
        user_files = (conf.get("userknownhostsfile") or "").split()
        global_files = (conf.get("globalknownhostsfile") or "").split()
        try:
            config_port = int(conf.get("port", 22))
        except ValueError:
            raise ConfigError(f"SSH config: Port for {alias} is not a number") from None
        return _Hop(
            alias=alias,
            hostname=conf.get("hostname", alias),
            port=port or config_port,
            user=user or conf.get("user") or getpass.getuser(),
            known_hosts=self.options.known_hosts_path(user_files[0] if user_files else None),
            system_known_hosts=os.path.expanduser(
                global_files[0] if global_files else self.options.system_known_hosts
            ),
            accept_new=self.options.accept_new_host_keys or strict == "accept-new",
            key_files=[p for p in dict.fromkeys(key_files) if os.path.isfile(p)],
            identities_only=str(conf.get("identitiesonly", "no")).lower() == "yes",
            proxy_command=None if str(proxy_command).lower() == "none" else proxy_command,
        )

    def _chain(self, target: Target) -> list[_Hop]:
        """The hops to the target: bastions first (``--proxy-jump`` or ProxyJump), then it."""
        final = self._resolve(target.host, target.user or self.options.user, target.port)
        jump = self.options.proxy_jump
        if not jump and self._config:
            jump = self._config.lookup(target.host).get("proxyjump")
        hops = []
        if jump and jump.lower() != "none":
            for spec in jump.split(","):
                user, host, port = split_host_spec(spec, where="ProxyJump")
                hops.append(self._resolve(host, user, port))
            final.proxy_command = None  # OpenSSH: ProxyJump wins over ProxyCommand
        return [*hops, final]

    # ---- running

    def exec(
        self,
        target: Target,
        command: str,
        stdin: bytes,
        on_stdout: Callable[[bytes], None],
        deadline: Deadline,
        max_stderr: int = 65536,
        as_root: bool = True,
    ) -> ExecResult:
        """Run the constant ``command`` on ``target``, writing ``stdin`` and handing every
        stdout chunk to ``on_stdout`` as it arrives; all within ``deadline``.

        Raises TargetError (kind connect, auth, hostkey or timeout); whatever ``on_stdout``
        raises is raised unchanged, after the connection is closed at once.
        """
        if not target.host:
            raise target_error("connect", f"{target.label}: no address to connect to")
        hops = self._chain(target)
        hop = hops[-1]
        where = hop.where + (" (via bastion)" if len(hops) > 1 else "")
        sudo = SUDO_PREFIX if as_root and hop.user != "root" else ""
        started = time.monotonic()
        # the agent's program and its answers are zlib streams already: SSH compression
        # would only burn CPU twice (it stays on for the raw fallback's plain text)
        compress = command != REMOTE_COMMAND
        with _Session(deadline) as session:
            client = self._connect(hops, session, compress)
            run = _Run(session, _label(target, hop, where), max_stderr)
            status = run.execute(client, sudo + command, stdin, on_stdout)
        received = run.stdout_bytes + run.stderr_bytes
        log.debug("%s: %d bytes in %.2f s", where, received, time.monotonic() - started)
        return ExecResult(status, bytes(run.stderr), received, where, hop.user)

    # ---- connecting

    def _connect(self, hops: list[_Hop], session: _Session, compress: bool = True) -> Any:
        """Connect every hop (bastions first); the target's client. Only the target's own
        connection may be compressed: a bastion carries the target's encrypted stream."""
        client: Any = None
        for i, hop in enumerate(hops):
            via = f" (via {hops[i - 1].where})" if i else ""
            if session.expired:
                raise self._no_answer(f"{hop.where}{via}", session, 0)
            sock = self._open_sock(hop, hops[i - 1] if i else None, client, session, via)
            last = i == len(hops) - 1
            client = self._connect_hop(hop, sock, session, via, compress and last)
        return client

    def _open_sock(
        self, hop: _Hop, bastion: Optional[_Hop], via_client: Any, session: _Session, via: str
    ) -> Any:
        """The stream to ``hop``: a bastion's direct-tcpip channel, a ProxyCommand or TCP."""
        deadline = session.deadline
        limit = self._limit(deadline)
        try:
            if bastion is not None:
                sock = via_client.get_transport().open_channel(
                    "direct-tcpip",
                    (hop.hostname, hop.port),
                    ("127.0.0.1", 0),
                    timeout=deadline.bound(self.options.connect_timeout),
                )
            elif hop.proxy_command:
                # paramiko runs it with shlex.split (no shell); host names are validated.
                sock = _ProxyCommand(hop.proxy_command)
            else:
                sock = self.tcp_connect(
                    (hop.hostname, hop.port), deadline.bound(self.options.connect_timeout)
                )
        except paramiko.ChannelException as exc:
            raise target_error(
                "connect",
                f"bastion {bastion.where if bastion else ''} cannot reach {hop.where}: "
                f"{exc.text or 'refused'} (SSH channel failure {exc.code})",
            ) from None
        except Exception as exc:  # noqa: BLE001 - each case is named by _stream_error
            raise self._stream_error(exc, hop, bastion, session, limit, via) from None
        session.socks.append(sock)
        return sock

    def _stream_error(
        self,
        exc: Exception,
        hop: _Hop,
        bastion: Optional[_Hop],
        session: _Session,
        limit: float,
        via: str,
    ) -> TargetError:
        where = f"{hop.where}{via}"
        if (
            session.expired
            or isinstance(exc, (socket.timeout, TimeoutError))
            or (isinstance(exc, paramiko.SSHException) and "timeout" in str(exc).lower())
        ):
            if bastion is not None:
                return target_error(
                    "timeout",
                    f"bastion {bastion.where} did not open a channel to {hop.where} within "
                    f"{self._seconds(session, limit):g} s",
                )
            return self._no_answer(where, session, limit)
        if bastion is not None:
            return target_error(
                "connect", f"bastion {bastion.where} cannot reach {hop.where}: {_reason(exc)}"
            )
        if hop.proxy_command and isinstance(exc, (OSError, paramiko.SSHException)):
            return target_error(
                "connect", f"ProxyCommand for {hop.where} did not start: {_reason(exc)}"
            )
        if isinstance(exc, socket.gaierror):
            return target_error(
                "connect", f"cannot resolve {hop.hostname!r}{via}: {exc.strerror or exc}"
            )
        return _tcp_error(exc, where)

    def _connect_hop(
        self, hop: _Hop, sock: Any, session: _Session, via: str, compress: bool = True
    ) -> Any:
        client = self.client_factory()
        session.clients.append(client)  # closed with the session, on any failure too
        known = self.known_hosts.lookup(hop.known_hosts_files, hop.known_hosts_name)
        revoked = [e for e in known if e.revoked]
        first: dict[str, KnownHost] = {}  # paramiko keeps one key per type: the first line's
        for entry in known:
            if not entry.revoked and not any(r.holds(entry.key) for r in revoked):
                first.setdefault(entry.key.get_name(), entry)
        host_keys = client.get_host_keys()
        for entry in first.values():
            host_keys.add(hop.known_hosts_name, entry.key.get_name(), entry.key)
        client.set_missing_host_key_policy(_HostKeyPolicy(hop, self.known_hosts, revoked))
        deadline = session.deadline
        limit = self._limit(deadline)
        step = deadline.bound(self.options.connect_timeout)
        started = time.monotonic()
        try:
            client.connect(
                hostname=hop.hostname,
                port=hop.port,
                username=hop.user,
                key_filename=hop.key_files or None,
                look_for_keys=not hop.key_files,
                allow_agent=not (hop.identities_only and hop.key_files),
                compress=compress,
                sock=sock,
                timeout=step,
                banner_timeout=step,
                auth_timeout=step,
                channel_timeout=step,
            )
        except paramiko.BadHostKeyException as exc:
            _refuse_revoked(hop, exc.key, revoked)
            expected = [e for e in first.values() if e.holds(exc.expected_key)]
            shown = expected[0] if expected else next(iter(first.values()))
            raise _changed_key_error(hop, exc.key, shown) from None
        except TargetError:
            raise
        except Exception as exc:  # noqa: BLE001 - each case is named by _handshake_error
            slow = time.monotonic() - started >= step * 0.9
            raise self._handshake_error(exc, hop, client, session, limit, via, slow) from None
        if session.expired:
            raise self._no_answer(f"{hop.where}{via}", session, limit)
        return client

    def _handshake_error(
        self,
        exc: Exception,
        hop: _Hop,
        client: Any,
        session: _Session,
        limit: float,
        via: str,
        slow: bool,
    ) -> TargetError:
        """The TargetError for a failed SSH handshake (banner, key exchange, auth)."""
        where = f"{hop.where}{via}"
        text = str(exc)
        lowered = text.lower()
        if isinstance(exc, _ProxyExited):
            return target_error("connect", proxy_exit_message(where, exc.status, exc.stderr))
        if isinstance(exc, paramiko.PasswordRequiredException):
            return target_error(
                "auth",
                f"cannot log in to {where}: the key file is passphrase-protected; "
                "add it to ssh-agent (ssh-add KEYFILE) and try again",
            )
        authenticating = _kex_done(client)
        if (isinstance(exc, paramiko.AuthenticationException) and "timeout" in lowered) or (
            authenticating and session.expired
        ):
            return target_error(
                "timeout",
                f"{where} did not finish authentication within "
                f"{self._seconds(session, limit):g} s (the server or its login is slow)",
            )
        if isinstance(exc, (socket.timeout, TimeoutError)) or (
            not authenticating and (session.expired or slow)
        ):
            return self._no_answer(where, session, limit)
        if isinstance(exc, paramiko.AuthenticationException):
            return target_error("auth", self._auth_message(hop, where, exc))
        if isinstance(exc, paramiko.SSHException) and "banner" in lowered:
            return target_error(
                "connect", f"{where} did not answer as an SSH server: {_shown(text)}"
            )
        if isinstance(exc, paramiko.SSHException) and "protocol version" in lowered:
            return target_error(
                "connect", f"{where} did not answer as an SSH server: {_shown(text)}"
            )
        if isinstance(exc, paramiko.SSHException) and "authentic" in lowered:
            return target_error("auth", self._auth_message(hop, where, exc))
        if isinstance(exc, EOFError):
            return target_error(
                "connect", f"{where} closed the connection during the SSH handshake"
            )
        if isinstance(exc, paramiko.SSHException):
            return target_error("connect", f"SSH handshake with {where} failed: {_shown(text)}")
        return _tcp_error(exc, where)

    def _no_answer(self, where: str, session: _Session, limit: float) -> TargetError:
        return target_error(
            "timeout",
            f"no SSH answer from {where} within {self._seconds(session, limit):g} s "
            "(firewall, security group, or not an SSH server?)",
        )

    def _limit(self, deadline: Deadline) -> float:
        """The limit a connect step stops at: the connect timeout, or the deadline's."""
        timeout = self.options.connect_timeout
        return timeout if timeout < deadline.left() else deadline.seconds

    @staticmethod
    def _seconds(session: _Session, limit: float) -> float:
        return session.deadline.seconds if session.expired else limit

    @staticmethod
    def _auth_message(hop: _Hop, where: str, exc: Exception) -> str:
        keys = ", ".join(hop.key_files) or "ssh-agent and ~/.ssh/id_*"
        return (
            f"authentication failed for {where} (tried {keys}): {_shown(str(exc))}. Give the "
            "right login with --ssh-user or USER@HOST, a key with -i, or load it into ssh-agent"
        )


class _ProxyExited(paramiko.ProxyCommandFailure):
    """The ProxyCommand ended (its stdout closed) before the SSH connection was made."""

    def __init__(self, command: str, status: Optional[int], stderr: str) -> None:
        super().__init__(command, stderr or f"exit status {status}")
        self.status = status
        self.stderr = stderr


class _ProxyCommand(paramiko.ProxyCommand):
    """paramiko's ProxyCommand, but one whose command exits says so at once, with its stderr
    (paramiko's reads the closed pipe until the timeout)."""

    def recv(self, size: int) -> bytes:
        buffer = b""
        started = time.monotonic()
        out = self.process.stdout
        assert out is not None  # (paramiko opens every pipe)
        while len(buffer) < size:
            wait = None
            if self.timeout is not None:
                wait = self.timeout - (time.monotonic() - started)
                if wait <= 0:
                    if buffer:
                        return buffer
                    raise socket.timeout()
            if select.select([out], [], [], wait)[0]:
                data = os.read(out.fileno(), size - len(buffer))
                if not data:  # the command closed its stdout: it ended
                    if buffer:
                        return buffer
                    raise self._exited()
                buffer += data
        return buffer

    def send(self, content: Any) -> int:
        try:
            self.process.stdin.write(content)  # type: ignore[union-attr]
        except OSError:  # (a broken pipe: the command ended)
            raise self._exited() from None
        return len(content)

    def close(self) -> None:
        with suppress(ProcessLookupError):  # (it may have ended, and been waited for)
            super().close()

    def _exited(self) -> _ProxyExited:
        try:
            status: Optional[int] = self.process.wait(timeout=1.0)
        except subprocess.TimeoutExpired:
            status = None
        err = b""
        if self.process.stderr is not None and status is not None:
            err = self.process.stderr.read(8192) or b""
        return _ProxyExited(" ".join(self.cmd), status, err.decode("utf-8", "replace").strip())


# What `aws ssm start-session` (SSH through Session Manager) says when it cannot connect.
_SESSION_MANAGER = (
    (
        "SessionManagerPlugin is not found",
        "the AWS CLI's Session Manager plugin is not installed on this machine: install "
        "session-manager-plugin (see 'Install the Session Manager plugin for the AWS CLI')",
    ),
    (
        "TargetNotConnected",
        "Session Manager says the instance is not connected: it is not a managed instance "
        "(it needs the SSM agent running, an instance profile with AmazonSSMManagedInstance"
        "Core, and a way to the ssm and ssmmessages endpoints), or it is stopped",
    ),
    (
        "StartSession",
        "Session Manager refused the session (the caller needs ssm:StartSession on the "
        "instance and on the AWS-StartSSHSession document)",
    ),
)


def proxy_exit_message(where: str, status: Optional[int], stderr: str) -> str:
    """Why the ProxyCommand for ``where`` ended, said plainly for SSH through Session Manager.

    >>> proxy_exit_message("ec2-user@i-0abc:22", 255, "SessionManagerPlugin is not found.")[:70]
    "ProxyCommand for ec2-user@i-0abc:22 ended (exit 255): the AWS CLI's Se"
    """
    lines = stderr.strip().splitlines()
    said = _shown(lines[-1]) if lines else "no message"
    head = f"ProxyCommand for {where} ended (exit {status if status is not None else '?'})"
    for marker, meaning in _SESSION_MANAGER:
        if marker in stderr:
            return f"{head}: {meaning} ({said})"
    return f"{head} before the SSH connection was made: {said}"


def _kex_done(client: Any) -> bool:
    """The key exchange finished (the host key is known): a failure now is in auth."""
    transport = client.get_transport()
    return transport is not None and getattr(transport, "host_key", None) is not None


def _tcp_error(exc: BaseException, where: str) -> TargetError:
    """The TargetError for a failed TCP connection (or any other failure, named)."""
    codes = {getattr(exc, "errno", None)}
    codes |= {getattr(e, "errno", None) for e in getattr(exc, "errors", {}).values()}
    if errno.ECONNREFUSED in codes:
        return target_error(
            "connect", f"connection refused by {where}: is sshd running and the port right?"
        )
    if codes & {errno.EHOSTUNREACH, errno.ENETUNREACH}:
        what = "network" if errno.ENETUNREACH in codes else "host"
        return target_error(
            "connect",
            f"cannot connect to {where}: no route to {what} (is the box running, and the "
            "address, VPN or route right?)",
        )
    return target_error("connect", f"cannot connect to {where}: {_reason(exc)}")


def _reason(exc: BaseException) -> str:
    """What happened, named: the OS reason, else the exception's text and type."""
    strerror = getattr(exc, "strerror", None)
    if strerror:
        return str(strerror)
    text = _shown(str(exc))
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _shown(text: str) -> str:
    return text if len(text) <= _SHOWN else text[:_SHOWN] + "..."


class _Run:
    """Runs one command on a connected client: stdin written while stdout streams to the
    callback and the tail of stderr is kept, within the session's deadline."""

    def __init__(self, session: _Session, label: str, max_stderr: int) -> None:
        self.session = session
        self.label = label
        self.max_stderr = max_stderr
        self.stderr = bytearray()
        self.stdout_bytes = 0
        self.stderr_bytes = 0
        self.callback_error: Optional[BaseException] = None

    def timed_out(self) -> TargetError:
        hint = ""
        if self.stdout_bytes:
            hint = (
                f" (it was still sending: {self.stdout_bytes:,} bytes so far; raise --timeout "
                "for a very large table)"
            )
        return target_error(
            "timeout",
            f"{self.label} did not finish within {self.session.deadline.seconds:g} s" + hint,
        )

    def execute(
        self, client: Any, command: str, stdin: bytes, on_stdout: Callable[[bytes], None]
    ) -> Optional[int]:
        """The exit status (None if the channel closed without one)."""
        deadline = self.session.deadline
        try:
            channel = client.get_transport().open_session(timeout=max(0.1, deadline.left()))
            self.session.channel = channel
            channel.settimeout(max(0.1, deadline.left()))
            channel.exec_command(command)  # waits for the answer: the watchdog bounds it
        except Exception as exc:  # noqa: BLE001 - every failure to start is named
            if self.session.expired or deadline.expired() or "timeout" in str(exc).lower():
                raise self.timed_out() from None
            raise target_error(
                "connect", f"{self.label}: cannot start the command: {_reason(exc)}"
            ) from None
        try:
            return self._pump(channel, stdin, on_stdout)
        except (OSError, EOFError, paramiko.SSHException) as exc:
            if exc is self.callback_error:
                raise  # from on_stdout: unchanged
            if self.session.expired or deadline.expired():
                raise self.timed_out() from None
            raise target_error(
                "connect", f"{self.label}: the connection broke: {_reason(exc)}"
            ) from None

    def _pump(
        self, channel: Any, stdin: bytes, on_stdout: Callable[[bytes], None]
    ) -> Optional[int]:
        pending = memoryview(stdin)
        if not pending:
            channel.shutdown_write()
        while True:
            busy = False
            if pending and channel.send_ready():
                try:
                    sent = channel.send(pending[:_CHUNK].tobytes())
                except (OSError, EOFError):  # the command exited without reading it all
                    sent = len(pending)
                pending = pending[sent:]
                if not pending:
                    channel.shutdown_write()
                busy = True
            if channel.recv_ready():  # one chunk a turn: the deadline is checked between
                chunk = channel.recv(_CHUNK)
                self.stdout_bytes += len(chunk)
                try:
                    on_stdout(chunk)
                except BaseException as exc:
                    self.callback_error = exc
                    raise
                busy = True
            if channel.recv_stderr_ready():
                self._keep_stderr(channel.recv_stderr(_CHUNK))
                busy = True
            if (
                channel.exit_status_ready()
                # sshd may send the exit status before the last of the output: wait for EOF
                and (channel.eof_received or channel.closed)
                and not channel.recv_ready()
                and not channel.recv_stderr_ready()
            ):
                if self.session.expired:  # closed by the watchdog, not by the command
                    raise self.timed_out()
                status = channel.recv_exit_status()
                return status if status >= 0 else None
            if self.session.deadline.expired() or self.session.expired:
                raise self.timed_out()
            if not busy:
                time.sleep(_POLL)

    def _keep_stderr(self, chunk: bytes) -> None:
        self.stderr_bytes += len(chunk)
        self.stderr += chunk
        if len(self.stderr) > self.max_stderr:
            del self.stderr[: len(self.stderr) - self.max_stderr]
