"""natfleet.targets and the shared target options (natfleet.commands.targetopts)."""

from __future__ import annotations

import argparse
import socket

import pytest

from natfleet import targets
from natfleet.commands.targetopts import (
    add_target_options,
    read_options_from_args,
    resolve_targets_from_args,
    ssh_options_from_args,
)
from natfleet.errors import TableError, UsageError
from natfleet.models import HostError, Target
from tests.conftest import DATA


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("198.51.100.7", (None, "198.51.100.7", None)),
        ("root@198.51.100.7:2200", ("root", "198.51.100.7", 2200)),
        ("ec2-user@nat-a.example.com", ("ec2-user", "nat-a.example.com", None)),
        ("nat_a", (None, "nat_a", None)),
        ("2001:db8::1", (None, "2001:db8::1", None)),
        ("[2001:db8:0::1]:22", (None, "2001:db8::1", 22)),
        ("admin@[2001:db8::1]", ("admin", "2001:db8::1", None)),
    ],
)
def test_split_host_spec(spec, expected):
    assert targets.split_host_spec(spec) == expected


@pytest.mark.parametrize(
    ("spec", "words"),
    [
        ("$(reboot)", "not an IP address or host name"),
        ("nat-a;reboot", "not an IP address or host name"),
        ("`id`@nat-a", "is not a plain login name"),
        ("nat a", "not an IP address or host name"),
        ("nat-a\n-oProxyCommand=x", "not an IP address or host name"),
        ("-oProxyCommand=x", "not an IP address or host name"),
        ("n\u00e4t", "not an IP address or host name"),
        ("x" * 300, "not an IP address or host name"),
        ("nat-a:0", "is not 1-65535"),
        ("nat-a:70000", "is not 1-65535"),
        ("nat-a:\u0662\u0662", "is not 1-65535"),
        ("[2001:db8::1", "unbalanced"),
        ("root@", "no address"),
    ],
)
def test_hostile_or_bad_hosts_are_refused(spec, words):
    with pytest.raises(UsageError) as info:
        targets.host_target(spec, where="--host")
    assert words in str(info.value) and repr(spec.strip()) in str(info.value)


def test_hosts_file(tmp_path):
    path = tmp_path / "hosts.txt"
    path.write_text("# NAT boxes\n\nroot@198.51.100.7  # nat-a\n  nat-b:2222\n[2001:db8::5]:22\n")
    got = targets.read_hosts_file(str(path))
    assert got == [
        Target(name="198.51.100.7", host="198.51.100.7", user="root"),
        Target(name="nat-b:2222", host="nat-b", port=2222),
        Target(name="[2001:db8::5]:22", host="2001:db8::5", port=22),
    ]
    path.write_text("nat-a\nnat-b $(id)\n")
    with pytest.raises(UsageError, match=rf"{path}:2: bad host 'nat-b \$\(id\)'"):
        targets.read_hosts_file(str(path))
    with pytest.raises(UsageError, match="No such file"):
        targets.read_hosts_file(str(tmp_path / "missing"))


def _parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_target_options(parser)
    return parser.parse_args(argv)


def targets_from_args(args):
    found, errors = resolve_targets_from_args(args)
    return found + [error.target for error in errors]


def test_targets_from_args_order_and_kinds(tmp_path):
    dump = tmp_path / "dump.txt"
    dump.write_text("")
    args = _parse(
        "--host", "nat-a", "--local", "--input", str(dump), "--host", "nat-a", "--input", "-"
    )
    got = targets_from_args(args)
    assert [(t.kind, t.name) for t in got] == [
        ("ssh", "nat-a"),
        ("local", socket.gethostname()),
        ("file", str(dump)),
        ("file", "stdin"),
    ]
    with pytest.raises(UsageError, match="no such file"):
        targets_from_args(_parse("--input", str(tmp_path / "nope")))
    with pytest.raises(UsageError, match="only once"):
        targets_from_args(_parse("--input", "-", "--input", "-"))
    empty = tmp_path / "empty.txt"
    empty.write_text("# nothing\n")
    with pytest.raises(UsageError, match="no hosts in the file"):
        targets_from_args(_parse("--hosts-file", str(empty)))


def test_discovery_is_the_default(monkeypatch):
    from natfleet.commands import awsopts

    calls = []

    def fake_discover(args=None, devices=None):
        calls.append(args)
        stopped = Target(name="nat-b", host="", instance_id="i-0def")
        return [Target(name="nat-a", host="10.0.0.5", instance_id="i-0abc")], [
            HostError(stopped, "no private address (instance stopped): start it", "connect")
        ]

    monkeypatch.setattr(awsopts, "targets_from_args", fake_discover)
    args = _parse("--address", "public", "--profile", "prod", "--tag", "Role=nat")
    assert [t.instance_id for t in targets_from_args(args)] == ["i-0abc", "i-0def"]
    found, errors = resolve_targets_from_args(args)
    assert [t.name for t in found] == ["nat-a"] and errors[0].message.endswith("start it")
    assert calls == [args, args] and args.profile == ["prod"] and args.address == "public"
    assert targets.resolve_targets(hosts=["nat-a"], discover=fake_discover)[0][0].host == "nat-a"
    assert len(calls) == 2  # a named target means no discovery
    with pytest.raises(UsageError, match="no targets"):
        targets.resolve_targets()


def test_ssh_options_from_args(tmp_path):
    key = tmp_path / "key"
    key.write_text("k")
    args = _parse(
        "--ssh-user", "ec2-user", "-i", str(key), "--proxy-jump", "admin@203.0.113.9:2222",
        "--known-hosts", str(tmp_path / "kh"), "--accept-new-host-keys", "--timeout", "4",
    )  # fmt: skip
    options = ssh_options_from_args(args)
    assert (options.user, options.identity_files, options.proxy_jump) == (
        "ec2-user",
        (str(key),),
        "admin@203.0.113.9:2222",
    )
    assert options.accept_new_host_keys and options.known_hosts == str(tmp_path / "kh")
    assert options.connect_timeout == 4.0  # connecting never gets more than the whole box
    assert read_options_from_args(args).timeout == 4.0
    assert not ssh_options_from_args(_parse()).accept_new_host_keys and _parse().parallel is None
    config = tmp_path / "natfleet.toml"
    config.write_text('[ssh]\nuser = "ec2-user"\ntimeout = 30\nconnect_timeout = 5\nparallel = 3\n')
    configured = _parse("--config", str(config))
    assert (
        ssh_options_from_args(configured).user,
        ssh_options_from_args(configured).connect_timeout,
    ) == (
        "ec2-user",
        5.0,
    )
    read = read_options_from_args(configured)
    assert (read.timeout, read.parallel) == (30.0, 3)
    assert read_options_from_args(_parse("--config", str(config), "--timeout", "7")).timeout == 7.0
    with pytest.raises(UsageError, match="no such key file"):
        ssh_options_from_args(_parse("-i", str(tmp_path / "nokey")))
    with pytest.raises(UsageError, match="--proxy-jump: bad host"):
        ssh_options_from_args(_parse("--proxy-jump", "b;id"))
    with pytest.raises(SystemExit):
        _parse("--timeout", "0")


LAB_LINE = (DATA / "tables" / "lab-box.txt").read_text().splitlines()[1]


@pytest.mark.parametrize(
    ("text", "refused"),
    [
        ("root:x:0:0:root:/root:/bin/bash\ndaemon:x:1:1::/usr/sbin:/usr/sbin/nologin\n", True),
        ("ipv4     2\n", True),  # what is left of a header, no tuples: not an entry
        ("\x1f\x8b\x08\x00binary\n", True),  # gzip
        (LAB_LINE + "\n", False),
        ("# saved by hand\n" + LAB_LINE + "\n", False),  # a line of junk, then the table
        (LAB_LINE.replace("dport=80", "dport=8x0") + "\n", False),  # damaged: counted later
        ("tcp      6 431999 ESTABLISHED src=192.0.2.1 dst=203.0.113.5 sport=1 dport=2 "
         "src=203.0.113.5 dst=198.51.100.1 sport=2 dport=1 [ASSURED] mark=0 use=1\n", False),
        ("", False),  # an empty table
        ("\n\n   \n", False),
        ("conntrack v1.4.7 (conntrack-tools): 0 flow entries have been shown.\n", False),
    ],
)  # fmt: skip
def test_input_must_look_like_a_conntrack_table(text, refused, tmp_path):
    path = tmp_path / "dump.txt"
    path.write_bytes(text.encode("latin-1"))
    if not refused:
        assert targets.input_target(str(path)).path == str(path)
        return
    with pytest.raises(TableError, match="not a conntrack table") as info:
        targets.input_target(str(path))
    assert info.value.exit_code == 1 and "line 1: " in str(info.value)


def test_only_the_first_lines_are_judged(tmp_path):
    """None of the first 20 non-blank lines is an entry: refused, whatever follows (the
    check reads at most 64 KiB, never the whole file)."""
    path = tmp_path / "dump.txt"
    path.write_text("junk\n\n" * targets.SNIFF_LINES + LAB_LINE + "\n")
    with pytest.raises(TableError, match="none of its first 20 lines"):
        targets.input_target(str(path))
    path.write_text("junk\n" * (targets.SNIFF_LINES - 1) + LAB_LINE + "\n")
    assert targets.input_target(str(path)).kind == "file"


def test_stdin_and_unreadable_files_are_not_judged_here(tmp_path, monkeypatch):
    """'-' cannot be looked at without consuming it; a file that cannot be opened is left to
    the reader, which says why for that target."""
    assert targets.input_target("-").name == "stdin"
    path = tmp_path / "dump.txt"
    path.write_text("junk\n")
    real_open = open

    def refuse(file, *args, **kwargs):
        if str(file) == str(path):
            raise PermissionError(13, "Permission denied", str(file))
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr("builtins.open", refuse)
    assert targets.input_target(str(path)).path == str(path)
