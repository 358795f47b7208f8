"""natfleet.ssh: a fake SSH client driven by expected commands, then a real sshd.

The real tests start their own sshd inside a network namespace made for them (a veth pair on
198.18.250.0/24), with its own host key, users and known_hosts, and remove it all afterwards.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import paramiko
import pytest

from natfleet import agent
from natfleet.fleet import run_fleet, run_one
from natfleet.models import HostError, HostResult, Target
from natfleet.ssh import RAW_WARNING, REMOTE_COMMAND, SUDO_PREFIX, SshConnector, SshOptions
from tests.conftest import need_lab

REPO = Path(__file__).resolve().parent.parent
LINE = (
    "ipv4     2 tcp      6 431999 ESTABLISHED src=192.0.2.10 dst=203.0.113.5 sport=40000 "
    "dport=443 src=203.0.113.5 dst=198.51.100.1 sport=443 dport=61000 [ASSURED] mark=0 zone=0 "
    "use=2\n"
)
HOSTILE = "$(touch /tmp/nf-pwned)`touch /tmp/nf-pwned`;'\"\n\u00e9\u4e2d" + "x" * 500


# --------------------------------------------------------------------------- fake client


class FakeChannel:
    """Plays one scripted command: (stdout, stderr, exit status), or hangs."""

    def __init__(self, script: dict, log: list) -> None:
        self.script, self.log = script, log
        self.stdin = b""
        self.out = self.err = b""
        self.status = None
        self.hang = False

    def settimeout(self, seconds):
        pass

    def exec_command(self, command):
        self.log.append(command)
        reply = self.script[command]
        if reply == "hang":
            self.hang = True
        else:
            self.out, self.err, self.status = reply

    def send_ready(self):
        return True

    def send(self, data):
        self.stdin += data
        return len(data)

    def shutdown_write(self):
        self.log.append(("stdin", self.stdin))

    def recv_ready(self):
        return bool(self.out)

    def recv(self, n):
        data, self.out = self.out[:n], self.out[n:]
        return data

    def recv_stderr_ready(self):
        return bool(self.err)

    def recv_stderr(self, n):
        data, self.err = self.err[:n], self.err[n:]
        return data

    def exit_status_ready(self):
        return not self.hang

    @property
    def eof_received(self):  # the scripted command has written everything at once
        return not self.hang

    closed = False

    def recv_exit_status(self):
        return self.status

    def close(self):
        pass


class FakeTransport:
    def __init__(self, client):
        self.client = client

    def open_session(self, timeout=None):
        return FakeChannel(self.client.script, self.client.log)

    def open_channel(self, kind, dest, src, timeout=None):
        self.client.log.append(("direct-tcpip", dest))
        return ("sock-via", dest)


class FakeClient:
    """Records connect() arguments; every session runs commands from ``script``."""

    def __init__(self, script, log):
        self.script, self.log = script, log

    def load_system_host_keys(self, path):
        pass

    def load_host_keys(self, path):
        pass

    def set_missing_host_key_policy(self, policy):
        pass

    def connect(self, **kwargs):
        self.log.append(("connect", kwargs))

    def get_transport(self):
        return FakeTransport(self)

    def close(self):
        pass


def fake_connector(script, tmp_path, **options):
    log: list = []
    options.setdefault("ssh_config", str(tmp_path / "ssh_config"))
    Path(options["ssh_config"]).touch()
    connector = SshConnector(SshOptions(**options), client_factory=lambda: FakeClient(script, log))
    return connector, log


def commands(log):
    return [entry for entry in log if isinstance(entry, str)]


def answer_json(**extra) -> tuple[bytes, bytes, int]:
    return json.dumps({"agent": 1, "ok": True, "rows": [], **extra}).encode(), b"", 0


def test_constant_command_and_stdin_layout(tmp_path):
    connector, log = fake_connector({REMOTE_COMMAND: answer_json()}, tmp_path)
    request = {"mode": "list", "filters": {"src": [HOSTILE]}}
    answer, received = connector.run_agent(Target(name=HOSTILE, host="nat-a", user="root"), request)
    assert answer["ok"] and received > 0
    assert commands(log) == [REMOTE_COMMAND]  # nothing of the target or request in it
    stdin = [entry[1] for entry in log if entry[0] == "stdin"][0]
    source = Path(agent.__file__).read_bytes()
    head, _, rest = stdin.partition(b"\n")
    assert int(head) == len(source) and rest[: len(source)] == source
    assert json.loads(rest[len(source) :]) == request


def test_sudo_prefix_when_not_root(tmp_path):
    connector, log = fake_connector({SUDO_PREFIX + REMOTE_COMMAND: answer_json()}, tmp_path)
    connector.run_agent(Target(name="a", host="198.51.100.7", user="ec2-user"), {"mode": "info"})
    assert commands(log) == ["sudo -n " + REMOTE_COMMAND]
    assert log[0][1]["username"] == "ec2-user" and log[0][1]["compress"] is True


def test_raw_fallback_when_python3_missing(tmp_path):
    raw = (
        f"@@natfleet file /proc/net/nf_conntrack\n{LINE}"
        "@@natfleet file /proc/sys/kernel/hostname\nnat-raw\n"
    )
    script = {
        SUDO_PREFIX + REMOTE_COMMAND: (b"", b"sudo: python3: command not found\n", 1),
        SUDO_PREFIX + agent.RAW_COMMAND: (raw.encode(), b"", 0),
    }
    connector, log = fake_connector(script, tmp_path, user="admin")
    answer, received = connector.run_agent(Target(name="a", host="nat-a"), {"mode": "list"})
    assert commands(log) == [SUDO_PREFIX + REMOTE_COMMAND, SUDO_PREFIX + agent.RAW_COMMAND]
    assert answer["ok"] and answer["hostname"] == "nat-raw" and answer["executor"] == "raw"
    assert RAW_WARNING in answer["warnings"]
    assert answer["rows"][0]["orig"]["src"] == "192.0.2.10" and answer["rows"][0]["nat"] == "snat"
    assert received == len(raw) + len("sudo: python3: command not found\n")


@pytest.mark.parametrize(
    ("stderr", "kind", "words"),
    [
        (b"sudo: a password is required\n", "sudo", "sudo asked for a password on nat-a"),
        (b"bash: line 1: sudo: command not found\n", "sudo", "sudo is not installed"),
        (b"deploy is not in the sudoers file.\n", "sudo", "may not use sudo"),
        (b"Traceback...\nSyntaxError: bad\n", "agent", "SyntaxError: bad"),
    ],
)
def test_remote_failures_name_the_fix(tmp_path, stderr, kind, words):
    connector, _ = fake_connector({SUDO_PREFIX + REMOTE_COMMAND: (b"", stderr, 1)}, tmp_path)
    result = run_one(Target(name="nat-a", host="nat-a", user="deploy"), {}, connector)
    assert isinstance(result, HostError) and result.kind == kind
    assert words in result.message


def test_not_json_and_ok_false(tmp_path):
    connector, _ = fake_connector({REMOTE_COMMAND: (b"Welcome!\n", b"", 0)}, tmp_path)
    result = run_one(Target(name="a", host="a", user="root"), {}, connector)
    assert result.kind == "agent" and "did not answer JSON" in result.message
    failure = json.dumps({"ok": False, "error": {"kind": "permission", "message": "nope"}})
    connector, _ = fake_connector({REMOTE_COMMAND: (failure.encode(), b"", 0)}, tmp_path)
    answer, _ = connector.run_agent(Target(name="a", host="a", user="root"), {})
    assert answer["ok"] is False  # returned as is; the fleet makes it a HostError
    result = run_one(Target(name="a", host="a", user="root"), {}, connector)
    assert (result.kind, result.message) == ("permission", "nope")


def test_command_that_hangs_times_out(tmp_path):
    connector, _ = fake_connector(
        {REMOTE_COMMAND: "hang"}, tmp_path, connect_timeout=0.2, command_timeout=0.3
    )
    started = time.monotonic()
    result = run_one(Target(name="slow", host="slow", user="root"), {}, connector)
    assert result.kind == "timeout" and "did not finish within" in result.message
    assert time.monotonic() - started < 2


def test_ssh_config_and_proxy_jump_chain(tmp_path):
    key = tmp_path / "nat_key"
    key.write_text("not really a key")
    (tmp_path / "ssh_config").write_text(
        "Host nat-a\n  HostName 198.51.100.7\n  User ec2-user\n  Port 2200\n"
        f"  IdentityFile {key}\n  ProxyJump jumper@bastion:2222,bastion2\n"
        "Host bastion\n  HostName 203.0.113.9\n"
    )
    connector, log = fake_connector(
        {SUDO_PREFIX + REMOTE_COMMAND: answer_json()},
        tmp_path,
        ssh_config=str(tmp_path / "ssh_config"),
    )
    connector.run_agent(Target(name="nat-a", host="nat-a"), {})
    connects = [entry[1] for entry in log if entry[0] == "connect"]
    assert [(c["hostname"], c["port"]) for c in connects] == [
        ("203.0.113.9", 2222),
        ("bastion2", 22),
        ("198.51.100.7", 2200),
    ]
    assert connects[0]["username"] == "jumper" and connects[0]["sock"] is None
    assert connects[1]["sock"] == ("sock-via", ("bastion2", 22))
    assert connects[2]["username"] == "ec2-user" and connects[2]["key_filename"] == [str(key)]
    assert connects[2]["look_for_keys"] is False
    # an explicit user wins over the file, --proxy-jump over ProxyJump
    connector, log = fake_connector(
        {REMOTE_COMMAND: answer_json()},
        tmp_path,
        ssh_config=str(tmp_path / "ssh_config"),
        proxy_jump="203.0.113.77",
    )
    connector.run_agent(Target(name="nat-a", host="nat-a", user="root"), {})
    connects = [entry[1] for entry in log if entry[0] == "connect"]
    assert [c["hostname"] for c in connects] == ["203.0.113.77", "198.51.100.7"]
    assert connects[1]["username"] == "root"


def test_env_defaults(monkeypatch, tmp_path):
    monkeypatch.setenv("NATFLEET_KNOWN_HOSTS", str(tmp_path / "kh"))
    monkeypatch.setenv("NATFLEET_SSH_CONFIG", str(tmp_path / "cfg"))
    options = SshOptions()
    assert options.known_hosts_path() == str(tmp_path / "kh")
    assert options.config_path() == str(tmp_path / "cfg")
    assert SshOptions(known_hosts="/x/kh").known_hosts_path() == "/x/kh"
    monkeypatch.delenv("NATFLEET_SSH_CONFIG")
    assert SshOptions().config_path() is None  # HOME is a fresh temp folder
    assert SshOptions().max_seconds == 30.0


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
        extra.setdefault("command_timeout", 15)
        return SshOptions(
            identity_files=(str(self.key),), system_known_hosts="/nonexistent", **extra
        )

    def target(self, user: str = "root", port: int | None = None, name: str = "nfssh") -> Target:
        return Target(name=name, host=self.ip, user=user, port=port)

    def local_answer(self, request: dict) -> dict:
        """The agent run directly inside the namespace (the reference answer)."""
        out = _sh(
            "ip", "netns", "exec", self.ns, "/usr/bin/python3", "-m", "natfleet.agent",
            input=json.dumps(request), cwd=str(REPO),
        )  # fmt: skip
        return json.loads(out.stdout)


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


def _rows(answer: dict) -> list[dict]:
    return [{k: v for k, v in row.items() if k != "timeout"} for row in answer["rows"]]


@pytest.mark.lab
def test_real_answer_equals_agent_in_namespace(sshd):
    answer, received = SshConnector(sshd.options()).run_agent(sshd.target(), REQUEST)
    local = sshd.local_answer(REQUEST)
    assert answer["ok"] and local["ok"] and received > 1000
    assert len(answer["rows"]) == 2 and _rows(answer) == _rows(local)
    assert answer["rows"][0]["nat"] == "snat"
    for key in ("hostname", "source", "addresses", "matched", "port_range"):
        assert answer[key] == local[key], key
    assert sshd.ip in answer["addresses"]


@pytest.mark.lab
def test_real_raw_fallback_without_python3(sshd):
    answer, _ = SshConnector(sshd.options()).run_agent(sshd.target(user="nfsshraw"), REQUEST)
    assert answer["ok"] and answer["executor"] == "raw" and RAW_WARNING in answer["warnings"]
    assert _rows(answer) == _rows(sshd.local_answer(REQUEST))


@pytest.mark.lab
def test_real_sudo_nopasswd_and_password(sshd):
    answer, _ = SshConnector(sshd.options()).run_agent(sshd.target(user="nfsshok"), REQUEST)
    assert answer["ok"] and len(answer["rows"]) == 2  # the table is root-only: sudo worked
    result = run_one(sshd.target(user="nfsshpw"), REQUEST, SshConnector(sshd.options()))
    assert isinstance(result, HostError) and result.kind == "sudo"
    assert result.message.startswith("sudo asked for a password on nfssh")
    assert "NOPASSWD" in result.message


@pytest.mark.lab
def test_real_unknown_host_key_refused(sshd, tmp_path):
    options = sshd.options(known_hosts=str(tmp_path / "known_hosts"))
    result = run_one(sshd.target(), REQUEST, SshConnector(options))
    assert result.kind == "hostkey" and "unknown host key" in result.message
    assert "SHA256:" in result.message and "--accept-new-host-keys" in result.message
    assert not (tmp_path / "known_hosts").exists()


@pytest.mark.lab
def test_real_accept_new_records_key(sshd, tmp_path):
    path = tmp_path / "ssh" / "known_hosts"
    options = sshd.options(known_hosts=str(path), accept_new_host_keys=True)
    assert isinstance(run_one(sshd.target(), REQUEST, SshConnector(options)), HostResult)
    assert isinstance(run_one(sshd.target(port=2222), REQUEST, SshConnector(options)), HostResult)
    public = sshd.host_key.with_suffix(".pub").read_text().split()
    assert path.read_text() == (
        f"{sshd.ip} {public[0]} {public[1]}\n[{sshd.ip}]:2222 {public[0]} {public[1]}\n"
    )
    strict = sshd.options(known_hosts=str(path))  # now known: strict checking passes
    assert isinstance(run_one(sshd.target(), REQUEST, SshConnector(strict)), HostResult)


@pytest.mark.lab
def test_real_ssh_config_cannot_turn_host_key_checking_off(sshd, tmp_path):
    config = tmp_path / "ssh_config"
    config.write_text(
        f"Host *\n  StrictHostKeyChecking no\n  UserKnownHostsFile {tmp_path / 'kh'}\n"
        f"  IdentityFile {sshd.key}\n"
    )
    options = sshd.options(ssh_config=str(config), known_hosts=str(tmp_path / "kh"))
    result = run_one(sshd.target(), REQUEST, SshConnector(options))
    assert result.kind == "hostkey" and "unknown host key" in result.message
    assert not (tmp_path / "kh").exists()


@pytest.mark.lab
def test_real_accept_new_refuses_a_known_hosts_that_records_nothing(sshd):
    options = sshd.options(known_hosts="/dev/null", accept_new_host_keys=True)
    result = run_one(sshd.target(), REQUEST, SshConnector(options))
    assert result.kind == "hostkey" and "not a file natfleet can record it in" in result.message


@pytest.mark.lab
def test_real_changed_host_key_refused_even_with_accept_new(sshd, tmp_path):
    other = paramiko.Ed25519Key.from_private_key_file(str(sshd.key))  # not the host key
    path = tmp_path / "known_hosts"
    text = f"# rebuilt box\n{sshd.ip} {other.get_name()} {other.get_base64()}\n"
    path.write_text(text)
    options = sshd.options(known_hosts=str(path), accept_new_host_keys=True)
    result = run_one(sshd.target(), REQUEST, SshConnector(options))
    assert result.kind == "hostkey" and "CHANGED" in result.message
    assert f"{path} line 2" in result.message and other.fingerprint in result.message
    assert f"ssh-keygen -f '{path}' -R '{sshd.ip}'" in result.message
    assert path.read_text() == text


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
        result = run_one(Target(name=alias, host=alias), REQUEST, connector)
        assert isinstance(result, HostResult), getattr(result, "message", "")
        assert len(result.rows) == 2


@pytest.mark.lab
def test_real_hostile_name_reaches_no_shell(sshd):
    marker = Path("/tmp/nf-pwned")
    marker.unlink(missing_ok=True)
    request = {"mode": "list", "filters": {"src": ["192.0.2.0/24"], "dst": None}, "sort": "src"}
    result = run_one(sshd.target(name=HOSTILE), request, SshConnector(sshd.options()))
    assert isinstance(result, HostResult) and len(result.rows) == 2
    assert not marker.exists()


@pytest.mark.lab
def test_real_fleet_with_refused_and_hanging_boxes(sshd):
    listener = socket.socket()  # accepts TCP, never speaks SSH
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    try:
        port = listener.getsockname()[1]
        options = sshd.options(connect_timeout=1.5, command_timeout=3)
        targets = [
            sshd.target(),
            Target(name="stopped", host=sshd.ip, user="root", port=2200),
            Target(name="hang", host="127.0.0.1", user="root", port=port),
            sshd.target(name="again"),
        ]
        started = time.monotonic()
        results = run_fleet(targets, REQUEST, SshConnector(options), parallel=4)
        assert time.monotonic() - started < 6
    finally:
        listener.close()
    assert [r.target.name for r in results] == ["nfssh", "stopped", "hang", "again"]
    kinds = [type(r).__name__ for r in results]
    assert kinds == ["HostResult", "HostError", "HostError", "HostResult"]
    assert results[1].kind == "connect" and "connection refused" in results[1].message
    assert results[2].kind == "timeout" and "no SSH answer" in results[2].message


@pytest.mark.lab
def test_real_wrong_key_is_an_auth_error(sshd):
    options = SshOptions(
        identity_files=(str(sshd.host_key),),  # a real key, but not an authorized one
        known_hosts=str(sshd.known_hosts),
        ssh_config=str(sshd.tmp / "empty_ssh_config"),
        system_known_hosts="/nonexistent",
        connect_timeout=5,
    )
    (sshd.tmp / "empty_ssh_config").touch()
    result = run_one(sshd.target(), REQUEST, SshConnector(options))
    assert (
        result.kind == "auth" and f"authentication failed for root@{sshd.ip}:22" in result.message
    )
    assert str(sshd.host_key) in result.message and "--ssh-user" in result.message
