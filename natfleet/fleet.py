"""Run one agent request on many targets at once: one result or one error per target.

A bad host never aborts the group and is never dropped: it becomes a :class:`HostError` row
in target order. Every target is bounded in time.

Example:
    >>> from natfleet.ssh import SshConnector, SshOptions
    >>> results = run_fleet(targets, {"mode": "summary"}, SshConnector(SshOptions()),
    ...                     progress=tty_progress())
    >>> [type(r).__name__ for r in results]
    ['HostResult', 'HostError']
"""

from __future__ import annotations

import logging
import queue
import sys
import threading
import time
from typing import IO, Any, Callable, Optional, Protocol, Union

from natfleet import agent
from natfleet.errors import NatfleetError
from natfleet.models import HostError, HostResult, Target
from natfleet.text import printable

log = logging.getLogger(__name__)

Outcome = Union[HostResult, HostError]
Progress = Callable[[int, int, int], None]  # (done, total, failed)
GRACE_SECONDS = 5.0  # how much longer than the connector's own bound the fleet waits


class Connector(Protocol):
    """Anything that can run the agent on an SSH target (see natfleet.ssh.SshConnector)."""

    def run_agent(self, target: Target, request: dict[str, Any]) -> tuple[dict[str, Any], int]: ...


def _answer(target: Target, request: dict[str, Any], connector: Optional[Connector]):
    """(answer, bytes received) for one target; raises NatfleetError."""
    if target.kind == "ssh":
        if connector is None:
            raise NatfleetError(f"{target.label}: no SSH connector given")
        return connector.run_agent(target, request)
    if target.kind == "local":
        return agent.handle(request, agent.LocalSources("/")), 0
    if target.kind == "file":
        # The agent streams the file (or stdin for '-') and detects its format itself.
        return agent.handle(request, agent.DumpSources(table_file=target.path)), 0
    raise NatfleetError(f"{target.label}: unknown target kind {target.kind!r}")


def run_one(
    target: Target, request: dict[str, Any], connector: Optional[Connector] = None
) -> Outcome:
    """Read one target: ``ssh`` through ``connector``, ``local`` here, ``file`` from its dump.

    An ``ok: false`` answer becomes ``HostError(kind=answer["error"]["kind"])``.

    >>> run_one(Target(name="dump", kind="file", path="tests/data/x.txt"), {"mode": "list"})
    HostResult(target=..., answer={'ok': True, 'rows': [...], ...}, ...)
    """
    started = time.monotonic()
    try:
        answer, received = _answer(target, request, connector)
    except NatfleetError as exc:
        kind = getattr(exc, "kind", "error")
        message = printable(str(exc))  # it may quote what a box said
        return HostError(target, message, kind=kind, seconds=time.monotonic() - started)
    except OSError as exc:
        if target.kind != "file":
            raise  # not an input file: a bug, reported as this host's row by _guarded
        message = f"cannot read {target.path}: {exc.strerror or exc}"
        return HostError(target, message, kind="input", seconds=time.monotonic() - started)
    seconds = time.monotonic() - started
    if not answer.get("ok"):
        error = answer.get("error") or {}
        message = error.get("message") or "the agent answered ok: false without a message"
        kind = printable(str(error.get("kind") or "agent"))
        return HostError(target, printable(str(message)), kind=kind, seconds=seconds)
    return HostResult(target, answer, seconds=seconds, bytes_received=received)


def _guarded(target: Target, request: dict[str, Any], connector: Optional[Connector]) -> Outcome:
    """run_one, with an unexpected exception (a bug) turned into that target's error row."""
    started = time.monotonic()
    try:
        return run_one(target, request, connector)
    except Exception as exc:  # noqa: BLE001 - reported as this host's row, not swallowed
        log.debug("unexpected error on %s", target.label, exc_info=True)
        return HostError(
            target,
            f"internal error: {type(exc).__name__}: {exc} (run with --debug for details)",
            kind="error",
            seconds=time.monotonic() - started,
        )


def run_fleet(
    targets: list[Target],
    request: dict[str, Any],
    connector: Optional[Connector] = None,
    parallel: int = 16,
    progress: Optional[Progress] = None,
    timeout: Optional[float] = None,
) -> list[Outcome]:
    """Run ``request`` on every target, ``parallel`` at a time; results in target order.

    ``timeout`` bounds each target (default: the connector's ``max_seconds``); a target
    still running ``GRACE_SECONDS`` after it becomes a ``timeout`` HostError and the run
    moves on. ``progress(done, total, failed)`` is called after each target.
    """
    total = len(targets)
    if total == 0:
        return []
    bound = timeout if timeout is not None else getattr(connector, "max_seconds", None)
    if total == 1 and targets[0].kind != "ssh":
        # one local or file target: run it here, so the agent may fork summary workers
        # (it only does so in a process without other threads)
        outcome = _guarded(targets[0], request, connector)
        if progress:
            progress(1, 1, int(isinstance(outcome, HostError)))
        return [outcome]
    results: list[Optional[Outcome]] = [None] * total
    started: dict[int, float] = {}
    lock = threading.Lock()
    queued = iter(range(total))
    finished: queue.Queue = queue.Queue()

    def worker() -> None:
        while True:
            with lock:
                index = next(queued, None)
                if index is None:
                    return
                started[index] = time.monotonic()
            finished.put((index, _guarded(targets[index], request, connector)))

    def start_worker() -> None:
        # daemon threads: a box that never answers cannot keep natfleet from exiting
        threading.Thread(target=worker, name="natfleet-box", daemon=True).start()

    for _ in range(max(1, min(parallel, total))):
        start_worker()
    done_count = failed = 0

    def record(index: int, outcome: Outcome) -> None:
        nonlocal done_count, failed
        results[index] = outcome
        done_count += 1
        failed += isinstance(outcome, HostError)
        if progress:
            progress(done_count, total, failed)

    while done_count < total:
        try:
            index, outcome = finished.get(timeout=0.2)
            if results[index] is None:  # else: already given up on, its answer came late
                record(index, outcome)
        except queue.Empty:
            pass
        if bound is None:
            continue
        now = time.monotonic()
        with lock:
            late = [
                i
                for i, t0 in started.items()
                if results[i] is None and now - t0 > bound + GRACE_SECONDS
            ]
        for i in late:
            message = f"{targets[i].label} gave no answer within {bound:g} s; gave up waiting"
            record(i, HostError(targets[i], message, kind="timeout", seconds=now - started[i]))
            start_worker()  # its thread is stuck: the targets still queued get another
    return [r for r in results if r is not None]


def tty_progress(stream: Optional[IO[str]] = None) -> Optional[Progress]:
    """A progress callback writing one updating line to stderr, or None when it is not a TTY.

    >>> tty_progress()(3, 20, 1)      # stderr: "natfleet: 3/20 boxes answered, 1 failed"
    """
    out = stream or sys.stderr
    if not out.isatty():
        return None

    def show(done: int, total: int, failed: int) -> None:
        line = f"natfleet: {done}/{total} boxes answered"
        if failed:
            line += f", {failed} failed"
        out.write("\r\x1b[K" + line + ("\n" if done == total else ""))
        out.flush()

    return show
