"""natfleet.ssh: a fake SSH client driven by expected commands, a paramiko server in this
process, then a real sshd.

The fakes play what paramiko does (host key check in ``connect``, an exec request that waits
until the channel closes); the in-process server runs real paramiko on a socket pair. The real
tests start their own sshd inside a network namespace made for them (a veth pair on
198.18.250.0/24), with its own host key, users and known_hosts, and remove it all afterwards.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import paramiko
import pytest
from paramiko.hostkeys import HostKeyEntry

from natfleet import agent
from natfleet.answer import AnswerReader
from natfleet.errors import ConfigError, TargetError
from natfleet.fleet import ReadOptions, run_fleet, run_one
from natfleet.limits import Deadline
from natfleet.models import HostError, HostResult, Target
from natfleet.remote import RAW_WARNING, REMOTE_COMMAND
from natfleet.ssh import SUDO_PREFIX, SshConnector, SshOptions, expand_includes
from tests.conftest import DATA, need_lab

REPO = Path(__file__).resolve().parent.parent
SSH_DATA = DATA / "ssh"
HOSTILE = "$(touch /tmp/nf-pwned)`touch /tmp/nf-pwned`;'\"\n\u00e9\u4e2d" + "x" * 500


def data_key(name: str) -> paramiko.PKey:
    """The public key tests/data/ssh/keys/NAME.pub, as a server would offer it."""
    kind, b64 = (SSH_DATA / "keys" / f"{name}.pub").read_text().split()[:2]
    entry = HostKeyEntry.from_line(f"x {kind} {b64}")
    assert entry is not None
    return entry.key


# --------------------------------------------------------------------------- fake client


@dataclass
class Reply:
    """What a scripted command does: stdout chunks, stderr, exit status, and ``mode``:
    ``done`` (exits once all is read), ``hang`` (never exits) or ``noanswer`` (the server
    never answers the exec request). ``gate(chunks_read)`` may hold back the next chunk."""

    chunks: list[bytes] = field(default_factory=list)
    stderr: bytes = b""
    status: int = 0
    mode: str = "done"
    gate: Optional[Callable[[int], bool]] = None


class FakeChannel:
    """Plays one scripted command the way a paramiko Channel would."""

    def __init__(self, script: dict, log: list) -> None:
        self.script, self.log = script, log
        self.stdin = b""
        self.reply = Reply()
        self.read = 0
        self.timeout: Optional[float] = None
        self.closed_event = threading.Event()
        self.stdin_closed = False

    def settimeout(self, seconds):
        self.timeout = seconds

    def exec_command(self, command):
        self.log.append(command)
        self.reply = self.script[command]
        self.reply.chunks = list(self.reply.chunks)
        if self.reply.mode == "noanswer":  # paramiko waits for the answer, without a timeout
            self.closed_event.wait(10)
            raise paramiko.SSHException("Channel closed.")

    def send_ready(self):
        return True

    def send(self, data):
        self.stdin += data
        return len(data)

    def shutdown_write(self):
        self.log.append(("stdin", self.stdin))
        self.stdin_closed = True

    def recv_ready(self):
        gate = self.reply.gate
        return bool(self.reply.chunks) and (gate is None or gate(self.read))

    def recv(self, n):
        chunk = self.reply.chunks.pop(0)
        self.read += 1
        return chunk

    def recv_stderr_ready(self):
        return bool(self.reply.stderr)

    def recv_stderr(self, n):
        data, self.reply.stderr = self.reply.stderr[:n], self.reply.stderr[n:]
        return data

    def exit_status_ready(self):  # like the agent: it answers, reads stdin to its end, exits
        reply = self.reply
        done = reply.mode == "done" and self.stdin_closed and not reply.chunks
        return self.closed or (done and not reply.stderr)  # paramiko: closed counts as ready

    @property
    def eof_received(self):
        return self.exit_status_ready()

    @property
    def closed(self):
        return self.closed_event.is_set()

    def recv_exit_status(self):
        return self.reply.status if self.reply.mode == "done" else -1  # paramiko: -1, none

    def close(self):
        self.log.append("channel closed")
        self.closed_event.set()


class FakeTransport:
    def __init__(self, client):
        self.client = client
        self.host_key = client.server_key

    def open_session(self, timeout=None):
        channel = FakeChannel(self.client.script, self.client.log)
        self.client.channels.append(channel)
        return channel

    def open_channel(self, kind, dest, src, timeout=None):
        self.client.log.append(("direct-tcpip", dest))
        if self.client.bastion_error:
            raise self.client.bastion_error
        return ("sock-via", dest)


class FakeClient:
    """Records connect() arguments and checks the host key as paramiko's connect does;
    every session runs commands from ``script``. ``connect_error`` is raised by connect;
    ``hang`` makes connect wait until the client is closed (a handshake that never ends)."""

    def __init__(self, script, log, server_key=None, connect_error=None, hang=False):
        self.script, self.log = script, log
        self.server_key = server_key
        self.connect_error = connect_error
        self.hang = hang
        self.bastion_error: Optional[Exception] = None
        self.host_keys = paramiko.HostKeys()
        self.policy: Any = None
        self.channels: list[FakeChannel] = []
        self.closed = threading.Event()

    def get_host_keys(self):
        return self.host_keys

    def set_missing_host_key_policy(self, policy):
        self.policy = policy

    def connect(self, **kwargs):
        self.log.append(("connect", kwargs))
        if self.hang:
            self.closed.wait(10)
            raise EOFError()
        if self.connect_error:
            raise self.connect_error
        if self.server_key is None:
            return
        host, port, key = kwargs["hostname"], kwargs["port"], self.server_key
        name = host if port == 22 else f"[{host}]:{port}"
        known = self.host_keys.lookup(name)
        if known is None:
            self.policy.missing_host_key(self, name, key)
        elif known.get(key.get_name()) != key:
            expected = known.get(key.get_name()) or list(known.values())[0]
            raise paramiko.BadHostKeyException(host, key, expected)

    def get_transport(self):
        return FakeTransport(self)

    def close(self):
        self.log.append("client closed")
        self.closed.set()


class FakeSock:
    def __init__(self, address, timeout):
        self.address, self.timeout = address, timeout

    def close(self):
        pass


def fake_connector(script, tmp_path, tcp_error=None, clients=None, **options):
    """A connector on fake clients (``clients`` collects them; extra FakeClient arguments
    in ``client``), a fake TCP connect that raises ``tcp_error``, and its log."""
    log: list = []
    client_args = options.pop("client", {})
    made = clients if clients is not None else []
    options.setdefault("ssh_config", str(tmp_path / "ssh_config"))
    Path(options["ssh_config"]).touch()
    options.setdefault("known_hosts", str(tmp_path / "known_hosts"))
    options.setdefault("system_known_hosts", str(tmp_path / "no_system_known_hosts"))

    def factory():
        made.append(FakeClient(script, log, **client_args))
        return made[-1]

    def tcp_connect(address, timeout):
        log.append(("tcp", address, timeout))
        if tcp_error is not None:
            raise tcp_error
        return FakeSock(address, timeout)

    connector = SshConnector(SshOptions(**options), factory, tcp_connect)
    return connector, log


def commands(log):
    return [entry for entry in log if isinstance(entry, str) and not entry.endswith("closed")]


def run(connector, target, command=REMOTE_COMMAND, stdin=b"", seconds=10.0, **kwargs):
    """exec with a list as the stdout sink: (ExecResult, chunks)."""
    chunks: list[bytes] = []
    result = connector.exec(target, command, stdin, chunks.append, Deadline(seconds), **kwargs)
    return result, chunks


ROOT = Target(name="nat-a", host="198.51.100.7", user="root")


# --------------------------------------------------------------------------- exec


def test_constant_command_and_stdin_passed_unchanged(tmp_path):
    connector, log = fake_connector({REMOTE_COMMAND: Reply([b'{"ok":true}\n'])}, tmp_path)
    stdin = b"12\n" + HOSTILE.encode() * 300  # more than one send chunk
    result, chunks = run(connector, Target(name=HOSTILE, host="nat-a", user="root"), stdin=stdin)
    assert commands(log) == [REMOTE_COMMAND]  # nothing of the target in it
    assert [entry[1] for entry in log if entry[0] == "stdin"] == [stdin]
    assert chunks == [b'{"ok":true}\n'] and result.status == 0
    assert (result.where, result.user, result.received) == ("root@nat-a:22", "root", 12)


def test_sudo_prefix_only_when_not_root_and_asked(tmp_path):
    script = {SUDO_PREFIX + REMOTE_COMMAND: Reply(), REMOTE_COMMAND: Reply()}
    connector, log = fake_connector(script, tmp_path)
    result, _ = run(connector, Target(name="a", host="198.51.100.7", user="ec2-user"))
    run(connector, Target(name="a", host="198.51.100.7", user="ec2-user"), as_root=False)
    assert commands(log) == ["sudo -n " + REMOTE_COMMAND, REMOTE_COMMAND]
    assert result.user == "ec2-user" and result.where == "ec2-user@198.51.100.7:22"
    assert log[1][1]["username"] == "ec2-user"


def test_compression_only_where_the_stream_is_not_compressed_already(tmp_path):
    """The agent's program and answers are zlib streams: SSH compression is off for
    REMOTE_COMMAND, on for the raw fallback's plain text, and never on a bastion's hop (it
    carries the target's encrypted stream)."""
    raw = agent.RAW_COMMAND
    connector, log = fake_connector({REMOTE_COMMAND: Reply(), raw: Reply()}, tmp_path)
    run(connector, ROOT)
    run(connector, ROOT, command=raw)
    connects = [entry[1] for entry in log if entry[0] == "connect"]
    assert [c["compress"] for c in connects] == [False, True]
    connector, log = fake_connector({raw: Reply()}, tmp_path, proxy_jump="203.0.113.77")
    run(connector, ROOT, command=raw)
    connects = [entry[1] for entry in log if entry[0] == "connect"]
    assert [(c["hostname"], c["compress"]) for c in connects] == [
        ("203.0.113.77", False),
        ("198.51.100.7", True),
    ]


def test_stdout_reaches_on_stdout_as_it_arrives(tmp_path):
    seen: list[bytes] = []
    # chunk k+1 is sent only once chunk k was handed on: a transport that buffered stdout
    # until the command ended would wait forever (and time out)
    reply = Reply([b"one\n", b"two\n", b"three\n"], gate=lambda read: len(seen) == read)
    connector, _ = fake_connector({REMOTE_COMMAND: reply}, tmp_path)
    result = connector.exec(ROOT, REMOTE_COMMAND, b"", seen.append, Deadline(2))
    assert seen == [b"one\n", b"two\n", b"three\n"] and result.received == 14


class Boom(OSError):
    """An on_stdout failure that is also an OSError: it must not be taken for a transport
    error."""


def test_on_stdout_raising_closes_at_once_and_propagates(tmp_path):
    clients: list = []
    reply = Reply([b"x" * 100], mode="hang")  # the remote command would never end
    connector, log = fake_connector({REMOTE_COMMAND: reply}, tmp_path, clients=clients)
    error = Boom("answer too large")

    def on_stdout(chunk):
        raise error

    started = time.monotonic()
    with pytest.raises(Boom) as caught:
        connector.exec(ROOT, REMOTE_COMMAND, b"", on_stdout, Deadline(10))
    assert caught.value is error
    assert time.monotonic() - started < 0.5
    assert clients[0].channels[0].closed and clients[0].closed.is_set()
    assert log[-2:] == ["channel closed", "client closed"]


def test_stderr_is_capped_keeping_the_last_bytes(tmp_path):
    stderr = b"".join(b"line %06d\n" % i for i in range(20000)) + b"the real error\n"
    reply = Reply([b"out"], stderr=stderr, status=1)
    connector, _ = fake_connector({REMOTE_COMMAND: reply}, tmp_path)
    result, _ = run(connector, ROOT, max_stderr=1000)
    assert result.stderr == stderr[-1000:] and result.stderr.endswith(b"the real error\n")
    assert result.received == 3 + len(stderr) and result.status == 1


def test_no_exit_status_is_none(tmp_path):
    connector, _ = fake_connector({REMOTE_COMMAND: Reply(status=-1)}, tmp_path)
    assert run(connector, ROOT)[0].status is None


@pytest.mark.parametrize(
    ("reply", "words", "hint"),
    [
        (Reply(mode="noanswer"), "nat-a (root@198.51.100.7:22) did not finish within 0.6 s", False),
        (Reply(mode="hang"), "did not finish within 0.6 s", False),
        (Reply([b'{"agent":2}\n'], mode="hang"), "did not finish within 0.6 s", True),
    ],
    ids=["exec-never-answered", "never-ends", "never-ends-sending"],
)
def test_a_box_that_never_finishes_times_out_on_the_deadline(tmp_path, reply, words, hint):
    connector, _ = fake_connector({REMOTE_COMMAND: reply}, tmp_path)
    started = time.monotonic()
    with pytest.raises(TargetError) as caught:
        run(connector, Target(name="nat-a", host="198.51.100.7", user="root"), seconds=0.6)
    assert time.monotonic() - started < 0.6 + 0.5
    assert caught.value.kind == "timeout" and words in str(caught.value)
    assert ("raise --timeout" in str(caught.value)) is hint


def test_a_handshake_that_never_ends_times_out_on_the_deadline(tmp_path):
    connector, _ = fake_connector({}, tmp_path, client={"hang": True})
    started = time.monotonic()
    with pytest.raises(TargetError) as caught:
        run(connector, ROOT, seconds=0.6)
    assert time.monotonic() - started < 0.6 + 0.5
    assert caught.value.kind == "timeout"
    assert "no SSH answer from root@198.51.100.7:22 within 0.6 s" in str(caught.value)


# --------------------------------------------------------------------------- connect errors


@pytest.mark.parametrize(
    ("error", "kind", "words", "not_words"),
    [
        (ConnectionRefusedError(errno.ECONNREFUSED, "Connection refused"), "connect",
         "connection refused by root@198.51.100.7:22: is sshd running", None),
        (OSError(errno.EHOSTUNREACH, "No route to host"), "connect",
         "cannot connect to root@198.51.100.7:22: no route to host", "refused"),
        (OSError(errno.ENETUNREACH, "Network is unreachable"), "connect",
         "no route to network", "refused"),
        (socket.timeout("timed out"), "timeout",
         "no SSH answer from root@198.51.100.7:22 within 4 s", None),
        (socket.gaierror(socket.EAI_NONAME, "Name or service not known"), "connect",
         "cannot resolve '198.51.100.7': Name or service not known", None),
        (OSError(errno.EACCES, "Permission denied"), "connect",
         "cannot connect to root@198.51.100.7:22: Permission denied", None),
    ],
    ids=["refused", "host-unreachable", "net-unreachable", "timeout", "dns", "other"],
)  # fmt: skip
def test_tcp_failures_say_what_happened(tmp_path, error, kind, words, not_words):
    connector, log = fake_connector({}, tmp_path, tcp_error=error, connect_timeout=4)
    with pytest.raises(TargetError) as caught:
        run(connector, ROOT)
    assert caught.value.kind == kind and words in str(caught.value)
    assert not_words is None or not_words not in str(caught.value)
    assert log[0] == ("tcp", ("198.51.100.7", 22), pytest.approx(4, abs=0.1))


@pytest.mark.parametrize(
    ("error", "kind", "words", "not_words"),
    [
        (paramiko.AuthenticationException("Authentication timeout."), "timeout",
         "root@198.51.100.7:22 did not finish authentication within 4 s", "--ssh-user"),
        (paramiko.AuthenticationException("Authentication failed."), "auth",
         "authentication failed for root@198.51.100.7:22", None),
        (paramiko.SSHException("Error reading SSH protocol banner[Errno 104] reset"), "connect",
         "did not answer as an SSH server", None),
        (paramiko.SSHException("Incompatible ssh peer (no acceptable kex algorithm)"),
         "connect", "SSH handshake with root@198.51.100.7:22 failed: Incompatible", None),
        (EOFError(), "connect", "closed the connection during the SSH handshake", None),
    ],
    ids=["auth-timeout", "auth-failed", "banner", "kex", "eof"],
)  # fmt: skip
def test_handshake_failures_say_what_happened(tmp_path, error, kind, words, not_words):
    server_key = data_key("a") if kind == "timeout" else None  # auth comes after the kex
    connector, _ = fake_connector(
        {}, tmp_path, connect_timeout=4, client={"connect_error": error, "server_key": server_key}
    )
    with pytest.raises(TargetError) as caught:
        run(connector, ROOT)
    assert caught.value.kind == kind and words in str(caught.value)
    assert not_words is None or not_words not in str(caught.value)


def test_bastion_refusing_the_channel_is_named(tmp_path):
    clients: list = []
    connector, log = fake_connector({}, tmp_path, clients=clients, proxy_jump="jumper@203.0.113.9")
    original = connector.client_factory

    def factory():
        client = original()
        client.bastion_error = paramiko.ChannelException(2, "Connect failed")
        return client

    connector.client_factory = factory
    with pytest.raises(TargetError) as caught:
        run(connector, ROOT)
    assert caught.value.kind == "connect"
    assert str(caught.value) == (
        "bastion jumper@203.0.113.9:22 cannot reach root@198.51.100.7:22: Connect failed "
        "(SSH channel failure 2)"
    )
    assert clients[0].closed.is_set()


# --------------------------------------------------------------------------- ssh_config


def test_ssh_config_and_proxy_jump_chain(tmp_path):
    key = tmp_path / "nat_key"
    key.write_text("not really a key")
    (tmp_path / "ssh_config").write_text(
        "Host nat-a\n  HostName 198.51.100.7\n  User ec2-user\n  Port 2200\n"
        f"  IdentityFile {key}\n  ProxyJump jumper@bastion:2222,bastion2\n"
        "Host bastion\n  HostName 203.0.113.9\n"
    )
    connector, log = fake_connector({SUDO_PREFIX + REMOTE_COMMAND: Reply()}, tmp_path)
    result, _ = run(connector, Target(name="nat-a", host="nat-a"))
    connects = [entry[1] for entry in log if entry[0] == "connect"]
    assert [(c["hostname"], c["port"]) for c in connects] == [
        ("203.0.113.9", 2222),
        ("bastion2", 22),
        ("198.51.100.7", 2200),
    ]
    assert connects[0]["username"] == "jumper" and isinstance(connects[0]["sock"], FakeSock)
    assert connects[0]["sock"].address == ("203.0.113.9", 2222)
    assert connects[1]["sock"] == ("sock-via", ("bastion2", 22))
    assert connects[2]["username"] == "ec2-user" and connects[2]["key_filename"] == [str(key)]
    assert connects[2]["look_for_keys"] is False
    assert result.where == "ec2-user@198.51.100.7:2200 (via bastion)"
    # an explicit user wins over the file, --proxy-jump over ProxyJump
    connector, log = fake_connector({REMOTE_COMMAND: Reply()}, tmp_path, proxy_jump="203.0.113.77")
    run(connector, Target(name="nat-a", host="nat-a", user="root"))
    connects = [entry[1] for entry in log if entry[0] == "connect"]
    assert [c["hostname"] for c in connects] == ["203.0.113.77", "198.51.100.7"]
    assert connects[1]["username"] == "root"


def test_env_gives_the_files_and_explicit_options_win(monkeypatch, tmp_path):
    monkeypatch.setenv("NATFLEET_KNOWN_HOSTS", str(tmp_path / "kh"))
    monkeypatch.setenv("NATFLEET_SSH_CONFIG", str(tmp_path / "cfg"))
    assert SshOptions().known_hosts_path() == str(tmp_path / "kh")
    assert SshOptions().config_path() == str(tmp_path / "cfg")
    assert SshOptions(known_hosts="/x/kh").known_hosts_path() == "/x/kh"
    monkeypatch.delenv("NATFLEET_KNOWN_HOSTS")
    assert SshOptions().known_hosts_path("~/from-config") == os.path.expanduser("~/from-config")
    monkeypatch.delenv("NATFLEET_SSH_CONFIG")
    assert SshOptions().config_path() is None  # HOME is a fresh temp folder without one
    (Path.home() / ".ssh").mkdir()
    (Path.home() / ".ssh" / "config").touch()
    assert SshOptions().config_path() == str(Path.home() / ".ssh" / "config")


@pytest.fixture
def user_ssh_dir() -> Path:
    """tests/data/ssh/include as ~/.ssh (HOME is a temp folder in every test)."""
    target = Path.home() / ".ssh"
    shutil.copytree(SSH_DATA / "include", target)
    return target


def _lookup(path: Path, host: str) -> dict:
    return dict(paramiko.SSHConfig.from_text(expand_includes(str(path))).lookup(host))


def test_include_glob_relative_and_inside_a_host_block(user_ssh_dir):
    config = user_ssh_dir / "config"
    nat_a = _lookup(config, "nat-a")
    # from conf.d/10-a.conf (the glob), then nat-common.conf inside "Host nat-*", then the
    # line after that Include, back in "Host nat-*"; conf.d/README does not match *.conf
    assert nat_a == {
        "hostname": "198.51.100.7",
        "proxyjump": "bastion",
        "user": "ec2-user",
        "port": "2200",
        "identitiesonly": "yes",
    }
    # "Host *-b" inside the include inside "Host nat-*": nat-b matches both, db-b only one
    assert _lookup(config, "nat-b")["userknownhostsfile"] == "~/.ssh/known_hosts_b"
    assert _lookup(config, "db-b") == {"hostname": "198.51.100.8"}
    assert _lookup(config, "bastion") == {"hostname": "203.0.113.9", "user": "jumper"}


def test_include_paths_are_relative_to_dot_ssh_not_to_the_config(user_ssh_dir, tmp_path):
    elsewhere = tmp_path / "my_config"
    elsewhere.write_text("Include conf.d/10-a.conf\n")
    assert _lookup(elsewhere, "nat-a")["hostname"] == "198.51.100.7"
    absolute = tmp_path / "abs_config"
    absolute.write_text(f"Include {user_ssh_dir}/conf.d/2*.conf ~/.ssh/no-such-file\n")
    assert _lookup(absolute, "nat-b")["hostname"] == "198.51.100.8"


def test_include_recursion_is_a_config_error_naming_the_file(user_ssh_dir):
    with pytest.raises(ConfigError, match=r"loop\.conf line 2: Include nested more than 16"):
        expand_includes(str(user_ssh_dir / "loop.conf"))


def test_host_from_an_included_file_connects_with_its_proxy_jump(user_ssh_dir, tmp_path):
    connector, log = fake_connector(
        {SUDO_PREFIX + REMOTE_COMMAND: Reply()}, tmp_path, ssh_config=str(user_ssh_dir / "config")
    )
    result, _ = run(connector, Target(name="nat-a", host="nat-a"))
    connects = [
        (e[1]["hostname"], e[1]["port"], e[1]["username"]) for e in log if e[0] == "connect"
    ]
    assert connects == [("203.0.113.9", 22, "jumper"), ("198.51.100.7", 2200, "ec2-user")]
    assert result.where == "ec2-user@198.51.100.7:2200 (via bastion)"


# --------------------------------------------------------------------------- known_hosts


def _cases() -> list[tuple[str, int, str, str, str]]:
    rows = []
    for line in (SSH_DATA / "known_hosts.cases").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            host, port, key, outcome, *rest = line.split()
            named = " ".join(rest[:2]) if rest[:1] == ["line"] else ""
            rows.append((host, int(port), key, outcome, named))
    return rows


def _connect_with_key(tmp_path, host, port, key, **options):
    options.setdefault("known_hosts", str(SSH_DATA / "known_hosts"))
    connector, _ = fake_connector(
        {REMOTE_COMMAND: Reply()}, tmp_path, client={"server_key": data_key(key)}, **options
    )
    return connector, Target(name=host, host=host, user="root", port=port)


@pytest.mark.parametrize(("host", "port", "key", "outcome", "named"), _cases())
def test_known_hosts_as_openssh_reads_it(tmp_path, host, port, key, outcome, named):
    connector, target = _connect_with_key(tmp_path, host, port, key)
    if outcome == "ok":
        assert run(connector, target)[0].status == 0
        return
    with pytest.raises(TargetError) as caught:
        run(connector, target)
    message = str(caught.value)
    assert caught.value.kind == "hostkey"
    words = {"changed": "has CHANGED", "revoked": "is REVOKED", "unknown": "unknown host key"}
    assert words[outcome] in message and data_key(key).fingerprint in message
    if named:
        assert f"{SSH_DATA / 'known_hosts'} {named}" in message


def test_known_hosts_warnings_name_file_and_line_once(tmp_path, caplog):
    connector, _ = _connect_with_key(tmp_path, "198.51.100.7", 22, "a")
    path = SSH_DATA / "known_hosts"
    with caplog.at_level(logging.WARNING, logger="natfleet.ssh"):
        for _ in range(3):
            run(connector, Target(name="a", host="198.51.100.7", user="root"))
    warnings = [r.getMessage() for r in caplog.records]
    skipped = sorted(int(w.split()[2].rstrip(":")) for w in warnings if " line " in w)
    assert skipped == [9, 10, 11, 14, 15, 16]
    assert all(w.startswith(f"{path} line ") for w in warnings if " line " in w)
    authority = [w for w in warnings if "@cert-authority" in w]
    assert authority == [
        f"{path}: @cert-authority line(s) 5, 12 skipped: natfleet does not check host "
        "certificates (a box known only by a certificate fails as an unknown host key)"
    ]


def test_accept_new_adds_a_missing_final_newline_first(tmp_path):
    path = tmp_path / "known_hosts"
    first = f"198.51.100.7 ssh-ed25519 {data_key('a').get_base64()}"
    path.write_text(first)  # no final newline
    connector, target = _connect_with_key(
        tmp_path, "198.51.100.20", 2222, "b", known_hosts=str(path), accept_new_host_keys=True
    )
    run(connector, target)
    assert path.read_text() == (
        f"{first}\n[198.51.100.20]:2222 ssh-ed25519 {data_key('b').get_base64()}\n"
    )
    for host, port, key in (("198.51.100.7", 22, "a"), ("198.51.100.20", 2222, "b")):
        strict, target = _connect_with_key(tmp_path, host, port, key, known_hosts=str(path))
        assert run(strict, target)[0].status == 0  # both lines are whole


def test_accept_new_never_records_a_revoked_or_changed_key(tmp_path):
    path = tmp_path / "known_hosts"
    text = (
        f"@revoked * ssh-ed25519 {data_key('e').get_base64()}\n"
        f"198.51.100.7 ssh-ed25519 {data_key('a').get_base64()}\n"
    )
    path.write_text(text)
    for host, key, words in (("198.51.100.30", "e", "REVOKED"), ("198.51.100.7", "b", "CHANGED")):
        connector, target = _connect_with_key(
            tmp_path, host, 22, key, known_hosts=str(path), accept_new_host_keys=True
        )
        with pytest.raises(TargetError, match=words):
            run(connector, target)
    assert path.read_text() == text


# --------------------------------------------------------------------------- real paramiko


class _Server(paramiko.ServerInterface):
    """An SSH server in this process: any public key logs in; ``mode`` says what an exec
    request does: ``noanswer`` (never answered), ``chatty`` (sends stdout until the channel
    is closed, at most 2000 chunks) or ``done`` (answers two lines and exits 3)."""

    def __init__(self, mode: str) -> None:
        self.mode = mode
        self.release = threading.Event()
        self.chunks_sent = 0
        self.stopped = threading.Event()  # the endless sender saw its channel end

    def get_allowed_auths(self, username):
        return "publickey"

    def check_auth_publickey(self, username, key):
        return paramiko.AUTH_SUCCESSFUL

    def check_channel_request(self, kind, chanid):
        return paramiko.OPEN_SUCCEEDED

    def check_channel_exec_request(self, channel, command):
        if self.mode == "noanswer":
            self.release.wait(10)
            return False
        threading.Thread(target=self._answer, args=(channel,), daemon=True).start()
        return True

    def _answer(self, channel):
        time.sleep(0.05)
        try:
            if self.mode == "done":
                channel.sendall(b"one\n")
                channel.sendall_stderr(b"warn\n")
                channel.sendall(b"two\n")
                channel.send_exit_status(3)
                channel.close()
                return
            while self.chunks_sent < 2000 and not channel.closed:
                channel.sendall(b"y" * 65536)
                self.chunks_sent += 1
        except (OSError, EOFError, paramiko.SSHException):
            pass  # the client went away
        finally:
            self.stopped.set()


@pytest.fixture
def py_server(tmp_path, monkeypatch):
    """(start(mode) -> (connector, server), target): a paramiko server on a socket pair."""
    monkeypatch.delenv("SSH_AUTH_SOCK", raising=False)
    host_key = paramiko.RSAKey.generate(1024)
    client_key = paramiko.RSAKey.generate(1024)
    client_key.write_private_key_file(str(tmp_path / "id_rsa"))
    (tmp_path / "known_hosts").write_text(f"192.0.2.1 ssh-rsa {host_key.get_base64()}\n")
    (tmp_path / "ssh_config").touch()
    transports: list[paramiko.Transport] = []
    socks: list[socket.socket] = []

    def start(mode: str, serve: bool = True):
        ours, theirs = socket.socketpair()
        socks.extend((ours, theirs))
        server = _Server(mode)
        if serve:
            transport = paramiko.Transport(theirs)
            transport.add_server_key(host_key)
            transport.start_server(event=threading.Event(), server=server)
            transports.append(transport)
        options = SshOptions(
            ssh_config=str(tmp_path / "ssh_config"),
            known_hosts=str(tmp_path / "known_hosts"),
            system_known_hosts=str(tmp_path / "none"),
            identity_files=(str(tmp_path / "id_rsa"),),
        )
        return SshConnector(options, tcp_connect=lambda address, timeout: ours), server

    yield start, Target(name="py", host="192.0.2.1", user="root")
    for transport in transports:
        transport.close()
    for sock in socks:
        sock.close()


def test_real_paramiko_streams_and_keeps_stderr(py_server):
    start, target = py_server
    connector, _ = start("done")
    result, chunks = run(connector, target, seconds=5)
    assert b"".join(chunks) == b"one\ntwo\n" and result.stderr == b"warn\n"
    assert (result.status, result.received) == (3, 13)


def test_real_paramiko_exec_request_never_answered(py_server):
    start, target = py_server
    connector, server = start("noanswer")
    started = time.monotonic()
    with pytest.raises(TargetError) as caught:
        run(connector, target, seconds=1.0)
    assert time.monotonic() - started < 1.0 + 0.5
    assert caught.value.kind == "timeout" and "did not finish within 1 s" in str(caught.value)
    server.release.set()


def test_real_paramiko_no_banner(py_server):
    start, target = py_server
    connector, _ = start("noanswer", serve=False)  # TCP accepted, nothing ever said
    started = time.monotonic()
    with pytest.raises(TargetError) as caught:
        run(connector, target, seconds=1.0)
    assert time.monotonic() - started < 1.0 + 0.5
    assert caught.value.kind == "timeout"
    assert "no SSH answer from root@192.0.2.1:22 within 1 s" in str(caught.value)


def test_real_paramiko_on_stdout_raising_stops_an_endless_command(py_server):
    start, target = py_server
    connector, server = start("chatty")
    seen: list[int] = []

    def on_stdout(chunk):
        seen.append(len(chunk))
        if sum(seen) > 1 << 20:
            raise Boom("cap")

    started = time.monotonic()
    with pytest.raises(Boom):
        connector.exec(target, REMOTE_COMMAND, b"", on_stdout, Deadline(10))
    assert time.monotonic() - started < 2
    assert server.stopped.wait(2) and server.chunks_sent < 2000


# --------------------------------------------------------------------------- a real sshd


def _sh(*argv: str, check: bool = True, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(argv, check=check, capture_output=True, text=True, timeout=30, **kwargs)


class Sshd:
    """An sshd in namespace ``ns`` on ``ip`` ports 22 and 2222, with users ``nfsshpw`` (no
    sudo rights), ``nfsshok`` (sudo NOPASSWD) and ``nfsshraw`` (sudo NOPASSWD keeping a PATH
    without python3: a box with no python)."""

    users = ("nfsshpw", "nfsshok", "nfsshraw")

    def __init__(self, tmp: Path) -> None:
        pid = os.getpid()
        self.tmp = tmp
        self.ns = f"nfssh-test-{pid}"
        self.veth, self.peer = f"nfs{pid % 100000}a", f"nfs{pid % 100000}b"
        base = 4 * (pid % 60)
        self.root_ip, self.ip = f"198.18.250.{base + 1}", f"198.18.250.{base + 2}"
        self.key = tmp / "id_ed25519"
        self.host_key = tmp / "host_ed25519"
        self.known_hosts = tmp / "known_hosts"
        self.sudoers = Path("/etc/sudoers.d/natfleet-test-ssh")
        self.proc: subprocess.Popen | None = None
        # what the test users must read (keys, home, PATH): outside pytest's private folders
        self.public = Path(tempfile.mkdtemp(prefix="nfssh-test-"))
        self.public.chmod(0o755)

    def start(self) -> None:
        _sh("ip", "netns", "add", self.ns)
        _sh("ip", "link", "add", self.veth, "type", "veth", "peer", "name", self.peer)
        _sh("ip", "link", "set", self.peer, "netns", self.ns)
        _sh("ip", "addr", "add", f"{self.root_ip}/30", "dev", self.veth)
        _sh("ip", "link", "set", self.veth, "up")
        _sh("ip", "-n", self.ns, "addr", "add", f"{self.ip}/30", "dev", self.peer)
        _sh("ip", "-n", self.ns, "link", "set", self.peer, "up")
        _sh("ip", "-n", self.ns, "link", "set", "lo", "up")
        for args in (
            ("-p", "tcp", "-s", "192.0.2.10", "-d", "203.0.113.5", "--sport", "40000"),
            ("-p", "tcp", "-s", "192.0.2.11", "-d", "203.0.113.6", "--sport", "40001"),
        ):
            _sh(
                "ip", "netns", "exec", self.ns, "conntrack", "-I", *args, "--dport", "443",
                "-r", args[5], "-q", "198.51.100.1", "--reply-port-src", "443",
                "--reply-port-dst", str(int(args[7]) + 20000), "--state", "ESTABLISHED",
                "-t", "3600", "-u", "ASSURED",
            )  # fmt: skip
        _sh("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(self.key))
        _sh("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(self.host_key))
        nopy = self.public / "nopy"
        nopy.mkdir()
        for folder in ("/usr/bin", "/usr/sbin"):
            for name in os.listdir(folder):
                if not name.startswith("python") and not (nopy / name).exists():
                    (nopy / name).symlink_to(Path(folder) / name)
        (self.public / "authorized_keys").write_text(self.key.with_suffix(".pub").read_text())
        home = self.public / "home"
        home.mkdir(mode=0o755)
        for user in self.users:
            _sh("userdel", user, check=False)
            _sh("useradd", "-M", "-d", str(home), "-s", "/bin/sh", "-p", "*", user)
        self.sudoers.write_text(
            "nfsshok ALL=(root) NOPASSWD: ALL\nnfsshraw ALL=(root) NOPASSWD: ALL\n"
            "Defaults:nfsshraw !secure_path\n"
        )
        self.sudoers.chmod(0o440)
        config = self.tmp / "sshd_config"
        config.write_text(
            f"ListenAddress {self.ip}\nPort 22\nPort 2222\nHostKey {self.host_key}\n"
            f"AuthorizedKeysFile {self.public}/authorized_keys\nPidFile none\nStrictModes no\n"
            "UsePAM no\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n"
            "PermitRootLogin prohibit-password\nAllowTcpForwarding yes\nLogLevel VERBOSE\n"
            f"Match User nfsshraw\n  SetEnv PATH={nopy}\n"
        )
        Path("/run/sshd").mkdir(exist_ok=True)
        log = open(self.tmp / "sshd.log", "w")  # noqa: SIM115 - kept open for the daemon
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", self.ns, "/usr/sbin/sshd", "-D", "-e", "-f", str(config)],
            stdout=log,
            stderr=log,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection((self.ip, 22), timeout=0.5) as sock:
                    if sock.recv(4) == b"SSH-":
                        break
            except OSError:
                time.sleep(0.05)
        else:
            raise RuntimeError(f"test sshd did not start: {(self.tmp / 'sshd.log').read_text()}")
        public = self.host_key.with_suffix(".pub").read_text().split()
        self.host_line = f"{self.ip},[{self.ip}]:2222 {public[0]} {public[1]}\n"
        self.known_hosts.write_text(self.host_line)

    def stop(self) -> None:
        if self.proc:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        _sh("ip", "netns", "del", self.ns, check=False)
        _sh("ip", "link", "del", self.veth, check=False)
        for user in self.users:
            _sh("userdel", user, check=False)
        self.sudoers.unlink(missing_ok=True)
        shutil.rmtree(self.public, ignore_errors=True)

    def options(self, **extra) -> SshOptions:
        empty = self.tmp / "empty_ssh_config"
        empty.touch()
        extra.setdefault("known_hosts", str(self.known_hosts))
        extra.setdefault("ssh_config", str(empty))
        extra.setdefault("connect_timeout", 5)
        return SshOptions(
            identity_files=(str(self.key),), system_known_hosts="/nonexistent", **extra
        )

    def target(self, user: str = "root", port: int | None = None, name: str = "nfssh") -> Target:
        return Target(name=name, host=self.ip, user=user, port=port)

    def local_answer(self, request: dict) -> Any:
        """The agent run directly inside the namespace, checked (the reference answer)."""
        out = subprocess.run(
            ["ip", "netns", "exec", self.ns, "/usr/bin/python3", "-m", "natfleet.agent"],
            input=json.dumps(request).encode(), cwd=str(REPO), capture_output=True,
            timeout=30, check=True,
        )  # fmt: skip
        reader = AnswerReader("local", request, cap=1 << 24)
        reader.feed(out.stdout)
        return reader.finish()


@pytest.fixture(scope="module")
def sshd(tmp_path_factory):
    need_lab()
    if not shutil.which("sudo"):
        pytest.skip("the sudo tests need sudo (apt-get install sudo)")
    server = Sshd(tmp_path_factory.mktemp("sshd"))
    try:
        server.start()
        yield server
    finally:
        server.stop()


REQUEST = {"mode": "list", "filters": {"src": ["192.0.2.0/24"]}, "sort": "src"}
READ = ReadOptions(timeout=20)


def _rows(answer: Any) -> list[dict]:
    return [{k: v for k, v in f.to_json().items() if k != "timeout"} for f in answer.flows]


def _read(sshd: Sshd, target: Target, **options) -> Any:
    """run_one through a connector on the test sshd: HostResult or HostError."""
    return run_one(target, REQUEST, SshConnector(sshd.options(**options)), READ)


@pytest.mark.lab
def test_real_answer_equals_agent_in_namespace(sshd):
    result = _read(sshd, sshd.target())
    assert isinstance(result, HostResult), getattr(result, "message", "")
    local = sshd.local_answer(REQUEST)
    # compact (compressed, column blocks) by default; the JSON rows of wire format 2 on request
    plain = run_one(sshd.target(), {**REQUEST, "encoding": "json"}, SshConnector(sshd.options()))
    assert isinstance(plain, HostResult), getattr(plain, "message", "")
    assert 200 < result.bytes_received < plain.bytes_received
    assert _rows(result.answer) == _rows(plain.answer)
    assert len(result.answer.flows) == 2 and _rows(result.answer) == _rows(local)
    assert result.answer.flows[0].nat == "snat"
    ours, theirs = result.answer.facts, local.facts
    assert (ours.hostname, ours.source, ours.addresses, ours.port_range) == (
        theirs.hostname, theirs.source, theirs.addresses, theirs.port_range
    )  # fmt: skip
    assert result.answer.matched == local.matched and sshd.ip in ours.addresses


@pytest.mark.lab
def test_real_raw_fallback_without_python3(sshd):
    result = _read(sshd, sshd.target(user="nfsshraw"))
    assert isinstance(result, HostResult), getattr(result, "message", "")
    assert result.answer.executor == "raw" and RAW_WARNING in result.answer.warnings
    assert _rows(result.answer) == _rows(sshd.local_answer(REQUEST))


@pytest.mark.lab
def test_real_sudo_nopasswd_and_password(sshd):
    result = _read(sshd, sshd.target(user="nfsshok"))
    assert isinstance(result, HostResult) and len(result.answer.flows) == 2  # root-only table
    result = _read(sshd, sshd.target(user="nfsshpw"))
    assert isinstance(result, HostError) and result.kind == "sudo"
    assert result.message.startswith("sudo asked for a password on nfssh")
    assert "NOPASSWD" in result.message


@pytest.mark.lab
def test_real_exec_streams_a_large_output_in_chunks(sshd):
    chunks: list[bytes] = []
    connector = SshConnector(sshd.options())
    result = connector.exec(
        sshd.target(), "head -c 3000000 /dev/zero", b"", chunks.append, Deadline(20)
    )
    assert result.status == 0 and sum(map(len, chunks)) == 3_000_000 == result.received
    assert len(chunks) > 10 and max(map(len, chunks)) <= 1 << 16


@pytest.mark.lab
def test_real_exec_of_a_command_that_never_ends_stops_on_the_deadline(sshd):
    connector = SshConnector(sshd.options())
    started = time.monotonic()
    with pytest.raises(TargetError) as caught:
        connector.exec(sshd.target(), "sleep 30", b"", lambda chunk: None, Deadline(1.5))
    assert time.monotonic() - started < 1.5 + 0.5
    assert caught.value.kind == "timeout" and "did not finish within 1.5 s" in str(caught.value)


@pytest.mark.lab
def test_real_unknown_host_key_refused(sshd, tmp_path):
    result = _read(sshd, sshd.target(), known_hosts=str(tmp_path / "known_hosts"))
    assert result.kind == "hostkey" and "unknown host key" in result.message
    assert "SHA256:" in result.message and "--accept-new-host-keys" in result.message
    assert not (tmp_path / "known_hosts").exists()


@pytest.mark.lab
def test_real_accept_new_records_key(sshd, tmp_path):
    path = tmp_path / "ssh" / "known_hosts"
    options = {"known_hosts": str(path), "accept_new_host_keys": True}
    assert isinstance(_read(sshd, sshd.target(), **options), HostResult)
    assert isinstance(_read(sshd, sshd.target(port=2222), **options), HostResult)
    public = sshd.host_key.with_suffix(".pub").read_text().split()
    assert path.read_text() == (
        f"{sshd.ip} {public[0]} {public[1]}\n[{sshd.ip}]:2222 {public[0]} {public[1]}\n"
    )
    # now known: strict checking passes
    assert isinstance(_read(sshd, sshd.target(), known_hosts=str(path)), HostResult)


@pytest.mark.lab
def test_real_ssh_config_cannot_turn_host_key_checking_off(sshd, tmp_path):
    config = tmp_path / "ssh_config"
    config.write_text(
        f"Host *\n  StrictHostKeyChecking no\n  UserKnownHostsFile {tmp_path / 'kh'}\n"
        f"  IdentityFile {sshd.key}\n"
    )
    result = _read(sshd, sshd.target(), ssh_config=str(config), known_hosts=str(tmp_path / "kh"))
    assert result.kind == "hostkey" and "unknown host key" in result.message
    assert not (tmp_path / "kh").exists()


@pytest.mark.lab
def test_real_accept_new_refuses_a_known_hosts_that_records_nothing(sshd):
    result = _read(sshd, sshd.target(), known_hosts="/dev/null", accept_new_host_keys=True)
    assert result.kind == "hostkey" and "not a file natfleet can record it in" in result.message


@pytest.mark.lab
def test_real_changed_host_key_refused_even_with_accept_new(sshd, tmp_path):
    other = paramiko.Ed25519Key.from_private_key_file(str(sshd.key))  # not the host key
    path = tmp_path / "known_hosts"
    text = f"# rebuilt box\n{sshd.ip} {other.get_name()} {other.get_base64()}\n"
    path.write_text(text)
    result = _read(sshd, sshd.target(), known_hosts=str(path), accept_new_host_keys=True)
    assert result.kind == "hostkey" and "CHANGED" in result.message
    assert f"{path} line 2" in result.message and other.fingerprint in result.message
    assert f"ssh-keygen -f '{path}' -R '{sshd.ip}'" in result.message
    assert path.read_text() == text


@pytest.mark.lab
def test_real_revoked_host_key_refused_and_cert_authority_harmless(sshd, tmp_path):
    public = sshd.host_key.with_suffix(".pub").read_text().split()
    path = tmp_path / "known_hosts"
    path.write_text(
        f"@cert-authority * {public[0]} {public[1]}\n{sshd.host_line}"
        f"@revoked [{sshd.ip}]:2222 {public[0]} {public[1]}\n"
    )
    assert isinstance(_read(sshd, sshd.target(), known_hosts=str(path)), HostResult)
    result = _read(sshd, sshd.target(port=2222), known_hosts=str(path))
    assert result.kind == "hostkey" and f"is REVOKED in {path} line 3" in result.message


@pytest.mark.lab
def test_real_ssh_config_alias_and_proxy_jump(sshd, tmp_path):
    config = tmp_path / "ssh_config"
    config.write_text(
        f"Host nat-x\n  HostName {sshd.ip}\n  User root\n  IdentityFile {sshd.key}\n"
        f"  UserKnownHostsFile {sshd.known_hosts}\n"
        f"Host nat-y\n  HostName {sshd.ip}\n  User nfsshok\n  ProxyJump root@{sshd.ip}\n"
        f"Host *\n  IdentityFile {sshd.key}\n  UserKnownHostsFile {sshd.known_hosts}\n"
    )
    options = SshOptions(ssh_config=str(config), system_known_hosts="/nonexistent")
    assert options.known_hosts is None
    connector = SshConnector(options)
    for alias in ("nat-x", "nat-y"):
        result = run_one(Target(name=alias, host=alias), REQUEST, connector, READ)
        assert isinstance(result, HostResult), getattr(result, "message", "")
        assert len(result.answer.flows) == 2


@pytest.mark.lab
def test_real_hostile_name_reaches_no_shell(sshd):
    marker = Path("/tmp/nf-pwned")
    marker.unlink(missing_ok=True)
    result = _read(sshd, sshd.target(name=HOSTILE))
    assert isinstance(result, HostResult) and len(result.answer.flows) == 2
    assert not marker.exists()


@pytest.mark.lab
def test_real_fleet_with_refused_and_hanging_boxes(sshd):
    listener = socket.socket()  # accepts TCP, never speaks SSH
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    try:
        port = listener.getsockname()[1]
        targets = [
            sshd.target(),
            Target(name="stopped", host=sshd.ip, user="root", port=2200),
            Target(name="hang", host="127.0.0.1", user="root", port=port),
            sshd.target(name="again"),
        ]
        started = time.monotonic()
        connector = SshConnector(sshd.options(connect_timeout=1.5))
        results = run_fleet(targets, REQUEST, connector, ReadOptions(timeout=4, parallel=4))
        assert time.monotonic() - started < 6
    finally:
        listener.close()
    assert [r.target.name for r in results] == ["nfssh", "stopped", "hang", "again"]
    kinds = [type(r).__name__ for r in results]
    assert kinds == ["HostResult", "HostError", "HostError", "HostResult"]
    assert results[1].kind == "connect" and "connection refused" in results[1].message
    assert results[2].kind == "timeout" and "no SSH answer" in results[2].message
    assert "within 1.5 s" in results[2].message


@pytest.mark.lab
def test_real_wrong_key_is_an_auth_error(sshd):
    (sshd.tmp / "empty_ssh_config").touch()
    options = SshOptions(
        identity_files=(str(sshd.host_key),),  # a real key, but not an authorized one
        known_hosts=str(sshd.known_hosts),
        ssh_config=str(sshd.tmp / "empty_ssh_config"),
        system_known_hosts="/nonexistent",
        connect_timeout=5,
    )
    result = run_one(sshd.target(), REQUEST, SshConnector(options), READ)
    assert (
        result.kind == "auth" and f"authentication failed for root@{sshd.ip}:22" in result.message
    )
    assert str(sshd.host_key) in result.message and "--ssh-user" in result.message
