"""Snapshots: every box's listing and summary saved in one gzip JSON-lines file, read back.

A snapshot (docs/json.md "Snapshot") is written atomically (a temporary file in the same
folder, fsync, rename), so an interrupted run never leaves half a file under the name. Read
back it is untrusted input like a box's answer: decompressed under a byte cap, one line at a
time under a line cap, and every box's records checked by the trust boundary
(natfleet.answer); a truncated or corrupt file is a :class:`SnapshotError` saying so.

Example:
    >>> from natfleet import api
    >>> targets, _ = api.resolve_targets(inputs=["tests/data/tables/lab-box.txt"])
    >>> path = os.path.join(tempfile.mkdtemp(), "lab.snap.gz")
    >>> write_snapshot(path, take(targets))["flows"]
    23
    >>> [box.target.name for box in read_snapshot(path).boxes]
    ['tests/data/tables/lab-box.txt']
"""

from __future__ import annotations

import contextlib
import gzip
import json
import os
import tempfile
import time
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Optional

from natfleet import agent
from natfleet.aggregate import target_json
from natfleet.answer import (
    Answer,
    AnswerError,
    AnswerReader,
    Summary,
    _dict,
    _int,
    _name,
    _opt_int,
    _str,
    check_summary,
    decode_line,
)
from natfleet.errors import NatfleetError
from natfleet.fleet import Outcome, ReadOptions, run_fleet
from natfleet.limits import MiB
from natfleet.models import HostError, HostResult, Target
from natfleet.output import json_line

SNAPSHOT_VERSION = 1
MAGIC = b"\x1f\x8b"  # gzip
HEADER_START = b'{"natfleet_snapshot":'
LINE_CAP = 1 * MiB  # one line of a snapshot, decompressed
SNAPSHOT_CAP = 4096 * MiB  # a whole snapshot, decompressed
LIST_REQUEST: dict[str, Any] = {
    "mode": "list",
    "filters": {"nat": list(agent.NAT_KINDS)},  # everything: -L and -R re-filter offline too
    "sort": None,
    "limit": None,
    "resolve": False,
}
SUMMARY_REQUEST: dict[str, Any] = {"mode": "summary", "top": 10}


class SnapshotError(NatfleetError):
    """A snapshot file cannot be written, or read back: missing, truncated, corrupt."""


@dataclass
class SnapshotBox:
    """One box of a snapshot: its listing (``answer``, every flow) and summary, or its error."""

    target: Target
    time: str  # ISO 8601 UTC, when its answers came
    found_by: str
    answer: Optional[Answer] = None
    summary: Optional[Summary] = None
    error: Optional[HostError] = None


@dataclass
class Snapshot:
    path: str
    generated: str
    boxes: list[SnapshotBox] = field(default_factory=list)


def found_by(target: Target) -> str:
    """How a target was named: ``aws`` (discovery), ``--host``, ``--local`` or ``--input``."""
    if target.instance_id:
        return "aws"
    return {"ssh": "--host", "local": "--local", "file": "--input"}.get(target.kind, target.kind)


def now_iso() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def take(
    targets: Sequence[Target],
    executor: Any = None,
    options: Optional[ReadOptions] = None,
    progress: Any = None,
) -> list[SnapshotBox]:
    """Read every target's full listing and its summary; one SnapshotBox each."""
    options = options or ReadOptions()
    listings = run_fleet(list(targets), LIST_REQUEST, executor, options, progress)
    summaries = run_fleet(list(targets), SUMMARY_REQUEST, executor, options)
    stamp = now_iso()
    boxes = []
    for target, listing, summary in zip(targets, listings, summaries):
        box = SnapshotBox(target, stamp, found_by(target))
        if isinstance(listing, HostError):
            box.error = listing
        else:
            box.answer = listing.answer
        if isinstance(summary, HostResult):
            box.summary = summary.answer.summary
        elif box.error is None:
            box.error = summary
        boxes.append(box)
    return boxes


def _target_record(target: Target) -> dict[str, Any]:
    data = target_json(target)
    data.update(kind=target.kind, region=target.region, user=target.user, port=target.port)
    return data


def snapshot_lines(boxes: Sequence[SnapshotBox]) -> list[str]:
    """The snapshot's lines (without compression), header first, ``end`` last."""
    lines = [
        json_line(
            {"natfleet_snapshot": SNAPSHOT_VERSION, "generated": now_iso(), "boxes": len(boxes)}
        )
    ]
    flows = 0
    for index, box in enumerate(boxes):
        base = {
            "index": index,
            "target": _target_record(box.target),
            "found_by": box.found_by,
            "time": box.time,
        }
        if box.error is not None or box.answer is None:
            error = box.error
            lines.append(
                json_line(
                    {
                        "record": "error",
                        **base,
                        "kind": error.kind if error else "internal",
                        "error": error.message if error else "no answer",
                    }
                )
            )
            continue
        listing = box.answer.to_json()
        listing.pop("summary", None)
        rows = [flow.to_json() for flow in box.answer.flows]
        lines.append(
            json_line(
                {
                    "record": "box",
                    **base,
                    "listing": listing,
                    "summary": box.summary.to_json() if box.summary else None,
                    "rows": len(rows),
                }
            )
        )
        lines.extend(json_line({"record": "flow", "box": index, "row": row}) for row in rows)
        flows += len(rows)
    lines.append(json_line({"record": "end", "boxes": len(boxes), "flows": flows}))
    return lines


def write_snapshot(path: str, boxes: Sequence[SnapshotBox]) -> dict[str, int]:
    """Write ``boxes`` to ``path`` atomically; returns ``{"boxes", "flows", "bytes"}``."""
    folder = os.path.dirname(os.path.abspath(path))
    lines = snapshot_lines(boxes)
    try:
        fd, tmp = tempfile.mkstemp(prefix=".natfleet-snapshot-", dir=folder)
    except OSError as exc:
        raise SnapshotError(f"cannot write a snapshot in {folder}: {exc.strerror or exc}") from None
    try:
        with os.fdopen(fd, "wb") as raw:
            with gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as out:
                for line in lines:
                    out.write(line.encode("ascii"))
            raw.flush()
            os.fsync(raw.fileno())
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
        dir_fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise SnapshotError(f"cannot write snapshot {path}: {exc.strerror or exc}") from None
    end = json.loads(lines[-1])
    return {"boxes": end["boxes"], "flows": end["flows"], "bytes": os.path.getsize(path)}


def is_snapshot(path: str) -> bool:
    """True when ``path`` is gzip whose first line is a snapshot header (a damaged snapshot
    still is one, and says what is wrong when read; any other gzip file is not)."""
    try:
        with open(path, "rb") as handle:
            if handle.read(2) != MAGIC:
                return False
        with gzip.open(path, "rb") as stream:
            return stream.read(len(HEADER_START)) == HEADER_START
    except (OSError, EOFError, zlib.error):
        return False


def _lines(path: str, cap: int) -> Any:
    """The snapshot's decompressed lines, each under LINE_CAP, all under ``cap``."""
    total = 0
    try:
        with gzip.open(path, "rb") as stream:
            while True:
                line = stream.readline(LINE_CAP + 1)
                if not line:
                    return
                if len(line) > LINE_CAP:
                    raise SnapshotError(
                        f"snapshot {path}: a line is longer than {LINE_CAP:,} bytes"
                    )
                total += len(line)
                if total > cap:
                    raise SnapshotError(f"snapshot {path}: more than {cap:,} bytes decompressed")
                yield line
    except EOFError:
        raise SnapshotError(
            f"snapshot {path} is truncated (the compressed data ends early): take it again"
        ) from None
    except (gzip.BadGzipFile, zlib.error) as exc:
        raise SnapshotError(f"snapshot {path} is corrupt ({exc}): take it again") from None
    except OSError as exc:
        raise SnapshotError(f"cannot read snapshot {path}: {exc.strerror or exc}") from None


def _target(data: Any) -> Target:
    t = _dict(data, "target", 16)
    kind = t.get("kind")
    if kind not in ("ssh", "local", "file"):
        raise AnswerError(f"target.kind: expected ssh, local or file, got {kind!r:.40}")
    return Target(
        name=_name(t.get("name"), "target.name", 1024) or "",
        host=_name(t.get("host"), "target.host", 1024) or "",
        kind=kind,
        user=_name(t.get("user"), "target.user", 64),
        port=_opt_int(t.get("port"), "target.port", 1, 65535),
        instance_id=_name(t.get("instance_id"), "target.instance_id", 64),
        region=_name(t.get("region"), "target.region", 64),
        path=_name(t.get("host"), "target.host", 1024) if kind == "file" else None,
    )


def read_snapshot(path: str, cap: int = SNAPSHOT_CAP) -> Snapshot:
    """Read and check a snapshot; SnapshotError when it is missing, truncated or corrupt."""
    if not os.path.isfile(path):
        raise SnapshotError(f"snapshot {path}: no such file")
    try:
        return _read(path, cap)
    except AnswerError as exc:
        raise SnapshotError(f"snapshot {path} is corrupt: {exc}") from None


def _read(path: str, cap: int) -> Snapshot:
    lines = _lines(path, cap)
    first = next(lines, None)
    if first is None:
        raise SnapshotError(f"snapshot {path} is empty")
    head = _dict(decode_line(first.rstrip(b"\n"), "the snapshot's first line"), "header", 8)
    if head.get("natfleet_snapshot") != SNAPSHOT_VERSION:
        raise SnapshotError(f"{path} is not a natfleet snapshot (version {SNAPSHOT_VERSION})")
    snap = Snapshot(path, _str(head.get("generated"), "generated", 40))
    announced = _int(head.get("boxes"), "boxes", 0, 1 << 20)
    pending: Optional[tuple[dict[str, Any], SnapshotBox, list[Any], int, Any]] = None
    ended = False

    def close_box() -> None:
        nonlocal pending
        if pending is None:
            return
        record, box, rows, expected, _index = pending
        if len(rows) != expected:
            raise AnswerError(f"box {box.target.label}: {len(rows)} flows, {expected} announced")
        listing = dict(
            _dict(record.get("listing"), "listing", 64), agent=agent.AGENT_VERSION, ok=True
        )
        listing["rows"] = rows
        reader = AnswerReader(box.target.label, LIST_REQUEST, 1 << 62)
        reader.feed_raw_answer(listing)
        box.answer = reader.finish()
        if record.get("summary") is not None:
            box.summary = check_summary(record["summary"])
        snap.boxes.append(box)
        pending = None

    for number, raw in enumerate(lines, 2):
        if ended:
            raise AnswerError(f"line {number}: a record after the end")
        data = _dict(decode_line(raw.rstrip(b"\n"), f"line {number}"), f"line {number}", 16)
        kind = data.get("record")
        if kind == "flow":
            if pending is None or data.get("box") != pending[4]:
                raise AnswerError(f"line {number}: a flow outside its box")
            pending[2].append(data.get("row"))
            continue
        close_box()
        if kind == "end":
            ended = True
            if (
                _int(data.get("boxes"), "end.boxes", 0, 1 << 20) != announced
                or len(snap.boxes) != announced
            ):
                raise AnswerError(f"{len(snap.boxes)} boxes, the header announced {announced}")
            continue
        if kind not in ("box", "error"):
            raise AnswerError(f"line {number}: unknown record {kind!r:.40}")
        target = _target(data.get("target"))
        box = SnapshotBox(
            target,
            _str(data.get("time"), "time", 40),
            _str(data.get("found_by"), "found_by", 40),
        )
        if kind == "error":
            message = _name(data.get("error"), "error", 4000) or ""
            error_kind = _str(data.get("kind"), "kind", 40)
            box.error = HostError(target, message, error_kind)
            snap.boxes.append(box)
            continue
        pending = (data, box, [], _int(data.get("rows"), "rows", 0, 1 << 32), data.get("index"))
    if not ended:
        raise SnapshotError(f"snapshot {path} is truncated (no end record): take it again")
    return snap


def outcomes(snap: Snapshot, request: dict[str, Any]) -> list[Outcome]:
    """The snapshot's boxes answering ``request`` offline: a listing filtered (and sorted)
    as the agent would, or the saved summary; a box saved as failed stays an error."""
    checked = agent.Request(request)
    results: list[Outcome] = []
    for box in snap.boxes:
        if box.error is not None or box.answer is None:
            results.append(box.error or HostError(box.target, "no answer", "input"))
            continue
        saved = box.answer
        answer = Answer(
            facts=saved.facts,
            lines=saved.lines,
            malformed=saved.malformed,
            warnings=[*saved.warnings, f"read from snapshot {snap.path} taken {box.time}"],
            seconds=saved.seconds,
            executor=saved.executor,
            own_session=saved.own_session,
            own_flows=saved.own_flows,
        )
        if checked.mode == "summary":
            if box.summary is None:
                results.append(HostError(box.target, "the snapshot has no summary of it", "input"))
                continue
            answer.summary = box.summary
            answer.matched = box.summary.flows
        elif checked.mode == "list":
            kept = [f for f in saved.flows if checked.matches(_fields(f), f.nat)]
            kept.sort(key=agent.sort_key(checked.sort or "src"))
            answer.matched = len(kept)
            answer.flows = kept[: checked.limit] if checked.limit else kept
        results.append(HostResult(box.target, answer))
    return results


def _fields(flow: agent.Flow) -> agent.Fields:
    return (
        flow.pnum, flow.timeout, flow.state, flow.osrc, flow.odst, flow.osp, flow.odp,
        flow.rsrc, flow.rdst, flow.rsp, flow.rdp, flow.l3, flow.gre,
    )  # fmt: skip


def outcomes_from_file(path: str, request: dict[str, Any]) -> list[Outcome]:
    """:func:`outcomes` of the snapshot at ``path`` (``--input SNAPSHOT``); SnapshotError."""
    return outcomes(read_snapshot(path), request)
