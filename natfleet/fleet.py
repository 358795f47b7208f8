"""Read many targets at once: one checked answer or one error per target, never an abort.

Each target is read inside its own guard: the transport streams the box's answer into the
trust boundary (natfleet.answer) under the per-box deadline and byte cap, and whatever goes
wrong, from a refused connection to a field that does not check, becomes that target's
:class:`HostError` row. Results come back in target order.

Example:
    >>> from natfleet.ssh import SshConnector, SshOptions
    >>> results = run_fleet(targets, {"mode": "summary"}, SshConnector(SshOptions()),
    ...                     ReadOptions(timeout=20))
    >>> [type(r).__name__ for r in results]
    ['HostResult', 'HostError']
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Union

from natfleet import agent, remote
from natfleet.answer import AnswerReader
from natfleet.config import SshConfig
from natfleet.errors import TargetError
from natfleet.limits import MESSAGE_CAP, AnswerLimits, Deadline, capped
from natfleet.models import HostError, HostResult, Target

log = logging.getLogger(__name__)

Outcome = Union[HostResult, HostError]
Progress = Callable[[int, int, int], None]  # (done, total, failed)
GRACE_SECONDS = 1.0  # how long past its deadline a stuck target is waited for


@dataclass(frozen=True)
class ReadOptions:
    """How boxes are read: the per-box deadline (connecting, running, reading and checking
    all count), the byte caps, and how many boxes at once. Defaults: config.py."""

    timeout: float = SshConfig.timeout
    parallel: int = SshConfig.parallel
    limits: AnswerLimits = field(default_factory=AnswerLimits)


def _read(
    target: Target,
    request: dict[str, Any],
    executor: Optional[remote.Executor],
    options: ReadOptions,
    deadline: Deadline,
) -> tuple[Any, int]:
    """(checked Answer, bytes received) for one target; raises TargetError."""
    limits = options.limits
    cap = limits.for_mode(request.get("mode", "list"), request.get("limit"))
    reader = AnswerReader(target.label, request, cap, limits.line_bytes)
    received = 0
    if target.kind == "ssh":
        if executor is None:
            raise TargetError(f"{target.label}: no SSH connector given", kind="internal")
        result = remote.run_agent(
            executor, target, remote_request(request), reader, deadline, cap, limits.stderr_bytes
        )
        received = result.received
    elif target.kind == "local":
        _in_process(reader, request, agent.LocalSources("/"))
    elif target.kind == "file":
        # the agent streams the file (or stdin for '-') and detects its format itself
        if target.path != "-":
            try:
                with open(str(target.path), "rb"):
                    pass
            except OSError as exc:
                message = f"cannot read {target.path}: {exc.strerror or exc}"
                raise TargetError(message, kind="input") from None
        _in_process(reader, request, agent.DumpSources(table_file=target.path))
    else:
        raise TargetError(f"unknown target kind {target.kind!r}", kind="internal")
    return reader.finish(), received


COMPACT_MODES = ("list", "summary", "info")


def remote_request(request: dict[str, Any]) -> dict[str, Any]:
    """The request as a box gets it: listings, summaries and info answer compact
    (``"encoding": "compact"``: compressed, rows in column blocks; natfleet/agent_wire.py)
    unless the request says otherwise.

    >>> remote_request({"mode": "list"})
    {'mode': 'list', 'encoding': 'compact'}
    """
    if request.get("mode", "list") in COMPACT_MODES and "encoding" not in request:
        return {**request, "encoding": "compact"}
    return request


def _in_process(reader: AnswerReader, request: dict[str, Any], sources: agent.Sources) -> None:
    """This machine's table or a dump file, read by the agent code in this process: a
    listing's flows go to the boundary as the agent made them (as ``natfleet local`` shows
    them), anything else as the agent's answer dict."""
    if request.get("mode", "list") != "list":
        reader.feed_raw_answer(agent.handle(request, sources))
        return
    try:
        answer, flows = agent.run(agent.Request(request), sources)
    except Exception as exc:  # noqa: BLE001 - the agent's own failure answer, as handle() makes
        reader.feed_raw_answer(agent._failure_for(exc))
        return
    reader.feed_local(answer, flows)


def run_one(
    target: Target,
    request: dict[str, Any],
    executor: Optional[remote.Executor] = None,
    options: ReadOptions = ReadOptions(),
) -> Outcome:
    """Read one target: ``ssh`` through ``executor``, ``local`` here, ``file`` from its dump.
    Every failure, a bug included, is this target's HostError.

    >>> run_one(Target(name="dump", kind="file", path="tests/data/x.txt"), {"mode": "list"})
    HostResult(target=..., answer=Answer(...), ...)
    """
    started = time.monotonic()
    deadline = Deadline(options.timeout)
    try:
        answer, received = _read(target, request, executor, options, deadline)
    except TargetError as exc:
        message = capped(str(exc), MESSAGE_CAP)
        return HostError(target, message, exc.kind, time.monotonic() - started)
    except Exception as exc:  # noqa: BLE001 - a bug, reported as this target's row
        log.debug("unexpected error on %s", target.label, exc_info=True)
        message = capped(str(exc), MESSAGE_CAP)
        message = f"{type(exc).__name__}: {message} (run with --debug for details)"
        return HostError(target, message, "internal", time.monotonic() - started)
    return HostResult(target, answer, time.monotonic() - started, received)


def run_fleet(
    targets: list[Target],
    request: dict[str, Any],
    executor: Optional[remote.Executor] = None,
    options: ReadOptions = ReadOptions(),
    progress: Optional[Progress] = None,
) -> list[Outcome]:
    """Run ``request`` on every target, ``options.parallel`` at a time; results in target
    order. A target still running ``GRACE_SECONDS`` past its deadline becomes a ``timeout``
    HostError and the run moves on. ``progress(done, total, failed)`` is called at the start
    (0 done) and after each target.
    """
    total = len(targets)
    if total == 0:
        return []
    if progress:
        progress(0, total, 0)  # said from the start: nothing is pending unannounced
    if total == 1 and targets[0].kind != "ssh":
        # one local or file target: run it here, so the agent may fork summary workers
        # (it only does so in a process without other threads)
        outcome = run_one(targets[0], request, executor, options)
        if progress:
            progress(1, 1, int(isinstance(outcome, HostError)))
        return [outcome]
    results: list[Optional[Outcome]] = [None] * total
    started: dict[int, float] = {}
    lock = threading.Lock()
    queued = iter(range(total))
    finished: queue.Queue[tuple[int, Outcome]] = queue.Queue()

    def worker() -> None:
        while True:
            with lock:
                index = next(queued, None)
                if index is None:
                    return
                started[index] = time.monotonic()
            finished.put((index, run_one(targets[index], request, executor, options)))

    def start_worker() -> None:
        # daemon threads: a box that never answers cannot keep natfleet from exiting
        threading.Thread(target=worker, name="natfleet-box", daemon=True).start()

    for _ in range(max(1, min(options.parallel, total))):
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
        now = time.monotonic()
        with lock:
            late = [
                i
                for i, t0 in started.items()
                if results[i] is None and now - t0 > options.timeout + GRACE_SECONDS
            ]
        for i in late:
            message = f"{targets[i].label} gave no answer within {options.timeout:g} s"
            record(i, HostError(targets[i], message, kind="timeout", seconds=now - started[i]))
            start_worker()  # its thread is stuck: the targets still queued get another
    return [r for r in results if r is not None]
