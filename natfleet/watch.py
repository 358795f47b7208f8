"""Watch many boxes at once: one long-lived agent session per box, its events merged.

Each box runs the agent's watch mode (natfleet/agent_watch.py) through the same constant
remote command as every read; its stdout goes, chunk by chunk as it arrives, into the watch
boundary (natfleet/answer_watch.py) in a thread of its own, under a deadline of the watch's
duration plus a margin. A remote box is asked for a zlib-compressed stream (``"encoding":
"zlib"``: the agent's program and answers are compressed by natfleet, not by SSH), a
``--local`` one for plain lines. :func:`watch_fleet` yields every box's checked records, in
the order they arrive, as :class:`BoxEvent`; a box that fails (before or during the watch) is one
event with its :class:`HostError`, and the others go on. Closing the generator (or Ctrl-C
in the consumer) stops every session: SSH channels are closed, local agents killed.

Example:
    >>> from natfleet.ssh import SshConnector, SshOptions
    >>> request = watch_request(interval=1.0, count=3)
    >>> for event in watch_fleet(targets, request, SshConnector(SshOptions())):
    ...     print(event.target.label, type(event.record).__name__, event.error)
    nat-a WatchStart None
    nat-a Tick None
"""

from __future__ import annotations

import logging
import os
import queue
import select
import shlex
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Callable, Optional

from natfleet import agent, agent_watch, remote
from natfleet.answer_watch import Record, WatchLimits, WatchReader
from natfleet.errors import TargetError, UsageError
from natfleet.limits import MESSAGE_CAP, Deadline, capped
from natfleet.models import HostError, Target

log = logging.getLogger(__name__)

MARGIN_SECONDS = 30.0  # a watch's deadline: its duration plus this (connecting, the last tick)
QUEUE_SIZE = 10000  # records waiting for the consumer; a slow screen slows the boxes' reads


@dataclass(frozen=True)
class BoxEvent:
    """One thing a watched box did: a checked ``record``, or its ``error`` (the box is done);
    ``done`` once per box, last. ``time`` is when natfleet received it (time.time())."""

    target: Target
    record: Optional[Record] = None
    error: Optional[HostError] = None
    done: bool = False
    time: float = 0.0


class Stopped(Exception):
    """The consumer stopped watching: the box's session is closed."""


def watch_request(
    filters: Optional[dict[str, Any]] = None,
    interval: float = agent_watch.INTERVAL_DEFAULT,
    duration: int = agent_watch.DURATION_DEFAULT,
    count: Optional[int] = None,
    events: bool = False,
    limit: Optional[int] = None,
) -> dict[str, Any]:
    """A watch request (docs/json.md "Watch"), checked here: UsageError when it is wrong.

    >>> watch_request(interval=0.5, count=2)["mode"]
    'watch'
    """
    request: dict[str, Any] = {
        "mode": "watch",
        "filters": filters or {},
        "interval": interval,
        "duration": duration,
        "count": count,
        "events": events,
        "limit": limit,
    }
    try:
        agent_watch.watch_request(request)
    except agent.AgentError as exc:
        raise UsageError(str(exc)) from None
    return request


class LocalExecutor:
    """Runs the agent bundle in a python3 child process on this machine: the Executor of
    ``--local`` watches (the same program and stdin as over SSH)."""

    def __init__(self, python: str = sys.executable) -> None:
        self.python = python

    def exec(
        self,
        target: Target,
        command: str,
        stdin: bytes,
        on_stdout: Callable[[bytes], None],
        deadline: Deadline,
        max_stderr: int = 65536,
        as_root: bool = True,
    ) -> remote.ExecResult:
        argv = shlex.split(command)
        if argv[:1] != ["python3"]:
            raise TargetError(f"{target.label}: the local executor runs only python3", "internal")
        argv[0] = self.python
        proc = subprocess.Popen(
            argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        assert proc.stdin and proc.stdout and proc.stderr
        received = 0
        err = b""
        try:
            proc.stdin.write(stdin)
            proc.stdin.close()
            streams = [proc.stdout, proc.stderr]
            while streams:
                if deadline.expired():
                    raise TargetError(f"{target.label}: the watch passed its deadline", "timeout")
                ready, _, _ = select.select(streams, [], [], min(0.5, max(deadline.left(), 0)))
                for stream in ready:
                    chunk = os.read(stream.fileno(), 1 << 16)
                    if not chunk:
                        streams.remove(stream)
                        continue
                    received += len(chunk)
                    if stream is proc.stdout:
                        on_stdout(chunk)
                    else:
                        err = (err + chunk)[-max_stderr:]
            status = proc.wait(5)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(5)
            proc.stdout.close()
            proc.stderr.close()
        return remote.ExecResult(status, err, received, "local", "")


def box_encoding(target: Target) -> str:
    """How a box sends its watch: ``zlib`` over a network, ``json`` from this machine.

    >>> box_encoding(Target("nat-a", host="nat-a")), box_encoding(Target("me", kind="local"))
    ('zlib', 'json')
    """
    return "json" if target.kind == "local" else "zlib"


def _watch_one(
    target: Target,
    request: dict[str, Any],
    executor: remote.Executor,
    limits: WatchLimits,
    put: Callable[[BoxEvent], None],
    stop: threading.Event,
    margin: float,
) -> None:
    """One box's watch; every outcome is put as events, ``done`` last."""
    started = time.monotonic()

    def record(rec: Record) -> None:
        put(BoxEvent(target, record=rec, time=time.time()))

    request = dict(request, encoding=box_encoding(target))
    reader = WatchReader(target.label, record, limits, request["encoding"])

    def feed(chunk: bytes) -> None:
        if stop.is_set():
            raise Stopped()
        reader.feed(chunk)

    error: Optional[HostError] = None
    try:
        deadline = Deadline(float(request.get("duration") or 0) + margin)
        result = executor.exec(
            target, remote.REMOTE_COMMAND, remote.agent_stdin(request), feed, deadline
        )
        if not reader.received:
            raise remote.remote_failure(result, target)
        reader.finish()
    except Stopped:
        pass
    except TargetError as exc:
        if not stop.is_set():
            kind = exc.kind if exc.kind != "error" else "agent"
            error = HostError(
                target, capped(str(exc), MESSAGE_CAP), kind, time.monotonic() - started
            )
    except Exception as exc:  # noqa: BLE001 - a bug, reported as this box's event
        log.debug("unexpected error watching %s", target.label, exc_info=True)
        message = f"{type(exc).__name__}: {capped(str(exc), MESSAGE_CAP)} (run with --debug)"
        error = HostError(target, message, "internal", time.monotonic() - started)
    if error is not None:
        put(BoxEvent(target, error=error, time=time.time()))
    put(BoxEvent(target, done=True, time=time.time()))


def watch_fleet(
    targets: Sequence[Target],
    request: dict[str, Any],
    executor: Optional[remote.Executor] = None,
    limits: Optional[WatchLimits] = None,
    margin: float = MARGIN_SECONDS,
) -> Iterator[BoxEvent]:
    """Watch every target at once; yields BoxEvents as they arrive until every box is done.
    SSH targets need ``executor``; ``local`` ones run the agent in a child process. A file
    target (``--input``) cannot be watched: UsageError."""
    for target in targets:
        if target.kind not in ("ssh", "local"):
            raise UsageError(
                f"{target.label}: a saved table cannot be watched (watch reads live boxes: "
                "--host, --hosts-file, --local or AWS discovery)"
            )
        if target.kind == "ssh" and executor is None:
            raise UsageError(f"{target.label}: no SSH connector given")
    events: queue.Queue[BoxEvent] = queue.Queue(QUEUE_SIZE)
    stop = threading.Event()

    def put(event: BoxEvent) -> None:
        while not stop.is_set():
            try:
                events.put(event, timeout=0.5)
                return
            except queue.Full:
                continue

    local = LocalExecutor()
    for target in targets:
        chosen = local if target.kind == "local" else executor
        assert chosen is not None
        threading.Thread(
            target=_watch_one,
            args=(target, request, chosen, limits or WatchLimits(), put, stop, margin),
            name="natfleet-watch",
            daemon=True,  # a box that never answers cannot keep natfleet from exiting
        ).start()
    left = len(targets)
    try:
        while left:
            try:
                event = events.get(timeout=0.5)
            except queue.Empty:
                continue
            if event.done:
                left -= 1
            yield event
    finally:
        stop.set()
