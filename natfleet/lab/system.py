"""Running commands for the lab: the root and tools check, namespaces, background processes.

Every external command the lab runs goes through :func:`run` (errors become
:class:`~natfleet.errors.LabError` with the command's own message) or :func:`spawn` (a
process with a hard lifetime, left running after the lab returns).

Example:
    >>> netns_argv("nflab-box1", ["conntrack", "-C"])
    ['ip', 'netns', 'exec', 'nflab-box1', 'conntrack', '-C']
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, TypeVar

from natfleet.errors import LabError
from natfleet.invocation import SUDO_PATH, command_on

INSTALL_HINT = "apt-get install iptables conntrack netstat-nat openssh-server iproute2 sudo"
TOOLS = (
    "ip",
    "iptables-restore",
    "sysctl",
    "ss",
    "timeout",
    "ssh",
    "ssh-keygen",
    "sshd",
    "conntrack",
    "sudo",
    "visudo",
    "useradd",
    "usermod",
    "userdel",
)
SSHD = "/usr/sbin/sshd"


def netns_argv(netns: str, argv: Sequence[str]) -> list[str]:
    """The command line that runs ``argv`` inside network namespace ``netns``.

    Example: ``netns_argv("nflab-in1", ["ss", "-tn"])`` ->
    ``["ip", "netns", "exec", "nflab-in1", "ss", "-tn"]``
    """
    return ["ip", "netns", "exec", netns, *argv]


def natfleet_command() -> str:
    """This natfleet as a command that works after ``sudo`` (natfleet.invocation)."""
    return command_on(SUDO_PATH)


def check_can_run(action: str = "up") -> None:
    """Raise LabError saying what to do when not root or a needed tool is missing.

    Example (not root): ``the lab needs root (network namespaces, iptables): sudo natfleet lab
    down``
    """
    if os.geteuid() != 0:
        raise LabError(
            "the lab needs root (network namespaces, iptables): "
            f"sudo {natfleet_command()} lab {action}"
        )
    for tool in TOOLS:
        if not (shutil.which(tool) or os.path.exists(f"/usr/sbin/{tool}")):
            raise LabError(f"the lab needs '{tool}': {INSTALL_HINT}")


def run(argv: Sequence[str], input: Optional[str] = None, timeout: float = 30) -> str:
    """Run a command and return its stdout; a failure raises LabError with its stderr.

    Example: ``run(["ip", "netns", "list"])`` -> ``"nflab-box1 (id: 3)\\n..."``
    """
    try:
        done = subprocess.run(
            list(argv), input=input, capture_output=True, text=True, timeout=timeout
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise LabError(f"lab command failed: {' '.join(argv)}: {exc}") from exc
    if done.returncode != 0:
        detail = (done.stderr or done.stdout).strip()
        raise LabError(f"lab command failed ({done.returncode}): {' '.join(argv)}: {detail}")
    return done.stdout


def netns_list(prefix: str) -> list[str]:
    """Names of the network namespaces starting with ``prefix``."""
    names = (line.split()[0] for line in run(["ip", "netns", "list"]).splitlines() if line)
    return [name for name in names if name.startswith(prefix)]


def sysctl_in(netns: str, values: dict[str, object]) -> None:
    """Set sysctls inside one namespace only, e.g. ``{"net.ipv4.ip_forward": 1}``."""
    run(netns_argv(netns, ["sysctl", "-q", "-w", *(f"{k}={v}" for k, v in values.items())]))


PID_DIR = "pids"
T = TypeVar("T")


def wait_until(items: Sequence[T], done: Callable[[T], bool], seconds: float) -> list[T]:
    """Poll ``done(item)`` every 50 ms until all are true or ``seconds`` pass; the rest.

    Example: ``wait_until(boxes, lambda box: ssh_answers(box.mgmt_ip, 22), 10)`` -> ``[]``
    """
    deadline = time.monotonic() + seconds
    waiting = [item for item in items if not done(item)]
    while waiting and time.monotonic() < deadline:
        time.sleep(0.05)
        waiting = [item for item in waiting if not done(item)]
    return waiting


def spawn(
    netns: Optional[str], argv: Sequence[str], log_path: Path, state_dir: Path, lifetime: int
) -> int:
    """Start ``argv`` in ``netns`` (None: the root namespace) in the background; its pid.

    The process is detached (its own session, parent init) so it outlives the caller, with
    stdout and stderr in ``log_path``; ``timeout -k 5`` is the hard lifetime. Its pid is kept
    in ``<state_dir>/pids/`` for :func:`recorded_pids`.
    """
    full = ["timeout", "-k", "5", str(lifetime), *argv]
    if netns:
        full = netns_argv(netns, full)
    script = 'log=$1; shift; "$@" >"$log" 2>&1 </dev/null & echo $!'
    pid = int(run(["sh", "-c", script, "sh", str(log_path), *full]).strip())
    pid_dir = state_dir / PID_DIR
    pid_dir.mkdir(exist_ok=True)
    (pid_dir / f"{pid}.pid").write_text(f"{netns or '-'} {log_path.name}\n")
    return pid


def recorded_pids(state_dir: Path) -> list[int]:
    """The pids :func:`spawn` started for this state folder."""
    return [int(path.stem) for path in (state_dir / PID_DIR).glob("*.pid")]


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def stop_pids(pids: Sequence[int], must_contain: str, wait: float = 3.0) -> None:
    """SIGTERM the pids whose command line contains ``must_contain``, SIGKILL if still there.

    The command-line check keeps a recycled pid (another program) safe.
    """
    mine = [pid for pid in pids if must_contain in _cmdline(pid)]
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in mine:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                continue
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline and any(_cmdline(pid) for pid in mine):
            time.sleep(0.05)


def kill_netns_processes(netns: str) -> None:
    """SIGKILL every process still inside ``netns`` (``ip netns pids``)."""
    pids = [int(p) for p in run(["ip", "netns", "pids", netns]).split()]
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            continue
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline and run(["ip", "netns", "pids", netns]).split():
        time.sleep(0.05)


def alive(pid: int) -> bool:
    """True while a process ``pid`` exists (one of another user's counts too)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@dataclass(frozen=True)
class LabOwner:
    """Which process has a lab of one kind up: a JSON file ``{"pid", "dir"}``, so that two
    runs never build the same namespaces, and a dead run's leftovers are found.

    Example: ``LabOwner(Path("/run/nfhost.json"), "hostile boxes are up",
    "natfleet.lab.hostile")`` (that module's ``down`` removes leftovers).
    """

    path: Path
    busy: str  # what the refusal says first: "hostile boxes are up"
    module: str  # whose ``python3 -m MODULE down`` removes what a dead run left

    def read(self) -> dict[str, Any]:
        """The owner's ``{"pid", "dir"}``, or {} when none (or the file is not that)."""
        try:
            data = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def claim(self, remove_leftovers: Callable[[], None]) -> None:
        """Refuse (LabError) while a live process (this one too) has the lab up; otherwise
        remove what a dead one left."""
        owner = self.read()
        if owner and alive(int(owner.get("pid", 0))):
            raise LabError(
                f"{self.busy}, made by pid {owner['pid']} ({owner.get('dir')}); let it "
                f"finish, or stop it and run: python3 -m {self.module} down"
            )
        remove_leftovers()

    def record(self, folder: Path) -> None:
        """This process has the lab up, its files in ``folder``."""
        self.path.write_text(json.dumps({"pid": os.getpid(), "dir": str(folder)}) + "\n")

    def release(self) -> None:
        """Forget the owner, unless another process is it."""
        if int(self.read().get("pid", os.getpid())) == os.getpid():
            self.path.unlink(missing_ok=True)


OwnLabT = TypeVar("OwnLabT", bound="OwnLab")


class OwnLab:
    """A lab a test builds for itself and always removes (``with FaultLab() as lab:``):
    :meth:`start` checks root and the tools, calls ``_begin`` (claim it, make its folder),
    then ``_build``, and on any failure ``stop`` before it re-raises."""

    def __enter__(self: OwnLabT) -> OwnLabT:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self: OwnLabT) -> OwnLabT:
        """Build it all; LabError (after removing what was built) if it cannot."""
        check_can_run()
        self._begin()
        try:
            self._build()
        except BaseException:
            self.stop()
            raise
        return self

    def _begin(self) -> None:
        raise NotImplementedError

    def _build(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError
