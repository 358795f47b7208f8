"""The lab's login user and its sudo rule (natfleet.lab.login), without touching the machine's
users: files in a temp folder, ``useradd``/``userdel`` recorded instead of run. The real user
on the real lab is tested in test_lab_e2e."""

from __future__ import annotations

import json
import os
import pwd
import shlex
import shutil
from pathlib import Path

import pytest

from natfleet import agent, remote, ssh
from natfleet.errors import LabError
from natfleet.lab import login, sshd, topology
from natfleet.lab.state import LabState, load_state, save_state


def test_the_sudo_rule_names_exactly_the_commands_natfleet_runs():
    rules = login.sudoers_text("nflab-ec2", "/usr/bin:/bin").splitlines()
    assert rules[0].startswith(login.MARK)
    assert len(rules) == 3  # the mark, the agent, the raw fallback: nothing else
    for rule, command in zip(rules[1:], (remote.REMOTE_COMMAND, agent.RAW_COMMAND)):
        words = shlex.split(ssh.SUDO_PREFIX + command)[2:]  # what sudo gets after "sudo -n"
        head = f"nflab-ec2 ALL=(root) NOPASSWD: {shutil.which(words[0], path='/usr/bin:/bin')} "
        assert rule.startswith(head)
        assert "ALL" not in rule[len(head) :]  # no wildcard rule, no "any command"
        assert _unescaped(rule[len(head) :]) == words[1:]


def _unescaped(args: str) -> list[str]:
    """A sudoers rule's arguments as sudo reads them: blanks split, ``\\x`` is ``x``."""
    out, word, escaped = [], "", False
    for char in args:
        if escaped:
            word, escaped = word + char, False
        elif char == "\\":
            escaped = True
        elif char == " ":
            out, word = out + [word], ""
        else:
            word += char
    return out + [word]


@pytest.mark.parametrize(
    ("arg", "written"),
    [
        ("-I", "-I"),
        ("n=int(x),y:z", "n\\=int(x)\\,y\\:z"),
        ("a b\tc", "a\\ b\\\tc"),
        ("[ ! -r x ]*?#", "\\[\\ \\!\\ -r\\ x\\ \\]\\*\\?\\#"),
        ("^not a regex$", "\\^not\\ a\\ regex$"),
    ],
)
def test_a_rule_argument_matches_only_itself(arg, written):
    assert login.sudoers_arg(arg) == written
    assert _unescaped(written) == [arg]


@pytest.mark.parametrize("arg", ["back\\slash", "two\nlines", ""])
def test_an_argument_no_exact_rule_can_say_is_refused(arg):
    with pytest.raises(LabError, match="no exact sudoers rule"):
        login.sudoers_arg(arg)


def test_sudo_argv_is_what_the_login_shell_gives_sudo():
    assert login.sudo_argv(remote.REMOTE_COMMAND)[:4] == ["python3", "-I", "-S", "-c"]
    assert login.sudo_argv(agent.RAW_COMMAND)[:2] == ["sh", "-c"]


@pytest.mark.skipif(not shutil.which("visudo"), reason="needs visudo (apt-get install sudo)")
def test_visudo_accepts_the_rule_and_a_refused_rule_is_never_installed(tmp_path, monkeypatch):
    monkeypatch.setattr(login, "SUDOERS", tmp_path / "natfleet-lab")
    login.install_sudoers(login.sudoers_text("nflab-ec2"))
    assert (tmp_path / "natfleet-lab").stat().st_mode & 0o777 == 0o440
    with pytest.raises(LabError, match="visudo"):
        login.install_sudoers(f"{login.MARK} broken\nnflab-ec2 ALL=(root NOPASSWD: /bin/sh\n")
    assert (tmp_path / "natfleet-lab").read_text() == login.sudoers_text("nflab-ec2")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["natfleet-lab"]  # no half file


def test_sshd_lets_root_and_the_lab_user_in_each_with_its_keys(tmp_path):
    box = topology.make_box(1)
    keys = tmp_path / "home" / "nflab-ec2" / ".ssh" / "authorized_keys"
    config = sshd.sshd_config(box, tmp_path / "hk", tmp_path / "root_keys", ("nflab-ec2", keys))
    assert f"AuthorizedKeysFile {tmp_path / 'root_keys'}\n" in config
    assert "PermitRootLogin prohibit-password\n" in config
    # the Match block ends the file, so nothing else applies to the lab user only by accident
    assert config.endswith(
        f"AllowUsers root nflab-ec2\nMatch User nflab-ec2\n    AuthorizedKeysFile {keys}\n"
    )
    plain = sshd.sshd_config(box, tmp_path / "hk", tmp_path / "root_keys")
    assert "Match" not in plain and "AllowUsers" not in plain  # (the hostile boxes' config)


def test_ssh_config_logs_in_as_the_lab_user():
    box = topology.make_box(2)
    config = sshd.ssh_config([box], Path("/s/id"), Path("/s/kh"), "nflab-ec2")
    assert "Host nflab-box2 198.19.255.12\n" in config and "    User nflab-ec2\n" in config
    assert "    User root\n" in sshd.ssh_config([box], Path("/s/id"), Path("/s/kh"))


def test_a_state_from_before_the_lab_user_logs_in_as_root(tmp_path):
    state = LabState(str(tmp_path), [topology.make_box(1)], "c", "k", "i", user="nflab-ec2")
    save_state(state)
    assert load_state(str(tmp_path)).user == "nflab-ec2"
    data = json.loads((tmp_path / "state.json").read_text())
    del data["user"]
    (tmp_path / "state.json").write_text(json.dumps(data))
    assert load_state(str(tmp_path)).user == "root"


# --- making and removing the user (useradd/userdel recorded, files in tmp_path) ----------


class Users:
    """Stands in for /etc/passwd and useradd/usermod/userdel."""

    def __init__(self, monkeypatch, tmp_path: Path) -> None:
        self.entries: dict[str, pwd.struct_passwd] = {}
        self.calls: list[list[str]] = []
        monkeypatch.setattr(login, "SUDOERS", tmp_path / "sudoers.d" / "natfleet-lab")
        (tmp_path / "sudoers.d").mkdir()
        monkeypatch.setattr(login, "_entry", self.entries.get)
        monkeypatch.setattr(login.pwd, "getpwnam", self.entries.__getitem__)
        monkeypatch.setattr(login, "run", self.run)
        monkeypatch.setattr(login, "install_sudoers", login.SUDOERS.write_text)

    def add(self, name: str, comment: str, home: str) -> None:
        fields = (name, "*", os.getuid(), os.getgid(), comment, home, "/bin/sh")
        self.entries[name] = pwd.struct_passwd(fields)

    def run(self, argv, **_kwargs) -> str:
        self.calls.append(list(argv))
        if argv[0] == "useradd":
            self.add(argv[-1], _option(argv, "--comment"), _option(argv, "--home-dir"))
        elif argv[0] == "userdel":
            del self.entries[argv[-1]]
        return ""


def _option(argv: list[str], name: str) -> str:
    return argv[argv.index(name) + 1]


@pytest.fixture
def users(monkeypatch, tmp_path):
    return Users(monkeypatch, tmp_path)


def test_create_makes_a_sh_user_with_its_key_in_the_state_folder(users, tmp_path, monkeypatch):
    monkeypatch.setattr(login, "_reachable", lambda home: None)  # (pytest's folders are 0700)
    state = tmp_path / "lab"
    state.mkdir(mode=0o711)
    assert login.create(state, "ssh-ed25519 AAAA lab client\n") == login.USER
    useradd = users.calls[0]
    assert useradd[0] == "useradd" and "--system" in useradd and useradd[-1] == login.USER
    assert _option(useradd, "--shell") == "/bin/sh" and _option(useradd, "--password") == "*"
    assert _option(useradd, "--comment") == login.COMMENT
    assert _option(useradd, "--home-dir") == str(state / "home" / login.USER)
    keys = login.authorized_keys_of(state)
    assert keys.read_text() == "ssh-ed25519 AAAA lab client\n"
    modes = [p.stat().st_mode & 0o777 for p in (keys.parent.parent, keys.parent, keys)]
    assert modes == [0o700, 0o700, 0o600]
    assert login.SUDOERS.read_text() == login.sudoers_text(login.USER)


def test_the_home_must_be_reachable_by_the_user(users, tmp_path):
    closed = tmp_path / "closed"
    closed.mkdir(mode=0o700)
    (closed / "lab").mkdir()
    with pytest.raises(LabError, match=f"{closed} is closed to other users"):
        login.create(closed / "lab", "ssh-ed25519 AAAA")
    assert not users.calls  # checked before any user is made


def test_a_user_or_sudoers_file_the_lab_did_not_make_stops_up_and_survives_down(users, tmp_path):
    users.add(login.USER, "Someone's own account", "/home/someone")
    with pytest.raises(LabError, match="exists that the lab did not make"):
        login.check_free()
    said: list[str] = []
    login.remove(tmp_path / "lab", said.append)
    assert login.USER in users.entries and not users.calls
    assert said == [f"left the user {login.USER} alone: the lab did not make it"]
    del users.entries[login.USER]
    login.SUDOERS.write_text("someone ALL=(ALL) ALL\n")
    with pytest.raises(LabError, match="the lab did not write it"):
        login.check_free()
    login.remove(tmp_path / "lab", said.append)
    assert login.SUDOERS.read_text() == "someone ALL=(ALL) ALL\n"


def test_down_removes_the_user_and_rule_of_its_own_lab_only(users, tmp_path):
    mine, other = tmp_path / "lab", tmp_path / "other-lab"
    users.add(login.USER, login.COMMENT, str(login.home_of(other)))
    login.SUDOERS.write_text(login.sudoers_text(login.USER))
    said: list[str] = []
    login.remove(mine, said.append)  # another lab's user (NATFLEET_LAB_DIR=...): left alone
    assert login.USER in users.entries and login.SUDOERS.exists()
    assert "belongs to the lab of" in said[0]
    login.check_free()  # a lab's leftovers do not stop up: it takes them over
    login.remove(other, said.append)
    assert users.calls == [["userdel", login.USER]] and not login.SUDOERS.exists()
    assert said[1:] == [f"removed the lab user {login.USER}", f"removed {login.SUDOERS}"]
    login.remove(other, said.append)  # twice is fine
    assert len(said) == 3
