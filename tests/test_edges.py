"""The rough edges of first use (issue 12): each one as the user meets it on the command line.

Abbreviated options, a typo in a command, an unknown AWS region, an unreadable config, a file
that is not a conntrack table, ``-p 300``, hints that name a command that works in this
install (``sudo /path/to/.venv/bin/natfleet`` when sudo's PATH has no natfleet), lab and demo
messages for non-root, the box progress line on a terminal, shell completion and the man page.

Tests that need an unprivileged user run the real CLI under ``setpriv`` as nobody (65534);
they skip when this is not root.
"""

from __future__ import annotations

import argparse
import io
import os
import shutil
import stat
import subprocess
import sys
import tempfile
from pathlib import Path
from types import SimpleNamespace

import pytest
from botocore.parsers import ResponseParserError

from natfleet import api, aws
from natfleet.cli import build_parser, main
from natfleet.commands import demo, targetopts
from natfleet.errors import AwsError, LabError, TargetError
from natfleet.invocation import own_command, rerun_as_root, root_command
from natfleet.lab.system import natfleet_command
from natfleet.remote import ExecResult
from tests.conftest import DATA

REPO = Path(__file__).resolve().parents[1]
TABLE = str(DATA / "tables" / "lab-box.txt")
NOBODY = 65534


def parsers(parser: argparse.ArgumentParser | None = None):
    """Every parser of the command tree: natfleet, each command, each lab action."""
    parser = parser or build_parser()
    yield parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in dict.fromkeys(action.choices.values()):
                yield from parsers(child)


def commands() -> list[str]:
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    return list(sub.choices)


def usage_error(capsys, argv: list[str]) -> str:
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    return capsys.readouterr().err


def as_nobody(argv: list[str], home: str, **env: str) -> subprocess.CompletedProcess:
    """The real CLI as an unprivileged user (nobody), from this checkout."""
    if os.geteuid() != 0 or not shutil.which("setpriv"):
        pytest.skip("needs root and setpriv to run natfleet as an unprivileged user")
    command = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups"]
    command += [sys.executable, "-m", "natfleet", *argv]
    environment = {"PATH": os.environ.get("PATH", os.defpath), "HOME": home, "NO_COLOR": "1"}
    environment.update(env)
    return subprocess.run(
        command, cwd=REPO, env=environment, capture_output=True, text=True, timeout=120
    )


@pytest.fixture
def nobody_home():
    """A home folder nobody owns (pytest's tmp_path is root's 0700 and nobody cannot enter)."""
    home = tempfile.mkdtemp(prefix="natfleet-nobody-")
    os.chmod(home, 0o755)
    if os.geteuid() == 0:
        os.chown(home, NOBODY, NOBODY)
    yield home
    for folder, _dirs, _files in os.walk(home):
        os.chmod(folder, 0o755)
    shutil.rmtree(home)


def assert_clean_error(text: str) -> None:
    """A message a person can act on: no traceback, no Python exception name."""
    for bad in ("Traceback", "PermissionError", "internal error", "botocore.", "Errno"):
        assert bad not in text, text


# --- parsing ------------------------------------------------------------------------------


def test_every_parser_refuses_abbreviations():
    assert all(parser.allow_abbrev is False for parser in parsers())


@pytest.mark.parametrize(
    ("argv", "word"),
    [
        (["conns", "-n", "--input", TABLE, "--form", "json"], "--format"),
        (["summary", "--input", TABLE, "--inp", TABLE], "--input"),
        (["discover", "--reg", "us-east-1"], "--region"),
    ],
)
def test_an_abbreviated_option_is_a_usage_error_naming_the_option(argv, word, capsys):
    err = usage_error(capsys, argv)
    assert "unrecognized arguments" in err and f"did you mean {word!r}?" in err


@pytest.mark.parametrize(
    ("argv", "near"),
    [(["sumary"], "summary"), (["discovr"], "discover"), (["lab", "dwon"], "down")],
)
def test_a_typo_in_a_command_suggests_the_nearest(argv, near, capsys):
    err = usage_error(capsys, argv)
    assert f"unknown command {argv[-1]!r}: did you mean {near!r}?" in err


def test_a_typo_far_from_every_command_lists_them(capsys):
    err = usage_error(capsys, ["xyzzy"])
    assert "did you mean" not in err
    assert all(name in err for name in commands())


def test_a_bad_choice_suggests_too(capsys):
    err = usage_error(capsys, ["completion", "bsh"])
    assert "invalid choice: 'bsh': did you mean 'bash'?" in err


def test_debug_works_after_the_command_as_the_error_hint_says(capsys):
    assert main(["summary", "-o", "json", "--input", TABLE, "--debug"]) == 0
    assert main(["summary", "--input", TABLE]) == 0  # and off by default


@pytest.mark.parametrize("value", ["300", "256", "tcpx"])
def test_p_out_of_range_is_a_usage_error_before_any_box_is_read(value, monkeypatch, capsys):
    asked: list[str] = []

    class Recorder:
        def exec(self, target, *args, **kwargs):
            asked.append(target.host)
            raise AssertionError("a box was read")

    monkeypatch.setattr(api, "ssh_executor", lambda options: Recorder())
    code = None
    try:
        code = main(["conns", "-n", "-p", value, "--host", "198.51.100.7"])
    except SystemExit as exc:
        code = exc.code
    assert code == 2 and not asked
    err = capsys.readouterr().err
    assert f"'{value}'" in err and "protocol" in err


def test_a_protocol_number_in_range_is_accepted(capsys):
    assert main(["conns", "-n", "-p", "17", "--input", TABLE]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if " udp " in f" {line} "]
    assert len(rows) == 6  # the table's UDP entries


# --- AWS ----------------------------------------------------------------------------------


def test_an_unknown_region_is_a_clear_usage_error(session, capsys):
    assert main(["discover", "--region", "mars-1"]) == 2
    err = capsys.readouterr().err
    assert "--region 'mars-1': unknown AWS region" in err and "--region all" in err
    assert_clean_error(err)


def test_a_misspelt_region_suggests_the_nearest(session, capsys):
    assert main(["discover", "--region", "eu-wset-1"]) == 2
    assert "did you mean 'eu-west-1'?" in capsys.readouterr().err


def test_an_unknown_region_from_the_environment_is_an_aws_error(session, monkeypatch, capsys):
    monkeypatch.setenv("AWS_DEFAULT_REGION", "mars-1")
    assert main(["discover"]) == 1
    err = capsys.readouterr().err
    assert "region 'mars-1' (AWS_REGION or the profile): unknown AWS region" in err
    assert_clean_error(err)


def test_known_regions_come_from_botocore_not_from_aws(session):
    regions = aws.known_regions(session)
    assert {"us-east-1", "eu-west-1", "cn-north-1", "us-gov-west-1"} <= set(regions)
    aws.check_region(session, "ap-southeast-2")  # no error, no call


def test_an_answer_that_is_not_the_aws_api_is_an_aws_error():
    """What an endpoint answering an HTML error page gives (moto's server for mars-1)."""
    with pytest.raises(AwsError) as info, aws.translated("ec2:DescribeInstances", "mars-1"):
        raise ResponseParserError("Unable to parse response, invalid XML received")
    assert "not AWS's API" in str(info.value) and "in mars-1" in str(info.value)


# --- config -------------------------------------------------------------------------------


def _config_home(home: str, mode_file: int, mode_dir: int) -> None:
    folder = Path(home) / ".config" / "natfleet"
    folder.mkdir(parents=True)
    (folder / "config.toml").write_text("[ssh]\nparallel = 4\n")
    for path in (Path(home) / ".config", folder, folder / "config.toml"):
        os.chown(path, NOBODY, NOBODY)
    (folder / "config.toml").chmod(mode_file)
    folder.chmod(mode_dir)


@pytest.mark.parametrize(
    ("mode_file", "mode_dir"), [(0, 0o755), (0o644, 0)], ids=["file-000", "folder-000"]
)
def test_an_unreadable_config_is_a_config_error_not_a_traceback(mode_file, mode_dir, nobody_home):
    if os.geteuid() != 0:
        pytest.skip("needs root to make a home for nobody")
    _config_home(nobody_home, mode_file, mode_dir)
    done = as_nobody(["summary", "--input", TABLE], nobody_home)
    assert done.returncode == 1, done.stderr
    assert "config.toml: cannot read: Permission denied" in done.stderr
    assert_clean_error(done.stderr)


def test_an_unreadable_config_in_process(monkeypatch, tmp_path, capsys):
    """The same without root: looking at the config folder raises PermissionError."""
    monkeypatch.setenv("HOME", str(tmp_path))
    real_is_file = Path.is_file

    def is_file(path: Path) -> bool:
        if path.name == "config.toml":
            raise PermissionError(13, "Permission denied", str(path))
        return real_is_file(path)

    monkeypatch.setattr(Path, "is_file", is_file)
    assert main(["summary", "--input", TABLE]) == 1
    err = capsys.readouterr().err
    assert "config.toml: cannot read: Permission denied" in err
    assert_clean_error(err)


# --- --input ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "path", ["/etc/passwd", str(DATA / "malformed" / "prose.txt"), str(REPO / "README.md")]
)
def test_input_that_is_not_a_conntrack_table_is_an_error(path, capsys):
    assert main(["conns", "-n", "--input", path]) == 1
    captured = capsys.readouterr()
    assert f"--input {path!r}: not a conntrack table" in captured.err
    assert captured.out == ""


def test_a_damaged_table_is_still_read_and_its_bad_lines_counted(capsys):
    code = main(["conns", "-n", "--input", str(DATA / "malformed" / "bad-port.txt")])
    captured = capsys.readouterr()
    assert code == 0 and "not a conntrack table" not in captured.err
    assert "1 malformed conntrack line(s)" in captured.out + captured.err


def test_an_empty_table_is_an_empty_table(tmp_path, capsys):
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    assert main(["conns", "-n", "--input", str(empty)]) == 0


def test_a_table_that_starts_with_conntracks_count_line_is_a_table(tmp_path, capsys):
    dump = tmp_path / "dump.txt"
    lines = Path(TABLE).read_text().splitlines()
    dump.write_text("conntrack v1.4.7 (conntrack-tools): 23 flow entries have been shown.\n")
    dump.write_text(dump.read_text() + "\n".join(lines) + "\n")
    assert main(["conns", "-n", "--input", str(dump)]) == 0


# --- hints that work -----------------------------------------------------------------------


def test_root_command_is_one_that_works_after_sudo():
    command = root_command()
    assert command == f"sudo {natfleet_command()}"
    word = command.split()[1]
    assert word == "natfleet" or Path(word).is_file() or " -m natfleet" in command


def _helps() -> dict[str, str]:
    return {parser.prog: parser.format_help() for parser in parsers()}


def _sudo_commands(text: str) -> list[str]:
    words = text.replace('"$(', " ").split()
    return [" ".join(words[i : i + 2]) for i, w in enumerate(words) if w == "sudo"]


@pytest.mark.parametrize("prog", ["natfleet", "natfleet demo"])
def test_my_help_examples_run_as_root_in_this_install(prog):
    text = _helps()[prog]
    said = _sudo_commands(text)
    assert said, f"{prog} --help has no root example"
    assert all(c == root_command() or c == "sudo ./dev" for c in said), said


def test_every_help_example_runs_as_root_in_this_install():
    if root_command() == "sudo natfleet":
        pytest.skip("natfleet is on sudo's PATH here: 'sudo natfleet' works")
    wrong = {
        prog: [c for c in _sudo_commands(text) if c not in (root_command(), "sudo ./dev")]
        for prog, text in _helps().items()
    }
    assert not {prog: said for prog, said in wrong.items() if said}


def test_rerun_as_root_keeps_the_arguments():
    assert rerun_as_root(["local", "-nN", "-s", "a b"]) == f"{root_command()} local -nN -s 'a b'"


def test_no_instances_found_names_a_command_that_works(session, monkeypatch, capsys):
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    assert main(["conns", "-n"]) == 1
    err = capsys.readouterr().err
    assert f"see '{own_command()} discover'" in err


# --- the lab and the demo as non-root ------------------------------------------------------


@pytest.fixture
def not_root(monkeypatch, tmp_path):
    """This process seen as an unprivileged user; nothing of the lab may run (no namespace
    is touched even if a check were missing) and its state folder is a fresh one."""
    import natfleet.lab.system as system

    def refuse(*args, **kwargs):
        raise AssertionError(f"the lab ran {args!r} for a non-root user")

    monkeypatch.setattr(os, "geteuid", lambda: NOBODY)
    monkeypatch.setattr(system, "run", refuse)
    monkeypatch.setattr(system, "spawn", refuse)
    monkeypatch.setenv("NATFLEET_LAB_DIR", str(tmp_path / "lab"))


@pytest.mark.parametrize("action", ["up", "down"])
def test_lab_as_non_root_names_the_command_that_was_run(action, not_root, capsys):
    assert main(["lab", action]) == 1
    err = capsys.readouterr().err
    assert f"{root_command()} lab {action}" in err
    other = {"up": "down", "down": "up"}[action]
    assert f"lab {other}" not in err


def _unreadable_lab_dir() -> str:
    folder = tempfile.mkdtemp(prefix="natfleet-lab-")
    (Path(folder) / "state.json").write_text('{"boxes": []}')
    (Path(folder) / ".natfleet-lab").write_text("")
    os.chmod(folder, stat.S_IRWXU)  # 0700 root, like /run/natfleet-lab
    return folder


@pytest.mark.parametrize("action", ["status", "env"])
def test_lab_read_commands_as_non_root_name_themselves(action, nobody_home):
    folder = _unreadable_lab_dir()
    try:
        done = as_nobody(["lab", action], nobody_home, NATFLEET_LAB_DIR=folder)
    finally:
        shutil.rmtree(folder)
    assert done.returncode == 1
    assert f"{root_command()} lab {action}" in done.stderr, done.stderr
    assert "lab down" not in done.stderr and "lab up" not in done.stderr


@pytest.mark.parametrize("argv", [["local", "-n"], ["conns", "-n", "--local"]])
def test_reading_this_machine_as_non_root_advises_a_working_command(argv, nobody_home):
    done = as_nobody(argv, nobody_home)
    text = done.stdout + done.stderr
    assert "permission denied" in text.lower()
    assert f"{root_command()} {' '.join(argv)}" in text, text


class FakeLab:
    """natfleet.lab for the demo: a lab of ``boxes`` boxes up (None: none), recorded calls."""

    def __init__(self, boxes):
        self.boxes = boxes
        self.calls: list[str] = []
        self.sessions: list[str] = []

    def state(self, boxes: int):
        return SimpleNamespace(
            boxes=[SimpleNamespace(netns=f"nflab-box{i}") for i in range(1, boxes + 1)],
            env=lambda: {"NATFLEET_LAB_DIR": "/run/natfleet-lab"},
        )

    def install(self, monkeypatch):
        import natfleet.lab as lab

        def load_state():
            if self.boxes is None:
                raise LabError("the lab is not up")
            return self.state(self.boxes)

        def up(boxes, log):
            self.calls.append(f"up {boxes}")
            return self.state(boxes)

        monkeypatch.setattr(lab, "load_state", load_state)
        monkeypatch.setattr(lab, "is_running", lambda state: True)
        monkeypatch.setattr(lab, "up", up)
        monkeypatch.setattr(lab, "down", lambda log: self.calls.append("down"))
        monkeypatch.setattr(os, "geteuid", lambda: 0)
        monkeypatch.setattr(
            demo.subprocess, "run", lambda *a, **k: subprocess.CompletedProcess(a, 0)
        )
        from natfleet.lab import traffic

        def tcp_session(box):  # the demo's TCP connection during its watch: no process here
            self.sessions.append(box.netns)
            return SimpleNamespace(wait=lambda timeout: 0)

        monkeypatch.setattr(traffic, "tcp_session", tcp_session)


@pytest.mark.parametrize(("before", "calls"), [(None, ["up 3", "down"]), (3, ["up 3"])])
def test_demo_leaves_a_lab_it_did_not_start(before, calls, monkeypatch, capsys):
    lab = FakeLab(before)
    lab.install(monkeypatch)
    assert main(["demo"]) == 0
    assert lab.calls == calls
    assert lab.sessions == ["nflab-box1"]  # one TCP connection, through box 1, for the watch
    out = capsys.readouterr().out
    assert ("left up" in out) == (before is not None)
    if before is not None:
        assert f"{root_command()} lab down" in out


def test_demo_with_another_box_count_than_the_lab_up_changes_nothing(monkeypatch, capsys):
    lab = FakeLab(3)
    lab.install(monkeypatch)
    assert main(["demo", "--boxes", "2"]) == 1
    assert lab.calls == []
    assert f"'{root_command()} demo --boxes 3'" in capsys.readouterr().err


def test_demo_as_non_root_names_the_demo(not_root, capsys):
    assert main(["demo"]) == 1
    err = capsys.readouterr().err
    assert f"{root_command()} demo" in err and "lab up" not in err


# --- progress on a terminal ----------------------------------------------------------------


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


class Boxes:
    """A transport: every box answers with lab-box.txt's table, except ``failing`` ones."""

    def __init__(self, failing=()):
        self.failing = set(failing)

    def exec(self, target, command, stdin, on_stdout, deadline, max_stderr=65536, as_root=True):
        from natfleet import agent

        if target.host in self.failing:
            raise TargetError(f"cannot connect to {target.host}", kind="connect")
        size, rest = stdin.split(b"\n", 1)
        import json

        request = json.loads(rest[int(size) :])
        sources = agent.DumpSources(table_file=TABLE)
        out = "".join(line + "\n" for line in agent.answer_lines(request, sources))
        on_stdout(out.encode())
        return ExecResult(0, b"", len(out), f"root@{target.host}:22", "root")


def test_progress_from_the_start_then_erased_before_the_table(monkeypatch):
    screen = Terminal()
    monkeypatch.setattr(sys, "stdout", screen)
    monkeypatch.setattr(sys, "stderr", screen)
    monkeypatch.setenv("TERM", "xterm")
    monkeypatch.setattr(api, "ssh_executor", lambda options: Boxes(failing={"198.51.100.9"}))
    hosts = ["198.51.100.7", "198.51.100.8", "198.51.100.9"]
    code = main(["conns", "-n", "--parallel", "1", *[a for h in hosts for a in ("--host", h)]])
    assert code == 3
    text = screen.getvalue()
    shown = [part for part in text.split("\r\x1b[K") if part.startswith("natfleet: ")]
    assert shown[0] == "natfleet: 0/3 boxes answered, 0 failed, 3 pending"
    assert shown[-1].startswith("natfleet: 2/3 boxes answered, 1 failed, 0 pending")
    assert len(shown) == 4
    last = text.rindex("boxes answered")
    table = text.index("Proto") if "Proto" in text else text.index("PROTO")
    assert text.index("\r\x1b[K", last) < table  # erased before the table starts


def test_no_progress_text_when_stderr_is_not_a_terminal(monkeypatch, capsys):
    monkeypatch.setattr(api, "ssh_executor", lambda options: Boxes())
    assert main(["conns", "-n", "--host", "198.51.100.7"]) == 0
    err = capsys.readouterr().err
    assert "boxes answered" not in err and "\x1b[K" not in err


def test_box_progress_is_none_on_a_dumb_terminal(monkeypatch):
    monkeypatch.setenv("TERM", "dumb")
    assert targetopts.box_progress(Terminal()) is None
    monkeypatch.setenv("TERM", "xterm")
    assert isinstance(targetopts.box_progress(Terminal()), targetopts.BoxProgress)
    assert targetopts.box_progress(io.StringIO()) is None


# --- shell completion and the man page -----------------------------------------------------


def _output(capsys, argv: list[str]) -> str:
    assert main(argv) == 0
    return capsys.readouterr().out


def test_bash_completion_completes_commands_options_and_choices(capsys, tmp_path):
    script = tmp_path / "natfleet.bash"
    script.write_text(_output(capsys, ["completion", "bash"]))
    if not shutil.which("bash"):
        pytest.skip("no bash")

    def complete(*words: str) -> list[str]:
        line = " ".join(f"'{w}'" for w in words)
        shell = (
            f"source {script}; complete -p natfleet >/dev/null || exit 9; "
            f"COMP_WORDS=(natfleet {line}); COMP_CWORD={len(words)}; "
            '_shtab_natfleet; printf "%s\\n" "${COMPREPLY[@]}"'
        )
        done = subprocess.run(["bash", "-c", shell], capture_output=True, text=True, timeout=30)
        assert done.returncode == 0, done.stderr
        return done.stdout.split()

    assert sorted(complete("")) == sorted(commands())
    assert complete("su") == ["summary"]
    assert "--input" in complete("conns", "--inp")
    assert complete("completion", "") == ["bash", "zsh", "tcsh"]
    assert complete("lab", "") == ["up", "down", "status", "env"]


def test_bash_script_lists_every_command_and_its_options(capsys):
    script = _output(capsys, ["completion", "bash"])
    assert "complete -o bashdefault -F _shtab_natfleet natfleet" in script
    listed = next(line for line in script.splitlines() if line.startswith("_shtab_natfleet_sub"))
    assert listed.split("=(")[1].rstrip(")").split() == commands()
    for name in ("conns", "summary"):
        options = next(
            line for line in script.splitlines() if line.startswith(f"_shtab_natfleet_{name}_opt")
        )
        for option in ("--input", "--host", "--timeout", "--format", "--tag"):
            assert f" {option} " in options + " "


def test_zsh_and_tcsh_scripts(capsys):
    assert _output(capsys, ["completion", "zsh"]).startswith("#compdef natfleet")
    assert "complete natfleet" in _output(capsys, ["completion", "tcsh"])


def test_the_man_page_names_every_command_and_option_group(capsys):
    page = _output(capsys, ["manpage"])
    assert page.startswith('.TH NATFLEET "1"')
    flat = page.replace("\\-", "-").replace("\\", "").lower()
    assert "natfleet - show xlate" in flat
    for parser in parsers():
        assert parser.prog.lower() in flat
        for group in parser._action_groups:
            if group._group_actions and group.title not in ("options", "optional arguments"):
                assert group.title.lower() in flat, (parser.prog, group.title)
    if shutil.which("man"):
        shown = subprocess.run(
            ["man", "-l", "-"],
            input=page,
            capture_output=True,
            text=True,
            timeout=30,
            env={**os.environ, "MANPAGER": "cat", "MANWIDTH": "100"},
        )
        assert "NETSTAT-NAT FLAGS" in shown.stdout and "natfleet conns" in shown.stdout


@pytest.mark.parametrize(
    ("argv", "module"),
    [(["completion", "bash"], "shtab"), (["manpage"], "argparse_manpage.manpage")],
)
def test_without_the_extra_the_error_names_it(argv, module, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, module, None)  # import fails as if not installed
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert "pip install 'natfleet[completion]'" in err
    assert_clean_error(err)


def test_completion_and_manpage_have_help_with_examples(capsys):
    for name in ("completion", "manpage"):
        with pytest.raises(SystemExit):
            main([name, "--help"])
        text = capsys.readouterr().out
        assert "examples:" in text and f"natfleet {name}" in text
