"""Boxes for unit tests: agent answers in the wire format, and a scripted transport.

A :class:`ScriptedExecutor` plays the transport (natfleet.remote.Executor): per target
name it waits, then streams given bytes into the boundary in small chunks (or raises), so
the real trust boundary and fleet code run on it.

Example:
    >>> executor = ScriptedExecutor({"nat-a": Script(wire(answer("summary")))})
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass
from typing import Any, Optional, Union

from natfleet import agent
from natfleet.errors import TargetError
from natfleet.remote import ExecResult
from tests.conftest import DATA

ROOT = str(DATA / "root")


def answer(mode: str, **request: Any) -> dict[str, Any]:
    """The agent's own answer (a dict, rows a list) for the fixture root's table."""
    return agent.handle({"mode": mode, **request}, agent.LocalSources(ROOT))


def wire(data: dict[str, Any]) -> bytes:
    """An answer dict as the agent writes it (docs/json.md): a header line, then rows."""
    header = {k: v for k, v in data.items() if k != "rows"}
    lines = []
    if "rows" in data:
        header["rows"] = len(data["rows"])
        lines = [json.dumps(row, separators=(",", ":")) for row in data["rows"]]
    return ("\n".join([json.dumps(header, separators=(",", ":")), *lines]) + "\n").encode()


@dataclass
class Script:
    """What one box does: wait ``delay``, then write ``out`` (or raise ``error``)."""

    out: bytes = b""
    delay: float = 0.0
    error: Optional[BaseException] = None
    stderr: bytes = b""
    status: Optional[int] = 0
    chunk: int = 4096
    forever: bytes = b""  # after ``out``, write this again and again (until the sink refuses)


class ScriptedExecutor:
    """A transport whose boxes do what their Script says; records peak concurrency."""

    def __init__(self, scripts: dict[str, Union[Script, bytes]]) -> None:
        self.scripts = {k: v if isinstance(v, Script) else Script(v) for k, v in scripts.items()}
        self.active = self.peak = 0
        self.lock = threading.Lock()
        self.commands: list[str] = []

    def exec(self, target, command, stdin, on_stdout, deadline, max_stderr=65536, as_root=True):
        script = self.scripts[target.name]
        self.commands.append(command)
        with self.lock:
            self.active += 1
            self.peak = max(self.peak, self.active)
        try:
            time.sleep(min(script.delay, max(0.0, deadline.left())))
            if script.delay and deadline.expired():
                raise TargetError(
                    f"{target.name} did not finish within {deadline.seconds:g} s", kind="timeout"
                )
            if script.error is not None:
                raise script.error
            sent = 0
            data = script.out
            while data:
                for i in range(0, len(data), script.chunk):
                    on_stdout(data[i : i + script.chunk])
                    sent += len(data[i : i + script.chunk])
                    if deadline.expired():
                        raise TargetError("deadline", kind="timeout")
                data = script.forever
        finally:
            with self.lock:
                self.active -= 1
        received = sent + len(script.stderr)
        return ExecResult(
            script.status, script.stderr[-max_stderr:], received, f"root@{target.host}:22", "root"
        )


# --- compact answers and varied tables (tests/test_stream.py) -----------------------------

LINES = DATA / "lines"


def compact(request: dict[str, Any], table: str, names: Optional[dict[str, str]] = None) -> bytes:
    """The compact answer (natfleet/agent_wire.py) a box with ``table`` sends for
    ``request``; ``names`` go into its header as the box's reverse lookups."""
    import zlib

    sources = agent.DumpSources({agent.TABLE_PROC: table})
    data = b"".join(agent.answer_bytes({**request, "encoding": "compact"}, sources))
    if names is None:
        return data
    text = zlib.decompress(data)
    head, rest = text.split(b"\n", 1)
    header = json.loads(head)
    header["names"] = names
    return zlib.compress(json.dumps(header, separators=(",", ":")).encode() + b"\n" + rest)


def _templates() -> list[str]:
    """One line of every kind in tests/data/lines that is in /proc/net/nf_conntrack form."""
    found = []
    for path in sorted(LINES.glob("*.txt")):
        for line in path.read_text().splitlines():
            if line.startswith(("ipv4 ", "ipv6 ")):
                found.append(line)
    return found


def varied_table(seed: int, flows: int, kinds: Optional[list[str]] = None) -> str:
    """A table of ``flows`` lines made from every kind of line in tests/data/lines (TCP,
    UDP, SCTP, UDPlite, DCCP, ICMP, GRE, IPv6, zones, counters, secctx, DNAT, local,
    routed), ports and last address bytes drawn from small ranges so that equal sort keys
    are frequent, within a box and across boxes; counters sometimes above 2**32."""
    import random
    import re

    rnd = random.Random(seed)
    pool = kinds or _templates()
    port = re.compile(r"\b(sport|dport|id)=(\d+)")
    v4 = re.compile(r"\b(src|dst)=(\d+\.\d+\.\d+)\.(\d+)")
    counters = re.compile(r"\b(packets|bytes)=(\d+)")
    lines = []
    for _ in range(flows):
        line = rnd.choice(pool)
        line = port.sub(lambda m: f"{m[1]}={int(m[2]) + rnd.choice((0, 0, 1, 2))}", line)
        line = v4.sub(lambda m: f"{m[1]}={m[2]}.{(int(m[3]) + rnd.choice((0, 0, 1))) % 256}", line)
        line = counters.sub(lambda m: f"{m[1]}={rnd.choice((0, 7, 5 << 33))}", line)
        lines.append(line)
    return "\n".join(lines) + "\n"


def names_for(table: str, every: int = 3) -> dict[str, str]:
    """Host names for some addresses of ``table`` (what a box's lookups could give)."""
    sources = agent.DumpSources({agent.TABLE_PROC: table})
    rows = agent.handle({"mode": "list", "filters": {"nat": list(agent.NAT_KINDS)}}, sources)
    addresses = sorted({r[end][key] for r in rows["rows"] for end in ("orig", "reply")
                        for key in ("src", "dst")})  # fmt: skip
    return {a: f"host-{i}.example" for i, a in enumerate(addresses) if i % every == 0}
