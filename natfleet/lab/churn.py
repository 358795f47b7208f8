"""A bounded, steady churn of a namespace's conntrack table, for measuring ``natfleet watch``.

Every ``period`` seconds :func:`churn` loads ``per_round`` new entries with ``conntrack -R``
(natfleet.lab.bench.table_entries, after the first ``start`` of that table) that expire
``timeout`` seconds later; once the first ones expire, each period sees about ``per_round``
flows appear and as many go away. It stops by itself after ``rounds`` rounds (or when
``stop`` is set), sends no traffic at all and touches only ``netns``'s table.

Example (a table of 250,000 already loaded with load_table from entry 0):
    >>> churn("nfwatm", 1000, rounds=10, period=2.0, inside=["198.18.90.10"],
    ...       nat_ip="198.18.90.65", start=250_000)
    10000
"""

from __future__ import annotations

import tempfile
import threading
import time
from collections.abc import Sequence
from typing import Optional

from natfleet.errors import LabError
from natfleet.lab.bench import ENTRY_KINDS, PORTS_PER_KIND, table_entries
from natfleet.lab.system import netns_argv, run

ROUNDS_MAX = 1000
PER_ROUND_MAX = 20_000


def churn(
    netns: str,
    per_round: int,
    rounds: int,
    period: float,
    inside: Sequence[str],
    nat_ip: str,
    start: int,
    timeout: int = 3,
    stop: Optional[threading.Event] = None,
) -> int:
    """Load ``per_round`` short-lived entries every ``period`` s, ``rounds`` times; the
    entries loaded. The entries cycle through the table's numbers from ``start`` up to its
    end and round again (an entry comes back only long after it expired)."""
    if not 0 < per_round <= PER_ROUND_MAX or not 0 < rounds <= ROUNDS_MAX or period <= 0:
        raise LabError(
            f"churn makes 1 to {PER_ROUND_MAX} entries a round, 1 to {ROUNDS_MAX} rounds"
        )
    room = len(ENTRY_KINDS) * PORTS_PER_KIND - start
    if room < per_round * max(2, int(timeout / period) + 2):
        raise LabError(f"churn: too few free entry numbers after {start} for {per_round} a round")
    loaded = 0
    at = 0
    next_round = time.monotonic()
    for _ in range(rounds):
        if stop is not None and stop.is_set():
            break
        if at + per_round > room:
            at = 0
        with tempfile.NamedTemporaryFile("w", prefix="natfleet-churn-", suffix=".save") as out:
            for line in table_entries(per_round, inside, nat_ip, timeout, start + at):
                out.write(line + "\n")
            out.flush()
            run(netns_argv(netns, ["conntrack", "-R", out.name]), timeout=60)
        at += per_round
        loaded += per_round
        next_round += period
        wait = next_round - time.monotonic()
        if wait > 0:
            if stop is None:
                time.sleep(wait)
            elif stop.wait(wait):
                break
    return loaded
