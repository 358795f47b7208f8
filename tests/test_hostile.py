"""The hostile-box suite: natfleet reading an honest lab box next to a box that answers anything.

Each case puts ONE hostile box (:mod:`natfleet.lab.hostile`: an sshd whose ``ForceCommand``
answers a scripted scenario, wire format v2 unless the case is about framing) next to ONE
honest lab box and runs the real CLI as a subprocess, ``conns -n`` or ``summary`` in the
formats listed per case. Every run must have: peak RSS (``os.wait4``) under 200 MB; wall
time within ``--timeout`` + 2 s (well under it when a byte cap, not the clock, should stop
it); the honest box's rows as an honest-only read prints them; no control character (other
than newline), DEL, C1 or bidi control in stdout or stderr; no line forged by a box; and
either exit code 3 with the hostile box as exactly one error row of the expected kind and
one stderr line (stdout is a file, not a terminal), or, for the valid control, exit code 0
with its rows printed. Free text that is not printable (the agent escapes its own) and a
names map for addresses that are not the box's own are answers that break the rules.

Scenario bytes live in ``tests/data/hostile/`` (see its README); the big or endless ones are
generated on the box. Example:
    $ sudo python3 -m pytest -q tests/test_hostile.py -k "drip or names"
    $ NATFLEET_HOSTILE_REPORT=/tmp/hostile.jsonl sudo python3 -m pytest -q tests/test_hostile.py
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

import pytest

from natfleet.lab.hostile import (
    HostileLab,
    Scenario,
    answer,
    by_mode,
    from_file,
    part_drip,
    part_endless,
    part_text,
)
from tests.conftest import need_lab

pytestmark = pytest.mark.lab

DATA = Path(__file__).parent / "data" / "hostile"
TIMEOUT = 8.0  # --timeout: the stated per-box deadline
HANG = TIMEOUT + 30  # a run still going after this is killed and fails
RSS_LIMIT_KB = 200 * 1024
MEMORY_CAP = 3 << 30  # RLIMIT_AS on the run: keeps a runaway natfleet from taking the machine
OUTPUT_SLACK = 256 * 1024  # what a failed box may add to stdout, and all of stderr
HOSTILE = "nfhost1"
MiB = 1 << 20
PARALLEL = 3  # natfleet runs at once: the runs of one case (same scenario) and their references
PAYLOAD = (  # the escapes and forged lines the static escape scenarios carry (JSON-escaped)
    "\x1b[2J\x1b]52;c;SGVsbG8=\x07\u202e\u2066\u200f\x7f\u009b\r\n"
    "nflab-box1 tcp   192.0.2.66:6666                203.0.113.5:443                ESTABLISHED\n"
    "natfleet: nflab-box1: hostkey: WARNING: REMOTE HOST IDENTIFICATION HAS CHANGED! "
    "host key CHANGED\r"
)
FORGED_ADDRESS = "192.0.2.66"  # only ever in a forged row
FOREIGN_NAME = "192.0.2.99"  # what names_foreign maps the honest box's addresses to
BAD_CHARS = re.compile(
    "[\x00-\x09\x0b-\x1f\x7f\x80-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]"
)
LINE_BREAKS = re.compile("[\n\r\x0b\x0c\x1c-\x1e\x85\u2028\u2029]")  # what a terminal may break on

Run = tuple[str, str, tuple[str, ...]]  # (command, format, flags)


def conns(fmt: str, *flags: str, names: bool = False) -> Run:
    """A ``conns`` run: ``-n`` unless ``names`` (then the box's names map may apply)."""
    return ("conns", fmt, flags if names else ("-n", *flags))


def summary(fmt: str, *flags: str) -> Run:
    return ("summary", fmt, flags)


CONNS_ALL = tuple(conns(f) for f in ("netstat", "table", "json", "csv"))
# without -n the honest box spends its whole resolve budget (5 s): few of these
CONNS_NAMED = (conns("netstat", names=True), conns("csv", names=True))
SUMMARY_ALL = (summary("table", "--details"), summary("json"), summary("csv"))


# ---- scenarios generated on the box (too big or endless for a file)


def valid_lines(mode: str) -> list[str]:
    """The lines of ``valid.<mode>.jsonl``: a well-formed v2 answer of the hostile box."""
    return (DATA / f"valid.{mode}.jsonl").read_text().splitlines(keepends=True)


def spliced(mode: str, old: str, start: str, fill: str, times: int, end: str) -> Scenario:
    """The valid answer with ``old`` in its header replaced by ``start + fill * times + end``.

    Example: ``spliced("list", '"warnings":[]', '"warnings":', "[", 3, "]]]")``
    """
    header, *rows = valid_lines(mode)
    before, after = header.split(old, 1)
    rest = part_text(end + after + "".join(rows))
    return answer(part_text(before + start), part_text(fill, times), rest)


def endless_yes(mode: str) -> Scenario:
    return answer(part_endless("y\n", seconds=60))


def endless_rows(mode: str) -> Scenario:
    """A header promising 10**9 rows, then one valid row line repeated for 60 s."""
    header, row = valid_lines("list")[:2]
    header = header.replace('"rows":2', '"rows":1000000000')
    return answer(part_text(header), part_endless(row, seconds=60))


def drip(mode: str) -> Scenario:
    return answer(part_drip("".join(valid_lines(mode)), every=1.0, seconds=120))


def huge_header(mode: str) -> Scenario:
    return spliced(mode, '"hostname":"nfhost1"', '"hostname":"', "a", 50 * MiB, 'nfhost1"')


def nested(mode: str) -> Scenario:
    return spliced(mode, '"warnings":[]', '"warnings":', "[", 100000, "]" * 100000)


def unclosed(mode: str) -> Scenario:
    return answer(part_text('{"agent":2,"ok":true,"hostname":"'), part_text("a", 600 * MiB))


def ok_false_50mb(mode: str) -> Scenario:
    head = '{"agent":2,"ok":false,"error":{"kind":"agent","message":"'
    return answer(part_text(head), part_text("A", 50 * MiB), part_text('"}}\n'), status=1)


def stderr_only(mode: str) -> Scenario:
    return answer(stderr=PAYLOAD + "\n", status=1)


def static(name: str) -> Callable[[str], Scenario]:
    """``tests/data/hostile/<name>.<mode>.jsonl``, else ``<name>.jsonl``."""

    def scenario(mode: str) -> Scenario:
        path = DATA / f"{name}.{mode}.jsonl"
        return from_file(path if path.exists() else DATA / f"{name}.jsonl")

    return scenario


@dataclass(frozen=True)
class Case:
    """One hostile behaviour, the runs that show it, and the error kinds it may give."""

    name: str
    runs: tuple[Run, ...]
    kinds: tuple[str, ...] = ("answer",)  # (): the box is read (what it says is made safe)
    quiet: bool = False  # nothing about the hostile box on stderr either (the control case)
    fast: bool = False  # a byte cap, not the deadline, must stop it: done in TIMEOUT / 2
    make: Optional[Callable[[str], Scenario]] = None  # default: static(name)
    says: str = ""  # the error row names this (the field the box got wrong), if given

    def scenario(self, mode: str) -> Scenario:
        return (self.make or static(self.name))(mode)


CASES = [
    # control: a well-formed v2 answer is read (so the other cases test their one defect)
    Case("valid", (conns("netstat"), summary("table")), kinds=(), quiet=True),
    # bytes and time
    Case("yes", (conns("netstat"), summary("json")), fast=True, make=endless_yes),
    Case("endless_rows", (conns("netstat"),), kinds=("answer", "timeout"), make=endless_rows),
    Case(
        "endless_rows_limit",
        (conns("csv", "--limit", "100"), summary("table")),
        fast=True,
        make=endless_rows,
    ),
    Case("drip", (conns("netstat"), summary("json")), kinds=("timeout",), make=drip),
    Case("huge_header", (conns("table"), summary("csv")), fast=True, make=huge_header),
    Case("nested", (conns("json"), summary("table")), fast=True, make=nested, says="nest"),
    Case("unclosed_600mb", (conns("netstat"), summary("json")), fast=True, make=unclosed),
    # framing and wrong types, list mode (one format each, every format covered)
    Case("rows_count_string", (conns("netstat"),), says="rows"),
    Case("rows_short", (conns("table"),), says="rows"),
    Case("rows_extra", (conns("json"),)),
    Case("row_not_object", (conns("csv"),), says="row"),
    Case("header_not_object", (conns("netstat"), summary("table"))),
    Case("row_proto_null", (conns("netstat"),), says="proto"),
    Case(
        "row_state_dict",
        (conns("netstat", "-r", "state"), conns("csv", "-r", "state")),
        says="state",
    ),
    Case("row_port_negative", (conns("table"),), says="sport"),
    Case("row_port_huge", (conns("json"),), says="dport"),
    Case("row_address_bad", (conns("csv"),), says="src"),
    Case("row_nat_unknown", (conns("netstat"),), says="nat"),
    Case("row_timeout_string", (conns("table"),), says="timeout"),
    Case("row_flags_string", (conns("json"),), says="flags"),
    Case("row_orig_list", (conns("csv"),), says="orig"),
    # wrong types, summary mode
    Case("by_nat_string", (summary("table"),), says="by_nat"),
    Case("pct_string", (summary("json"),), says="pct"),
    Case("pct_huge", (summary("csv"),), says="pct"),
    Case("dport_string", (summary("table"),), says="dport"),
    Case("port_range_strings", (summary("table", "--details"),), says="port_range"),
    Case("count_string", (summary("json"),), says="count"),
    Case("max_string", (summary("table", "--details"),), says="max"),
    Case("flows_string", (summary("csv"),), says="flows"),
    Case("top_sources_shape", (summary("table"),), says="top_sources"),
    Case("stats_string", (summary("json"),), says="stats"),
    Case("ena_counter_string", (summary("table", "--details"),), says="ena"),
    Case("summary_missing", (summary("csv"),), says="summary"),
    # non-finite numbers: NaN, Infinity, -Infinity tokens
    Case("nan_fill_pct", (summary("json"), summary("table")), says="NaN"),
    Case("infinity_pct", (summary("json"), summary("csv")), says="Infinity"),
    Case("neg_infinity_timeout", (conns("json"), conns("netstat")), says="Infinity"),
    Case("nan_count", (conns("json"), summary("json")), says="NaN"),
    # escapes and forged lines in every printed field: the agent escapes its free text, so
    # text that is not printable is an answer that breaks the rules (natfleet.answer)
    Case("esc_hostname", SUMMARY_ALL, says="hostname"),
    Case("esc_source", (summary("table", "--details"), summary("json")), says="source"),
    Case(
        "esc_warnings",
        (conns("netstat"), conns("json"), summary("table"), summary("csv")),
        says="warnings",
    ),
    Case(
        "esc_malformed",
        (conns("netstat"), conns("table"), summary("table", "--details"), summary("csv")),
        says="malformed",
    ),
    Case("esc_ena", SUMMARY_ALL, says="ena"),
    Case("esc_names", CONNS_NAMED, says="names"),  # names that are not host names
    Case("esc_row_state", CONNS_ALL, says="state"),
    Case("esc_row_proto", (conns("netstat"), conns("csv")), says="proto"),
    Case("esc_row_address", (conns("table"), conns("json")), says="src"),
    Case("esc_summary_keys", SUMMARY_ALL),
    Case("csv_formula", (conns("csv", names=True), summary("csv")), says="state"),
    Case(
        "esc_stderr",
        (conns("netstat"), conns("csv"), summary("table")),
        kinds=("agent", "answer"),
        make=stderr_only,
    ),
    # a names map renaming the honest box's addresses: an error, the honest rows unchanged
    Case(
        "names_foreign",
        CONNS_ALL + (conns("netstat", names=True), conns("json", names=True)),
        says="names",
    ),
    # ok: false with a crafted error (its message not printable: the agent escapes its own)
    Case(
        "ok_false_message",
        (conns("netstat"), conns("table"), summary("json"), summary("csv")),
        says="message",
    ),
    Case(
        "ok_false_kind", (conns("netstat"), summary("csv")), kinds=("answer", "agent"), says="kind"
    ),
    Case(
        "ok_false_50mb",
        (conns("netstat"), conns("csv"), summary("table"), summary("json")),
        kinds=("answer", "agent"),
        make=ok_false_50mb,
    ),
]
PARAMS = [
    pytest.param(case, run, id=f"{case.name}-{run[0]}-{run[1]}{''.join(run[2])}")
    for case in CASES
    for run in case.runs
]


# ---- running natfleet


@dataclass
class Result:
    argv: list[str]
    code: Optional[int]  # None: killed after HANG seconds
    out: str
    err: str
    out_bytes: int
    err_bytes: int
    rss_kb: int
    seconds: float
    problems: list[str]  # found while decoding the output


@dataclass
class Tool:
    """What natfleet needs to reach both kinds of box: one ssh_config and one known_hosts."""

    ssh_config: Path
    known_hosts: Path
    honest: str  # "nflab-box1"
    lab: HostileLab


def _wait(proc: subprocess.Popen, hang: float, peak_file: Path) -> tuple[Optional[int], int]:
    """(exit code or None if killed after ``hang`` s, peak RSS in KB) of natfleet under
    GNU time. The peak is what GNU time measured of its own child (forked from the small
    ``time`` process, so it is natfleet's alone: a process forked from this big pytest
    would count pytest's pages in its ru_maxrss until it execs)."""
    try:
        code: Optional[int] = proc.wait(timeout=hang)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # time and natfleet: the group it leads
        proc.wait()
        code = None
    text = peak_file.read_text().split() if peak_file.exists() else []
    peak = int(text[-1]) if text and text[-1].isdigit() else 0
    if code is not None and code >= 128 and code - 128 == signal.SIGKILL:
        code = None
    return code, peak


def _decoded(name: str, data: bytes, problems: list[str]) -> str:
    text = data.decode("utf-8", "replace")
    if "\ufffd" in text and b"\xef\xbf\xbd" not in data:
        problems.append(f"{name} is not UTF-8")
    return text


def natfleet(tool: Tool, run: Run, hosts: list[str]) -> Result:
    """Run ``python3 -m natfleet`` on ``hosts``; output to files, so nothing blocks on a pipe."""
    command, fmt, flags = run
    argv = [command, *(() if fmt == "netstat" else ("--format", fmt)), *flags]
    for host in hosts:
        argv += ["--host", host]
    argv += ["--timeout", f"{TIMEOUT:g}", "--ssh-config", str(tool.ssh_config)]
    argv += ["--known-hosts", str(tool.known_hosts)]
    env = {k: v for k, v in os.environ.items() if not k.startswith("NATFLEET_")}
    with (
        tempfile.TemporaryFile() as out,
        tempfile.TemporaryFile() as err,
        tempfile.TemporaryDirectory() as tmp,
    ):
        peak_file = Path(tmp) / "peak"
        started = time.monotonic()
        proc = subprocess.Popen(  # GNU time -> prlimit execs natfleet: time's child is natfleet
            ["/usr/bin/time", "-q", "-f", "%M", "-o", str(peak_file)]
            + ["prlimit", f"--as={MEMORY_CAP}", "--", sys.executable, "-m", "natfleet", *argv],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=err,
            env=env,
            start_new_session=True,  # a process group of its own, ended as one on a hang
        )
        code, rss_kb = _wait(proc, HANG, peak_file)
        seconds = time.monotonic() - started
        sizes = [f.seek(0, os.SEEK_END) for f in (out, err)]
        problems: list[str] = []
        texts = []
        for name, f in (("stdout", out), ("stderr", err)):
            f.seek(0)
            texts.append(_decoded(name, f.read(4 * MiB), problems))  # enough to judge it
    return Result(argv, code, texts[0], texts[1], sizes[0], sizes[1], rss_kb, seconds, problems)


# ---- reading the output back


def _first_block(text: str) -> list[str]:
    lines = text.split("\n")
    return lines[: lines.index("")] if "" in lines else lines


TABLE_KEYS = {"HOST": "target", "TCP EST": "tcp_snat_est"}  # table heading -> CSV key
UNKEYED = ("timeout", "error", "error_kind")  # not part of a row's identity: it counts down,
# and the error columns are there only when some box failed


def table_records(text: str) -> list[dict[str, str]]:
    """natfleet's table at the start of ``text`` (an UPPER CASE header, columns two or more
    spaces apart, cells starting under their heading) as records keyed like the CSV; a
    failed box's row, ``HOST  ERROR kind: message``, has only ``target`` and ``error``."""
    lines = _first_block(text)
    if not lines or lines[0] != lines[0].upper():
        return []
    heads = [(m.start(), m.group()) for m in re.finditer(r"\S+(?: \S+)*", lines[0])]
    starts = [start for start, _ in heads] + [None]
    keys = [TABLE_KEYS.get(h, h.lower().replace(" ", "_")) for _, h in heads]
    records = []
    for line in lines[1:]:
        if len(heads) > 1:
            label, rest = line[: starts[1]], line[starts[1] :]
        else:  # only failed boxes: the HOST column alone
            label, _, rest = line.partition("  ")
        if rest.lstrip().startswith("ERROR "):
            records.append({"target": label.strip(), "error": rest.lstrip()[6:]})
            continue
        cells = [line[a:b].strip() for a, b in zip(starts, starts[1:])]
        records.append(dict(zip(keys, cells)))
    return records


def csv_records(text: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(text)))


def strict_json(text: str, problems: list[str]) -> Any:
    def no_constant(token: str) -> None:
        raise ValueError(f"non-finite token {token} in the JSON output")

    try:
        return json.loads(text, parse_constant=no_constant)
    except ValueError as exc:
        problems.append(f"stdout is not strict JSON: {exc}")
        return None


def row_key(row: dict[str, Any]) -> tuple:
    o, r = row.get("orig") or {}, row.get("reply") or {}
    return (row.get("proto"), row.get("nat"), row.get("state"), o.get("src"), o.get("sport"),
            o.get("dst"), o.get("dport"), r.get("src"), r.get("dst"), r.get("dport"))  # fmt: skip


@dataclass
class Parsed:
    """One run's output split by box: the honest box's row keys and the hostile box's rows."""

    honest: list[tuple]  # comparable keys (no timeout: it counts down)
    established: Counter  # the keys of TCP ESTABLISHED rows: held open for the lab's life
    hostile: list[str]  # the hostile box's rows, as text
    hostile_errors: list[str]  # ... those that are error rows
    honest_summary: list[dict[str, Any]]


def parse(run: Run, result: Result, honest: str) -> Parsed:
    """Split the output of ``run`` into the honest and the hostile box's rows."""
    command, fmt, _ = run
    p = Parsed([], Counter(), [], [], [])
    problems = result.problems
    if fmt == "json":
        doc = strict_json(result.out, problems)
        if not isinstance(doc, dict) or doc.get("natfleet") != 1 or doc.get("command") != command:
            problems.append(f"stdout is not the natfleet JSON envelope: {str(doc)[:200]}")
            return p
        items = [*doc.get("rows", []), *doc.get("errors", [])]
        for item in items:
            label = (item.get("target") or {}).get("label") if isinstance(item, dict) else None
            if label == HOSTILE:
                p.hostile.append(json.dumps(item))
                if "error" in item:
                    p.hostile_errors.append(f"{item.get('kind')}: {item.get('error')}")
            elif label == honest and command == "summary":
                p.honest_summary.append(item)
            elif label == honest and "error" not in item:
                p.honest.append(row_key(item))
                if item.get("proto") == "tcp" and item.get("status") == "ESTABLISHED":
                    p.established[row_key(item)] += 1
        return p
    if fmt == "netstat":
        for line in result.out.split("\n"):
            tokens = line.split()
            if tokens and tokens[0] == HOSTILE:
                p.hostile.append(line)
                if "ERROR" in tokens[1:3]:
                    p.hostile_errors.append(line)
            elif tokens and tokens[0] == honest:
                p.honest.append(tuple(tokens))
                if tokens[1] == "tcp" and tokens[-1] == "ESTABLISHED":
                    p.established[tuple(tokens)] += 1
        return p
    records = table_records(result.out) if fmt == "table" else csv_records(result.out)
    for record in records:
        text = "  ".join(str(v) for v in record.values())
        if record.get("target") == HOSTILE:
            p.hostile.append(text)
            if record.get("error"):
                p.hostile_errors.append(text)
        elif record.get("target") == honest and command == "summary":
            p.honest_summary.append(record)
        elif record.get("target") == honest:
            key = tuple(v for k, v in record.items() if k not in UNKEYED)
            p.honest.append(key)
            if record.get("proto") == "tcp" and record.get("status") == "ESTABLISHED":
                p.established[key] += 1
    return p


# ---- checks: each returns what is wrong, so a failing case says everything at once


def bad_characters(name: str, text: str) -> list[str]:
    found = []
    for m in list(BAD_CHARS.finditer(text))[:3]:
        at = m.start()
        found.append(
            f"{name} has U+{ord(m.group()):04X} at {at}: {text[max(0, at - 30) : at + 30]!r}"
        )
    return found


def forged_lines(name: str, text: str, honest: str) -> list[str]:
    """Lines (as a terminal breaks them) that a box's text made look like natfleet's own."""
    found = []
    for line in LINE_BREAKS.split(text):
        start = line.lstrip(" \"'")
        if start.startswith(honest) and FORGED_ADDRESS in line:
            found.append(f"{name}: a row forged for {honest}: {line[:120]!r}")
        elif start.startswith(f"natfleet: {honest}") and "CHANGED" in line:
            found.append(f"{name}: a line forged for {honest}: {line[:120]!r}")
    return found[:3]


def csv_formulas(run: Run, text: str) -> list[str]:
    if run[1] != "csv":
        return []
    cells = [c for row in csv.reader(io.StringIO(text)) for c in row]
    return [f"CSV cell starts a formula: {c[:60]!r}" for c in cells if c[:1] and c[0] in "=+-@"][:3]


def bounds(case: Case, result: Result, reference: Result) -> list[str]:
    problems = []
    if result.code is None:
        problems.append(f"still running after {HANG:g} s: killed")
    if result.rss_kb >= RSS_LIMIT_KB:
        problems.append(f"peak RSS {result.rss_kb / 1024:.0f} MB (limit {RSS_LIMIT_KB // 1024})")
    if result.seconds > TIMEOUT + 2:
        problems.append(f"took {result.seconds:.1f} s with --timeout {TIMEOUT:g}")
    elif case.fast and result.seconds > TIMEOUT / 2:
        problems.append(f"took {result.seconds:.1f} s: a byte cap should stop it long before")
    if result.err_bytes > OUTPUT_SLACK:
        problems.append(f"{result.err_bytes} bytes on stderr (more than {OUTPUT_SLACK})")
    if result.out_bytes > reference.out_bytes + OUTPUT_SLACK:
        problems.append(f"{result.out_bytes} bytes on stdout ({reference.out_bytes} honest only)")
    return problems


def exit_and_hostile(case: Case, run: Run, result: Result, parsed: Parsed) -> list[str]:
    """Exit 3 and one error row of an expected kind; exit 0 and its rows when it is read."""
    problems = []
    want = 3 if case.kinds else 0
    if result.code != want:
        problems.append(f"exit code {result.code}, expected {want}")
    mentions = [line for line in result.err.split("\n") if HOSTILE in line]
    if not case.kinds:
        if parsed.hostile_errors or (case.quiet and mentions):
            problems.append(f"the box was not read: {(parsed.hostile_errors + mentions)[:2]}")
        want_rows = 1 if run[0] == "summary" else 2
        if len(parsed.hostile) != want_rows:
            problems.append(f"{len(parsed.hostile)} rows of the valid box, expected {want_rows}")
        return problems
    if len(parsed.hostile) != 1 or len(parsed.hostile_errors) != 1:
        shown = [row[:200] for row in parsed.hostile[:3]]
        problems.append(
            f"the hostile box has {len(parsed.hostile)} rows ({len(parsed.hostile_errors)} "
            f"errors), expected one error row: {shown}"
        )
    kinds = "|".join(case.kinds)
    for row in parsed.hostile_errors[:1]:
        if not re.search(rf"\b({kinds})\b", row):
            problems.append(f"error row without kind {kinds}: {row[:300]!r}")
        if case.says not in row:
            problems.append(f"error row does not name {case.says!r}: {row[:300]!r}")
    if len(mentions) != 1:
        problems.append(
            f"{len(mentions)} stderr lines name {HOSTILE}, expected one: "
            f"{[m[:200] for m in mentions[:3]]}"
        )
    elif not re.search(rf"\b({kinds})\b", mentions[0]):
        problems.append(f"stderr line without kind {kinds}: {mentions[0][:300]!r}")
    return problems


SUMMARY_FACTS = ("hostname", "source", "port_range", "addresses")


def honest_intact(run: Run, parsed: Parsed, reference: Parsed, honest: str) -> list[str]:
    """The honest box prints as when read alone (held TCP connections row for row)."""
    if run[0] == "summary":
        return honest_summary_intact(run, parsed, reference, honest)
    problems = []
    if not parsed.honest:
        problems.append(f"no rows of {honest}")
    if parsed.established != reference.established:
        missing = list((reference.established - parsed.established).elements())[:3]
        extra = list((parsed.established - reference.established).elements())[:3]
        problems.append(f"{honest}'s held connections differ: missing {missing}, extra {extra}")
    renamed = [key for key in parsed.honest if FOREIGN_NAME in " ".join(map(str, key))]
    if renamed:
        problems.append(f"{honest}'s rows renamed by another box: {renamed[:3]}")
    return problems


def honest_summary_intact(run: Run, parsed: Parsed, reference: Parsed, honest: str) -> list[str]:
    if len(parsed.honest_summary) != 1 or len(reference.honest_summary) != 1:
        return [f"{len(parsed.honest_summary)} summary rows of {honest}, expected one"]
    got, ref = parsed.honest_summary[0], reference.honest_summary[0]
    if run[1] == "json":
        keys = [k for k in SUMMARY_FACTS if k in ref]
        same = {k: got.get(k) for k in keys} == {k: ref[k] for k in keys}
        held = (got.get("summary") or {}).get("tcp_snat_established")
        same = same and held == ref["summary"]["tcp_snat_established"] and "error" not in got
    else:
        same = not got.get("error") and got.get("tcp_snat_est") == ref.get("tcp_snat_est")
    return [] if same else [f"{honest}'s summary changed: {str(got)[:300]} vs {str(ref)[:300]}"]


# ---- fixtures


@pytest.fixture(scope="module")
def tool(lab, tmp_path_factory) -> Iterator[Tool]:
    """One hostile box up for the module, and an ssh_config + known_hosts for both kinds."""
    need_lab()
    folder = tmp_path_factory.mktemp("hostile")
    with HostileLab(boxes=1, lifetime=1800) as hostile:
        ssh_config = folder / "ssh_config"
        ssh_config.write_text(
            Path(lab.ssh_config).read_text() + "\n" + hostile.ssh_config.read_text()
        )
        known_hosts = folder / "known_hosts"
        known_hosts.write_text(Path(lab.known_hosts).read_text() + hostile.known_hosts.read_text())
        yield Tool(ssh_config, known_hosts, lab.boxes[0].name, hostile)


def mode_of(run: Run) -> str:
    return "summary" if run[0] == "summary" else "list"


@pytest.fixture(scope="module")
def outcomes(tool: Tool) -> Callable[[Case, Run], tuple[Result, Result, Parsed]]:
    """(result, honest-only result, its parse) of one run of a case. The first time a case is
    asked, its scenario is scripted and all its runs, and the honest-only reads not yet taken,
    go at once (PARALLEL at a time): the lab's table holds still, so they see the same rows."""
    references: dict[Run, tuple[Result, Parsed]] = {}
    done: dict[tuple[str, Run], Result] = {}

    def go(case: Case) -> None:
        modes = {mode_of(run) for run in case.runs}
        tool.lab.script(tool.lab.boxes[0], by_mode(**{m: case.scenario(m) for m in modes}))
        todo: list[tuple[Run, Sequence[str]]] = [(run, [tool.honest, HOSTILE]) for run in case.runs]
        todo += [(run, [tool.honest]) for run in case.runs if run not in references]
        with ThreadPoolExecutor(PARALLEL) as pool:
            results = list(pool.map(lambda job: natfleet(tool, job[0], list(job[1])), todo))
        for (run, hosts), result in zip(todo, results):
            if len(hosts) == 2:
                done[(case.name, run)] = result
                continue
            assert result.code == 0, f"{tool.honest} alone: exit {result.code}: {result.err}"
            references[run] = (result, parse(run, result, tool.honest))

    def get(case: Case, run: Run) -> tuple[Result, Result, Parsed]:
        if (case.name, run) not in done:
            go(case)
        return (done.pop((case.name, run)), *references[run])

    return get


def _report(case: Case, result: Result, parsed: Parsed, problems: list[str]) -> None:
    """One JSON line per run in $NATFLEET_HOSTILE_REPORT, if set: the note's RSS and time."""
    path = os.environ.get("NATFLEET_HOSTILE_REPORT")
    if path:
        error = (parsed.hostile_errors or [""])[0][:300]
        line = {"case": case.name, "run": " ".join(result.argv[:-6]), "exit": result.code,
                "rss_mb": round(result.rss_kb / 1024, 1), "seconds": round(result.seconds, 2),
                "error": error, "problems": problems}  # fmt: skip
        with open(path, "a") as f:
            f.write(json.dumps(line) + "\n")


# ---- the tests


def test_hostile_lab_answers_scripts_and_goes_away_without_a_trace():
    """The lab part: a box answers the scenario with its stderr and status, reads stdin,
    ends a drip by itself, and stop() leaves no namespace, link, file or process."""
    need_lab()
    with HostileLab(boxes=2, lifetime=60) as hostile:
        box = hostile.boxes[1]
        hostile.script(box, answer(part_text("out\n", 3), stderr="err\n", status=7))
        ssh = ["ssh", "-F", str(hostile.ssh_config), "-o", "BatchMode=yes", box.name, "cmd"]
        done = subprocess.run(ssh, input=b"x" * (4 * MiB), capture_output=True, timeout=30)
        assert (done.returncode, done.stdout, done.stderr) == (7, b"out\n" * 3, b"err\n")
        hostile.script(box, answer(part_drip("ab", every=0.2, seconds=1)))
        started = time.monotonic()
        done = subprocess.run(ssh, capture_output=True, timeout=30)
        assert done.stdout.startswith(b"abab") and time.monotonic() - started < 10
        names = [b.name for b in hostile.boxes]
        folder, pids = hostile.dir, list((hostile.dir / "pids").glob("*.pid"))
        assert pids and Path(f"/etc/netns/{names[0]}/resolv.conf").read_text().startswith(
            "nameserver 127.0.0.1"
        )
    netns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
    assert not [n for n in names if n in netns.split()]
    assert "nfhost" not in links
    assert not folder.exists() and not any(Path("/etc/netns").glob("nfhost*"))
    assert not [p for p in pids if _alive(int(p.stem))]


def _alive(pid: int) -> bool:
    """A process that still runs (a zombie waiting for init to reap it has no cmdline)."""
    try:
        return bool(Path(f"/proc/{pid}/cmdline").read_bytes())
    except OSError:
        return False


@pytest.mark.parametrize("case,run", PARAMS)
def test_hostile_box_next_to_an_honest_one(tool, outcomes, record_property, case, run):
    result, ref_result, ref = outcomes(case, run)
    parsed = parse(run, result, tool.honest)
    problems = list(result.problems)
    problems += bounds(case, result, ref_result)
    for name, text in (("stdout", result.out), ("stderr", result.err)):
        problems += bad_characters(name, text) + forged_lines(name, text, tool.honest)
    problems += csv_formulas(run, result.out)
    problems += exit_and_hostile(case, run, result, parsed)
    problems += honest_intact(run, parsed, ref, tool.honest)
    record_property("rss_mb", round(result.rss_kb / 1024, 1))
    record_property("seconds", round(result.seconds, 2))
    _report(case, result, parsed, problems)
    assert not problems, (
        f"{case.name}: natfleet {' '.join(result.argv[:-6])} (exit {result.code}, "
        f"{result.rss_kb / 1024:.0f} MB, {result.seconds:.1f} s):\n  " + "\n  ".join(problems)
    )
