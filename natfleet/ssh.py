"""Run the natfleet agent on a box over SSH: the only module that imports paramiko.

The remote command is a constant (:data:`REMOTE_COMMAND`, from docs/json.md), prefixed with
the constant ``sudo -n `` when the login user is not root; the agent's source and the request
travel on stdin. No host name, tag, user string or request content is ever put into a command.
Boxes without python3 get the constant ``agent.RAW_COMMAND`` instead and their dump is parsed
here with the same agent code.

Honoured: ``~/.ssh/config`` (HostName, User, Port, IdentityFile, IdentitiesOnly, ProxyJump,
ProxyCommand), ssh-agent, ``-i`` key files, a bastion (``--proxy-jump``), known_hosts with
strict checking (OpenSSH ``accept-new`` on request), compression, connect and command timeouts.

Example:
    >>> connector = SshConnector(SshOptions(known_hosts="/tmp/nflab/known_hosts"))
    >>> answer, nbytes = connector.run_agent(Target(name="nat-a", host="198.19.255.10"),
    ...                                      {"mode": "info"})
    >>> answer["hostname"]
    'nflab-box0'
"""

from __future__ import annotations

import fnmatch
import getpass
import json
import logging
import os
import socket
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import paramiko

from natfleet import agent
from natfleet.errors import ConfigError, TargetError
from natfleet.models import Target
from natfleet.targets import split_host_spec

log = logging.getLogger(__name__)

# -I: no PYTHON* variables, no user site; -S: no site module (the agent is stdlib only, and
# this saves most of the interpreter's start-up on a box)
REMOTE_COMMAND = (
    "python3 -I -S -c 'import sys;n=int(sys.stdin.buffer.readline());"
    'exec(compile(sys.stdin.buffer.read(n),"natfleet-agent","exec"))\''
)
SUDO_PREFIX = "sudo -n "
SYSTEM_KNOWN_HOSTS = "/etc/ssh/ssh_known_hosts"
RAW_WARNING = (
    "executor: raw (python3 not found on the box: the table was read with a shell command "
    "and parsed by natfleet)"
)
_POLL = 0.005  # seconds between polls of an idle channel
_CHUNK = 1 << 16
_known_hosts_lock = threading.Lock()


def target_error(kind: str, message: str) -> TargetError:
    """A TargetError carrying ``kind`` (connect, auth, hostkey, sudo, timeout, agent, table).

    >>> target_error("timeout", "no answer from nat-a within 20 s").kind
    'timeout'
    """
    return TargetError(message, kind=kind)


@dataclass
class SshOptions:
    """How to reach boxes; unset paths fall back to the environment, then to ~/.ssh.

    ``ssh_config``: ``$NATFLEET_SSH_CONFIG``, else ``~/.ssh/config`` when it exists.
    ``known_hosts``: ``$NATFLEET_KNOWN_HOSTS``, else ``~/.ssh/known_hosts`` (written only with
    ``accept_new_host_keys``); ``/etc/ssh/ssh_known_hosts`` is also read, never written.

    >>> SshOptions(user="ec2-user", identity_files=("~/.ssh/nat.pem",), command_timeout=30)
    """

    ssh_config: Optional[str] = None
    user: Optional[str] = None
    identity_files: tuple[str, ...] = ()
    proxy_jump: Optional[str] = None
    known_hosts: Optional[str] = None
    system_known_hosts: str = SYSTEM_KNOWN_HOSTS
    accept_new_host_keys: bool = False
    connect_timeout: float = 10.0
    command_timeout: float = 20.0
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

    @property
    def max_seconds(self) -> float:
        """The longest one box can take: connecting plus running the agent."""
        return self.connect_timeout + self.command_timeout


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


class _Deadline:
    """Seconds left until a fixed point in time."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.end = time.monotonic() + seconds

    def left(self) -> float:
        return self.end - time.monotonic()

    def expired(self) -> bool:
        return self.left() <= 0


# --------------------------------------------------------------------------- host keys


def _host_matches(pattern: str, name: str) -> bool:
    """A known_hosts host field entry (plain, wildcard or ``|1|`` hashed) matches ``name``."""
    if pattern.startswith("|1|"):
        salt = pattern.split("|")[2] if pattern.count("|") >= 3 else ""
        return paramiko.HostKeys.hash_host(name, salt) == pattern
    return not pattern.startswith("!") and fnmatch.fnmatchcase(name, pattern)


def find_known_host(paths: list[str], name: str, key: paramiko.PKey) -> Optional[tuple[str, int]]:
    """(file, line number) of the known_hosts entry for ``name`` holding ``key``, or None.

    >>> find_known_host(["/root/.ssh/known_hosts"], "198.51.100.7", old_key)
    ('/root/.ssh/known_hosts', 3)
    """
    for path in paths:
        try:
            with open(path, encoding="utf-8", errors="replace") as handle:
                lines = handle.read().splitlines()
        except OSError:
            continue
        for lineno, line in enumerate(lines, 1):
            fields = line.split()
            if len(fields) < 3 or fields[0].startswith(("#", "@")):
                continue
            if not any(_host_matches(p, name) for p in fields[0].split(",")):
                continue
            if fields[1] == key.get_name() and fields[2] == key.get_base64():
                return path, lineno
    return None


class _RefuseUnknown(paramiko.MissingHostKeyPolicy):
    """OpenSSH ``StrictHostKeyChecking yes``: an unknown host key is an error."""

    def __init__(self, hop: _Hop) -> None:
        self.hop = hop

    def missing_host_key(self, client: Any, hostname: str, key: paramiko.PKey) -> None:
        files = self.hop.known_hosts_files
        raise target_error(
            "hostkey",
            f"unknown host key for {self.hop.where} ({key.get_name()} {key.fingerprint}): "
            f"it is not in {' or '.join(files)}. Check the fingerprint with the box's owner "
            f"(or the instance's console output), add it to {files[0]}, or pass "
            "--accept-new-host-keys to record it on first use",
        )


class _AcceptNew(_RefuseUnknown):
    """OpenSSH ``StrictHostKeyChecking accept-new``: record an unknown key, refuse a change."""

    def missing_host_key(self, client: Any, hostname: str, key: paramiko.PKey) -> None:
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
            current = paramiko.HostKeys(path) if os.path.isfile(path) else paramiko.HostKeys()
            known = current.lookup(hostname)
            if known is not None:
                old = known.get(key.get_name()) or next(iter(known.values()))
                if old != key:
                    raise _changed_key_error(self.hop, key, old)
            else:
                Path(path).parent.mkdir(mode=0o700, parents=True, exist_ok=True)
                fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
                with os.fdopen(fd, "a", encoding="ascii") as handle:
                    handle.write(f"{hostname} {key.get_name()} {key.get_base64()}\n")
                log.warning(
                    "recorded new host key for %s (%s %s) in %s",
                    self.hop.where,
                    key.get_name(),
                    key.fingerprint,
                    path,
                )
        client.get_host_keys().add(hostname, key.get_name(), key)


def _changed_key_error(hop: _Hop, got: paramiko.PKey, expected: paramiko.PKey) -> TargetError:
    files = hop.known_hosts_files
    found = find_known_host(files, hop.known_hosts_name, expected)
    path, lineno = found if found else (files[0], 0)
    where = f"{path} line {lineno}" if lineno else path
    return target_error(
        "hostkey",
        f"host key for {hop.where} has CHANGED: the box offers {got.get_name()} "
        f"{got.fingerprint} but {where} has {expected.fingerprint}. Someone may be "
        "intercepting the connection, or the box was rebuilt. If you know it was rebuilt, "
        f"remove the old key with: ssh-keygen -f '{path}' -R '{hop.known_hosts_name}'",
    )


# --------------------------------------------------------------------------- connector


class SshConnector:
    """Runs the agent on SSH targets; one instance serves many threads.

    ``client_factory`` makes the paramiko-like client (tests hand in a fake).

    >>> SshConnector(SshOptions()).run_agent(Target(name="nat-a", host="nat-a"),
    ...                                      {"mode": "summary"})[0]["ok"]
    True
    """

    def __init__(
        self,
        options: Optional[SshOptions] = None,
        client_factory: Callable[[], Any] = paramiko.SSHClient,
    ) -> None:
        self.options = options or SshOptions()
        self.client_factory = client_factory
        # paramiko.transport logs each failed handshake as an ERROR with a traceback: the same
        # failure the TargetError reports, so it is shown only with --debug.
        debug = self.options.debug
        logging.getLogger("paramiko").setLevel(logging.DEBUG if debug else logging.WARNING)
        logging.getLogger("paramiko.transport").setLevel(
            logging.DEBUG if debug else logging.CRITICAL
        )
        self._config = self._load_config(self.options.config_path())
        self._agent_source = Path(agent.__file__).read_bytes()

    @property
    def max_seconds(self) -> float:
        """The longest one target can take (the fleet waits a little longer at most)."""
        return self.options.max_seconds

    @staticmethod
    def _load_config(path: Optional[str]) -> Optional[paramiko.SSHConfig]:
        if not path:
            return None
        try:
            return paramiko.SSHConfig.from_path(path)
        except OSError as exc:
            raise ConfigError(f"cannot read SSH config {path}: {exc.strerror or exc}") from None

    # ---- resolving hosts

    def _resolve(self, alias: str, user: Optional[str], port: Optional[int]) -> _Hop:
        """Apply ~/.ssh/config to one host; explicit user/port win over the file."""
        conf: dict[str, Any] = self._config.lookup(alias) if self._config else {}
        key_files = [os.path.expanduser(p) for p in self.options.identity_files]
        key_files += [os.path.expanduser(p) for p in conf.get("identityfile", [])]
        proxy_command = conf.get("proxycommand")
        # ssh_config may ask for accept-new; "no"/"off" is never honoured (natfleet does not
        # trust unknown keys unless told with --accept-new-host-keys), and a changed key is
        # always refused.
        strict = str(conf.get("stricthostkeychecking", "yes")).lower()
        user_files = (conf.get("userknownhostsfile") or "").split()
        global_files = (conf.get("globalknownhostsfile") or "").split()
        return _Hop(
            alias=alias,
            hostname=conf.get("hostname", alias),
            port=port or int(conf.get("port", 22)),
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

    # ---- connecting

    def _connect_hop(self, hop: _Hop, sock: Any, deadline: _Deadline, via: str) -> Any:
        client = self.client_factory()
        known = hop.known_hosts
        if os.path.isfile(hop.system_known_hosts):
            client.load_system_host_keys(hop.system_known_hosts)
        if os.path.isfile(known):
            client.load_host_keys(known)
        policy = _AcceptNew if hop.accept_new else _RefuseUnknown
        client.set_missing_host_key_policy(policy(hop))
        left = max(0.1, min(deadline.left(), self.options.connect_timeout))
        started = time.monotonic()
        where = f"{hop.where}{via}"
        try:
            client.connect(
                hostname=hop.hostname,
                port=hop.port,
                username=hop.user,
                key_filename=hop.key_files or None,
                look_for_keys=not hop.key_files,
                allow_agent=not (hop.identities_only and hop.key_files),
                compress=True,
                sock=sock,
                timeout=left,
                banner_timeout=left,
                auth_timeout=left,
                channel_timeout=left,
            )
            return client
        except TargetError:
            client.close()
            raise
        except paramiko.BadHostKeyException as exc:
            client.close()
            raise _changed_key_error(hop, exc.key, exc.expected_key) from None
        except paramiko.PasswordRequiredException:
            client.close()
            raise target_error(
                "auth",
                f"cannot log in to {where}: the key file is passphrase-protected; "
                "add it to ssh-agent (ssh-add KEYFILE) and try again",
            ) from None
        except paramiko.AuthenticationException as exc:
            client.close()
            raise target_error("auth", self._auth_message(hop, where, exc)) from None
        except paramiko.ssh_exception.NoValidConnectionsError:
            client.close()
            raise target_error(
                "connect", f"connection refused by {where}: is sshd running and the port right?"
            ) from None
        except socket.gaierror as exc:
            client.close()
            raise target_error(
                "connect", f"cannot resolve {hop.hostname!r}{via}: {exc.strerror or exc}"
            ) from None
        except (socket.timeout, TimeoutError, EOFError, paramiko.SSHException, OSError) as exc:
            client.close()
            slow = time.monotonic() - started >= left * 0.9
            if slow or isinstance(exc, (socket.timeout, TimeoutError)):
                raise target_error(
                    "timeout",
                    f"no SSH answer from {where} within {self.options.connect_timeout:g} s "
                    "(firewall, security group, or not an SSH server?)",
                ) from None
            if isinstance(exc, paramiko.SSHException) and "banner" in str(exc).lower():
                raise target_error(
                    "connect", f"{where} did not answer as an SSH server: {exc}"
                ) from None
            if isinstance(exc, paramiko.SSHException) and "authentic" in str(exc).lower():
                raise target_error("auth", self._auth_message(hop, where, exc)) from None
            reason = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
            raise target_error("connect", f"cannot connect to {where}: {reason}") from None

    @staticmethod
    def _auth_message(hop: _Hop, where: str, exc: Exception) -> str:
        keys = ", ".join(hop.key_files) or "ssh-agent and ~/.ssh/id_*"
        return (
            f"authentication failed for {where} (tried {keys}): {exc}. Give the right login "
            "with --ssh-user or USER@HOST, a key with -i, or load it into ssh-agent"
        )

    def _connect(self, target: Target, deadline: _Deadline) -> tuple[list[Any], _Hop]:
        """Connected clients (bastions first, the target last) and the target's hop."""
        hops = self._chain(target)
        clients: list[Any] = []
        try:
            for i, hop in enumerate(hops):
                via = f" (via {hops[i - 1].where})" if i else ""
                sock: Any = None
                if clients:
                    try:
                        sock = (
                            clients[-1]
                            .get_transport()
                            .open_channel(
                                "direct-tcpip",
                                (hop.hostname, hop.port),
                                ("127.0.0.1", 0),
                                timeout=max(0.1, deadline.left()),
                            )
                        )
                    except (paramiko.SSHException, OSError, EOFError) as exc:
                        raise target_error(
                            "connect",
                            f"bastion {hops[i - 1].where} cannot reach {hop.where}: {exc}",
                        ) from None
                elif hop.proxy_command:
                    # paramiko runs it with shlex.split (no shell); host names are validated.
                    try:
                        sock = paramiko.ProxyCommand(hop.proxy_command)
                    except (OSError, paramiko.SSHException) as exc:
                        raise target_error(
                            "connect", f"ProxyCommand for {hop.where} did not start: {exc}"
                        ) from None
                clients.append(self._connect_hop(hop, sock, deadline, via))
        except BaseException:
            _close_all(clients)
            raise
        return clients, hops[-1]

    # ---- running

    def run_agent(self, target: Target, request: dict[str, Any]) -> tuple[dict[str, Any], int]:
        """Run the agent on ``target``; returns (answer, bytes received).

        Raises TargetError with ``kind`` connect, auth, hostkey, sudo, timeout, agent or
        table. An ``ok: false`` answer is returned as is.
        """
        if not target.host:
            raise target_error("connect", f"{target.label}: no address to connect to")
        deadline = _Deadline(self.options.max_seconds)
        started = time.monotonic()
        clients, hop = self._connect(target, deadline)
        try:
            run = _Runner(clients[-1], target, hop, deadline, self.options.command_timeout)
            sudo = SUDO_PREFIX if hop.user != "root" else ""
            stdin = b"%d\n" % len(self._agent_source) + self._agent_source
            stdin += json.dumps(request).encode("utf-8")
            out, err, status = run.execute(sudo + REMOTE_COMMAND, stdin)
            received = len(out) + len(err)
            if not out.strip() and _python_missing(err):
                log.info("%s: python3 not found, reading the table with the raw command", hop.where)
                out, err, status = run.execute(sudo + agent.RAW_COMMAND, b"")
                received += len(out) + len(err)
                answer = _raw_answer(run, request, out, err, status)
            else:
                answer = _parse_answer(run, out, err, status)
            log.debug("%s: %d bytes in %.2f s", hop.where, received, time.monotonic() - started)
            return answer, received
        finally:
            _close_all(clients)


def _close_all(clients: list[Any]) -> None:
    for client in reversed(clients):
        client.close()


def _python_missing(err: bytes) -> bool:
    text = err.decode("utf-8", "replace")
    return "python3" in text and ("not found" in text or "No such file" in text)


class _Runner:
    """Runs one command on a connected client with stdin, within the deadline."""

    def __init__(
        self, client: Any, target: Target, hop: _Hop, deadline: _Deadline, timeout: float
    ) -> None:
        self.client = client
        self.target = target
        self.hop = hop
        self.deadline = deadline
        self.timeout = timeout

    @property
    def label(self) -> str:
        name = self.target.label
        return name if name == self.hop.hostname else f"{name} ({self.hop.where})"

    def timed_out(self) -> TargetError:
        return target_error(
            "timeout",
            f"{self.label} did not finish within {self.deadline.seconds:g} s "
            "(raise --timeout for a very large table)",
        )

    def execute(self, command: str, stdin: bytes) -> tuple[bytes, bytes, int]:
        """(stdout, stderr, exit status); stdin is written while output is read, so a chatty
        command can never deadlock against a full window."""
        try:
            channel = self.client.get_transport().open_session(
                timeout=max(0.1, self.deadline.left())
            )
            channel.settimeout(max(0.1, self.deadline.left()))
            channel.exec_command(command)
        except (socket.timeout, TimeoutError):
            raise self.timed_out() from None
        except (paramiko.SSHException, OSError, EOFError) as exc:
            raise target_error("connect", f"{self.label}: cannot start a session: {exc}") from None
        try:
            return self._pump(channel, stdin)
        finally:
            channel.close()

    def _pump(self, channel: Any, stdin: bytes) -> tuple[bytes, bytes, int]:
        out: list[bytes] = []
        err: list[bytes] = []
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
            while channel.recv_ready():
                out.append(channel.recv(_CHUNK))
                busy = True
            while channel.recv_stderr_ready():
                err.append(channel.recv_stderr(_CHUNK))
                busy = True
            if (
                channel.exit_status_ready()
                # sshd may send the exit status before the last of the output: wait for EOF
                and (channel.eof_received or channel.closed)
                and not channel.recv_ready()
                and not channel.recv_stderr_ready()
            ):
                return b"".join(out), b"".join(err), channel.recv_exit_status()
            if self.deadline.expired():
                raise self.timed_out()
            if not busy:
                time.sleep(_POLL)

    def remote_failure(self, err: bytes, status: int) -> TargetError:
        """The error for a command that printed nothing on stdout."""
        text = err.decode("utf-8", "replace").strip()
        last = text.splitlines()[-1] if text else f"exit status {status}, no output"
        if "sudo" in text and ("not found" in text or "No such file" in text):
            return target_error(
                "sudo",
                f"sudo is not installed on {self.label}: log in as root (--ssh-user root or "
                "root@HOST) or install sudo",
            )
        if "password is required" in text or "terminal is required" in text or "askpass" in text:
            return target_error(
                "sudo",
                f"sudo asked for a password on {self.label}: allow 'NOPASSWD' for python3 "
                f"(and sh, for boxes without python3) for user {self.hop.user!r}, or log in "
                "as root",
            )
        if "sudoers" in text or "not allowed to execute" in text:
            return target_error(
                "sudo",
                f"user {self.hop.user!r} may not use sudo on {self.label} ({last}): allow "
                "'NOPASSWD' for python3, or log in as root",
            )
        return target_error("agent", f"the agent failed on {self.label}: {last}")


def _parse_answer(run: _Runner, out: bytes, err: bytes, status: int) -> dict[str, Any]:
    """The agent's JSON answer, or a TargetError explaining why there is none."""
    if not out.strip():
        raise run.remote_failure(err, status)
    try:
        answer = json.loads(out.decode("utf-8", "replace"))
    except ValueError:
        snippet = out[:200].decode("utf-8", "replace")
        raise target_error(
            "agent", f"the agent on {run.label} did not answer JSON (exit {status}): {snippet!r}"
        ) from None
    if not isinstance(answer, dict):
        raise target_error("agent", f"the agent on {run.label} answered {type(answer).__name__}")
    return answer


def _raw_answer(
    run: _Runner, request: dict[str, Any], out: bytes, err: bytes, status: int
) -> dict[str, Any]:
    """Parse a ``RAW_COMMAND`` dump here, as the agent would have on the box."""
    if not out.strip():
        failure = run.remote_failure(err, status)
        if getattr(failure, "kind", "") == "agent":
            failure = target_error(
                "table",
                f"python3 is not installed on {run.label} and the shell fallback read "
                f"nothing: {err.decode('utf-8', 'replace').strip() or f'exit {status}'}",
            )
        raise failure
    answer = agent.handle(
        request, agent.DumpSources(agent.split_raw_dump(out.decode("ascii", "replace")))
    )
    answer.setdefault("warnings", []).append(RAW_WARNING)
    answer["executor"] = "raw"
    return answer
