"""Running the agent on a remote box through any transport that can exec a constant command.

The remote command is a constant (:data:`REMOTE_COMMAND`, documented in docs/json.md); the
agent's source and the request travel on stdin (:func:`agent_stdin`). A box without python3
gets the constant ``agent.RAW_COMMAND`` instead, and its dump is parsed here by the same agent
code. What the box prints goes, chunk by chunk, into the trust boundary
(:class:`natfleet.answer.AnswerReader`); nothing here looks inside it.

Example:
    >>> from natfleet.ssh import SshConnector, SshOptions
    >>> reader = AnswerReader(target, request, cap=4 << 20)
    >>> run_agent(SshConnector(SshOptions()), target, request, reader, Deadline(20))
    ExecResult(status=0, stderr=b'', received=1834, where='root@198.19.255.11:22', user='root')
    >>> reader.finish().facts.hostname
    'nflab-box1'
"""

from __future__ import annotations

import json
import logging
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Protocol

from natfleet import agent
from natfleet.errors import TargetError
from natfleet.limits import Deadline
from natfleet.models import Target

log = logging.getLogger(__name__)

# -I: no PYTHON* variables, no user site; -S: no site module (the agent is stdlib only, and
# this saves most of the interpreter's start-up on a box). The program that follows on stdin
# is zlib-compressed (the bundle of agent modules is about a quarter of its size so).
REMOTE_COMMAND = (
    "python3 -I -S -c 'import sys,zlib;n=int(sys.stdin.buffer.readline());"
    'exec(compile(zlib.decompress(sys.stdin.buffer.read(n)),"natfleet-agent","exec"))\''
)
RAW_WARNING = (
    "executor: raw (python3 not found on the box: the table was read with a shell command "
    "and parsed by natfleet)"
)
STDERR_SHOWN = 300  # characters of a box's stderr quoted in an error message


@dataclass
class ExecResult:
    """What a transport reports about one remote command (stdout went to the sink)."""

    status: Optional[int]  # the exit status; None when the channel closed without one
    stderr: bytes  # at most max_stderr bytes, the last ones
    received: int  # stdout + stderr bytes read
    where: str  # "user@host:port", for messages
    user: str  # the login user


class Executor(Protocol):
    """A transport: runs a constant command on a target (see natfleet.ssh.SshConnector)."""

    def exec(
        self,
        target: Target,
        command: str,
        stdin: bytes,
        on_stdout: Callable[[bytes], None],
        deadline: Deadline,
        max_stderr: int = 65536,
        as_root: bool = True,
    ) -> ExecResult: ...


class Sink(Protocol):
    """Where a box's stdout goes: the trust boundary's reader."""

    received: int

    def feed(self, chunk: bytes) -> None: ...

    def feed_raw_answer(self, answer: dict[str, Any]) -> None: ...


# The box-side modules, natfleet.<name>, in load order: all stdlib only, Python 3.6+. Each
# may import the ones before it (``from natfleet import agent``); agent.main() runs.
AGENT_MODULES = ("agent", "agent_wire", "agent_check", "agent_watch")
# Modules only one mode uses travel only with a request of that mode (the bundle stays small:
# an SSM command has a size limit, and every box reads it on every run)
MODE_MODULES = {"agent_check": "check", "agent_watch": "watch"}
# Run on the box: makes an empty ``natfleet`` package, loads each module under its own name
# (so dataclasses, pickling by the parallel workers and tracebacks see real module names)
BUNDLE_LOADER = """import sys,types
p=types.ModuleType("natfleet");p.__path__=[];sys.modules["natfleet"]=p
for n,s in SOURCES:
    m=types.ModuleType("natfleet."+n);m.__file__="natfleet-agent/"+n+".py"
    sys.modules[m.__name__]=m;setattr(p,n,m);exec(compile(s,m.__file__,"exec"),m.__dict__)
sys.exit(sys.modules["natfleet.agent"].main())
"""


def bundle_modules(mode: object) -> tuple[str, ...]:
    """The AGENT_MODULES a request of ``mode`` needs, in load order.

    >>> bundle_modules("summary"), bundle_modules("check")[-1]
    (('agent', 'agent_wire'), 'agent_check')
    """
    return tuple(m for m in AGENT_MODULES if MODE_MODULES.get(m, mode) == mode)


_BUNDLES: dict[tuple[str, ...], tuple[bytes, bytes]] = {}  # modules: (program, compressed)


def _bundle(mode: object) -> tuple[bytes, bytes]:
    modules = bundle_modules(mode)
    if modules not in _BUNDLES:
        here = Path(agent.__file__).parent
        sources = ",".join(f"({name!r},{(here / f'{name}.py').read_bytes()!r})" for name in modules)
        program = f"SOURCES=({sources},)\n{BUNDLE_LOADER}".encode("ascii")
        _BUNDLES[modules] = (program, zlib.compress(program, 9))
    return _BUNDLES[modules]


def agent_bundle(mode: object = "summary") -> bytes:
    """The agent program REMOTE_COMMAND runs for a request of ``mode``, uncompressed: the
    sources of :func:`bundle_modules` and a loader that runs ``agent.main()``.

    >>> program = agent_bundle()
    >>> program.startswith(b"SOURCES=((") and b"natfleet.agent" in program
    True
    """
    return _bundle(mode)[0]


def agent_stdin(request: dict[str, Any]) -> bytes:
    """What REMOTE_COMMAND reads: the compressed program's byte length on a line, the
    program (:func:`agent_bundle` for the request's mode, zlib), then the request.

    >>> head, rest = agent_stdin({"mode": "info"}).split(b"\\n", 1)
    >>> zlib.decompress(rest[: int(head)]) == agent_bundle("info")
    True
    """
    program = _bundle(request.get("mode", "list"))[1]
    return b"%d\n" % len(program) + program + json.dumps(request).encode("ascii")


class _Capped:
    """Collects a raw dump's bytes up to a cap (the raw fallback has no streaming parser)."""

    def __init__(self, cap: int, where: str) -> None:
        self.cap = cap
        self.where = where
        self.parts: list[bytes] = []
        self.size = 0

    def feed(self, chunk: bytes) -> None:
        self.size += len(chunk)
        if self.size > self.cap:
            raise TargetError(
                f"{self.where} sent more than {self.cap:,} bytes of raw table "
                "(raise [limits] in the config or --max-answer-mb)",
                kind="answer",
            )
        self.parts.append(chunk)


def run_agent(
    executor: Executor,
    target: Target,
    request: dict[str, Any],
    sink: Sink,
    deadline: Deadline,
    cap: int,
    max_stderr: int = 65536,
) -> ExecResult:
    """Run the agent on ``target``, its stdout streamed into ``sink``; raises TargetError.

    When the box has no python3, the raw command reads the table files and the agent's own
    parser runs here (``sink.feed_raw_answer``).
    """
    result = executor.exec(
        target, REMOTE_COMMAND, agent_stdin(request), sink.feed, deadline, max_stderr
    )
    if sink.received:
        return result
    if _python_missing(result.stderr):
        log.info("%s: python3 not found, reading the table with the raw command", result.where)
        raw = _Capped(cap, result.where)
        second = executor.exec(target, agent.RAW_COMMAND, b"", raw.feed, deadline, max_stderr)
        received = result.received + second.received
        if not raw.size:
            failure = remote_failure(second, target)
            if failure.kind == "agent":
                failure = TargetError(
                    f"python3 is not installed on {_label(target, second)} and the shell "
                    f"fallback read nothing: {_tail(second.stderr) or f'exit {second.status}'}",
                    kind="table",
                )
            raise failure
        text = b"".join(raw.parts).decode("ascii", "replace")
        answer = agent.handle(request, agent.DumpSources(agent.split_raw_dump(text)))
        answer.setdefault("warnings", []).append(RAW_WARNING)
        answer["executor"] = "raw"
        sink.feed_raw_answer(answer)
        return ExecResult(second.status, second.stderr, received, second.where, second.user)
    raise remote_failure(result, target)


def _python_missing(err: bytes) -> bool:
    text = err.decode("utf-8", "replace")
    return "python3" in text and ("not found" in text or "No such file" in text)


def _tail(err: bytes) -> str:
    """The last line of a box's stderr, at most STDERR_SHOWN characters (escaped later)."""
    text = err.decode("utf-8", "replace").strip()
    last = text.splitlines()[-1] if text else ""
    return last if len(last) <= STDERR_SHOWN else last[:STDERR_SHOWN] + "..."


def _label(target: Target, result: ExecResult) -> str:
    host = result.where.split("@", 1)[-1].rsplit(":", 1)[0].strip("[]")
    return target.label if target.label == host else f"{target.label} ({result.where})"


def remote_failure(result: ExecResult, target: Target) -> TargetError:
    """The error for a command that printed nothing on stdout, from its stderr.

    >>> remote_failure(ExecResult(1, b"sudo: a password is required", 30, "ec2-user@nat-a:22",
    ...     "ec2-user"), Target(name="nat-a", host="nat-a")).kind
    'sudo'
    """
    text = result.stderr.decode("utf-8", "replace")
    where = _label(target, result)
    last = _tail(result.stderr) or f"exit status {result.status}, no output"
    user = result.user
    if "sudo" in text and ("not found" in text or "No such file" in text):
        return TargetError(
            f"sudo is not installed on {where}: log in as root (--ssh-user root or "
            "root@HOST) or install sudo",
            kind="sudo",
        )
    if "password is required" in text or "terminal is required" in text or "askpass" in text:
        return TargetError(
            f"sudo asked for a password on {where}: allow 'NOPASSWD' for python3 (and sh, "
            f"for boxes without python3) for user {user!r}, or log in as root",
            kind="sudo",
        )
    if "sudoers" in text or "not allowed to execute" in text:
        return TargetError(
            f"user {user!r} may not use sudo on {where} ({last}): allow 'NOPASSWD' for "
            "python3, or log in as root",
            kind="sudo",
        )
    return TargetError(f"the agent failed on {where}: {last}", kind="agent")
