"""Findings from one box's checked check answer (natfleet.answer_check.CheckFacts, the
summary and the host facts), and, with an earlier read, from how its counters grew.

Example:
    >>> from natfleet import agent, answer
    >>> raw = agent.handle({"mode": "check"}, agent.LocalSources("tests/data/check/forwarding-off"))
    >>> [f.id for f in box_findings(answer.check_answer("box", {"mode": "check"}, raw))]
    ['forwarding-off', ...]
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Optional

from natfleet.aggregate import INCIDENT
from natfleet.answer import Answer, HostFacts
from natfleet.answer_check import CheckFacts
from natfleet.check.findings import Finding, finding, finding_of
from natfleet.check.thresholds import DEFAULTS, CheckConfig

KERNEL_ESTABLISHED_TIMEOUT = 432000


def box_findings(
    answer: Answer,
    config: CheckConfig = DEFAULTS,
    before: Optional[HostFacts] = None,
    seconds: Optional[float] = None,
) -> list[Finding]:
    """Every finding of one box. ``before`` is the box's host facts read ``seconds`` earlier
    (``--interval``): counters that grew since are critical."""
    check = answer.check
    if not isinstance(check, CheckFacts):
        raise ValueError("box_findings needs a check answer (mode check)")
    found: list[Finding] = []
    for rule in (_forwarding, _nat_rules, _rp_filter, _timeouts):
        found.extend(rule(check, config))
    found.extend(_capacity(answer, check, config))
    found.extend(_drops(answer.facts, before, seconds))
    found.extend(_ports(answer, check, config))
    found.extend(_ena(answer.facts, before, seconds, config))
    found.extend(_unknown(check))
    return found


def _forwarding(check: CheckFacts, config: CheckConfig) -> Iterator[Finding]:
    if check.forwarding_v4 == 0:
        yield finding("forwarding-off", "net.ipv4.ip_forward is 0", ip_forward=0)
    nat66 = [r for r in check.nat_rules if r.source_nat and r.family == "ipv6"]
    if check.forwarding_v6 == 0 and nat66:
        yield finding(
            "ipv6-forwarding-off",
            f"net.ipv6.conf.all.forwarding is 0 with {len(nat66)} NAT66 rule(s)",
            ipv6_forwarding=0,
            nat66_rules=len(nat66),
        )


def _rules_read(check: CheckFacts) -> bool:
    """True when the IPv4 NAT rules were read: iptables-save or nft answered."""
    return check.tools.get("iptables") == "ok" or check.tools.get("nft") == "ok"


def _nat_rules(check: CheckFacts, config: CheckConfig) -> Iterator[Finding]:
    if not _rules_read(check):
        tools = ", ".join(f"{k} {v}" for k, v in sorted(check.tools.items()))
        yield finding("nat-rules-unknown", f"NAT rules not read ({tools})", **check.tools)
        return
    snat = [r for r in check.nat_rules if r.source_nat and r.family in ("ipv4", "inet")]
    route = check.default_route_v4
    if not snat:
        yield finding(
            "masquerade-missing",
            "no MASQUERADE or SNAT rule in iptables or nftables"
            + (f" (default route via {route})" if route else ""),
            default_route=route,
            nat_rules=len(check.nat_rules),
        )
        return
    outs = sorted({r.out for r in snat if r.out})
    if route is not None and not any(r.covers(route) for r in snat):
        yield finding(
            "masquerade-wrong-interface",
            f"the default route leaves via {route}; the SNAT rules are for "
            + ", ".join(("not " if r.out_negated else "") + str(r.out) for r in snat),
            default_route=route,
            rule_interfaces=";".join(outs),
        )
    present = set(check.interfaces)
    unknown = [
        name for name in outs if name.rstrip("+*") == name and present and name not in present
    ]
    if unknown:
        yield finding(
            "masquerade-unknown-interface",
            f"SNAT rule(s) for {', '.join(unknown)}, which the box does not have",
            rule_interfaces=";".join(unknown),
            interfaces=";".join(check.interfaces),
        )


def _rp_filter(check: CheckFacts, config: CheckConfig) -> Iterator[Finding]:
    strict = [n for n in check.interfaces if n != "lo" and check.rp_filter_of(n) == 1]
    if strict:
        yield finding(
            "rp-filter-strict",
            f"rp_filter=1 on {', '.join(strict)}",
            interfaces=";".join(strict),
            all=check.rp_filter_all,
        )


def _timeouts(check: CheckFacts, config: CheckConfig) -> Iterator[Finding]:
    timeout = check.tcp_timeout_established
    if timeout is not None and timeout > config.established_timeout_max:
        default = " (the kernel default)" if timeout == KERNEL_ESTABLISHED_TIMEOUT else ""
        yield finding(
            "tcp-established-timeout",
            f"nf_conntrack_tcp_timeout_established is {timeout:,} s{default}, more than "
            f"{config.established_timeout_max:,} s",
            tcp_timeout_established=timeout,
            threshold=config.established_timeout_max,
        )
    idle = check.idle
    if idle.idle:
        longest = f", the longest {idle.max_idle:,} s" if idle.max_idle is not None else ""
        yield finding(
            "idle-established",
            f"{idle.idle:,} of {idle.established or 0:,} TCP ESTABLISHED flows idle over "
            f"{idle.after} s{longest}",
            idle=idle.idle,
            established=idle.established,
            idle_after=idle.after,
            max_idle=idle.max_idle,
        )


def _capacity(answer: Answer, check: CheckFacts, config: CheckConfig) -> Iterator[Finding]:
    facts = answer.facts
    fill = answer.summary.fill_pct if answer.summary else None
    if fill is not None and fill >= config.fill_warning_pct:
        critical = fill >= config.fill_critical_pct
        yield finding(
            "conntrack-fill-critical" if critical else "conntrack-fill-warning",
            f"{facts.count:,} of {facts.max:,} entries in use ({fill:.2f}%)",
            count=facts.count,
            max=facts.max,
            fill_pct=fill,
            threshold_pct=config.fill_critical_pct if critical else config.fill_warning_pct,
        )
    if facts.max and check.mem_total_kb:
        table = facts.max * config.conntrack_entry_bytes
        pct = round(100.0 * table / (check.mem_total_kb * 1024), 2)
        if pct > config.conntrack_memory_max_pct:
            yield finding(
                "conntrack-max-memory",
                f"a full table of {facts.max:,} entries takes about {table / 2**20:,.0f} MiB, "
                f"{pct:.0f}% of {check.mem_total_kb // 1024:,} MiB",
                max=facts.max,
                mem_total_kb=check.mem_total_kb,
                pct=pct,
                entry_bytes=config.conntrack_entry_bytes,
            )
    if facts.max and check.buckets:
        ratio = facts.max / check.buckets
        if ratio > config.buckets_ratio_max:
            yield finding(
                "conntrack-buckets",
                f"nf_conntrack_max {facts.max:,} is {ratio:.1f} x nf_conntrack_buckets "
                f"{check.buckets:,}",
                max=facts.max,
                buckets=check.buckets,
                ratio=round(ratio, 2),
            )
    if check.acct == 0:
        yield finding("conntrack-acct-off", "net.netfilter.nf_conntrack_acct is 0", acct=0)


def _drops(
    facts: HostFacts, before: Optional[HostFacts], seconds: Optional[float]
) -> Iterator[Finding]:
    stats = facts.stats or {}
    now = {k: stats[k] for k in INCIDENT if k in stats}
    if not any(now.values()):
        return
    then = (before.stats or {}) if before is not None else None
    grew = {}
    if then is not None and seconds:
        grew = {k: v - then.get(k, v) for k, v in now.items() if v - then.get(k, v) > 0}
    if grew and seconds:
        per_minute = {f"{k}_per_minute": round(v * 60.0 / seconds, 2) for k, v in grew.items()}
        said = ", ".join(f"{k} +{v}" for k, v in grew.items())
        evidence = {**now, **per_minute, "interval_seconds": round(seconds, 1)}
        yield finding_of("conntrack-drops", f"{said} in {seconds:.0f} s", evidence, "critical")
        return
    said = ", ".join(f"{k} {v:,}" for k, v in now.items() if v)
    still = " (none during the interval)" if then is not None and seconds else ""
    yield finding_of("conntrack-drops", f"{said} since boot{still}", dict(now))


def _ports(answer: Answer, check: CheckFacts, config: CheckConfig) -> Iterator[Finding]:
    facts, summary = answer.facts, answer.summary
    size = None
    if facts.port_range:
        low, high = facts.port_range
        size = high - low + 1
        if size < config.port_range_min:
            yield finding(
                "port-range-small",
                f"ip_local_port_range {low}-{high} is {size:,} ports, under "
                f"{config.port_range_min:,}",
                port_range=f"{low}-{high}",
                ports=size,
                threshold=config.port_range_min,
            )
    worst = None
    if summary and summary.port_pressure:
        worst = max(summary.port_pressure, key=lambda p: (p.pct or 0.0, p.ports))
    pct = worst.pct if worst is not None else None
    if worst is not None and pct is not None and pct >= config.port_pressure_warning_pct:
        critical = pct >= config.port_pressure_critical_pct
        yield finding(
            "port-pressure",
            f"{worst.ports:,} ports ({pct:.2f}% of {size or '?'}) from {worst.nat_ip} to "
            f"{worst.dst}:{worst.dport}/{worst.proto}",
            "critical" if critical else "warning",
            nat_ip=worst.nat_ip,
            dst=worst.dst,
            dport=worst.dport,
            proto=worst.proto,
            ports=worst.ports,
            pct=pct,
        )
    plain = [r for r in check.nat_rules if r.source_nat and not r.random_fully]
    clashes = (facts.stats or {}).get("insert_failed", 0)
    likely = (pct or 0.0) >= config.port_pressure_warning_pct or clashes > 0
    if plain and likely:
        yield finding(
            "snat-not-random-fully",
            f"{len(plain)} SNAT rule(s) without --random-fully, with "
            + (f"{pct:.2f}% port pressure" if pct is not None else f"insert_failed {clashes}"),
            rules=len(plain),
            port_pressure_pct=pct,
            insert_failed=clashes,
        )


def _ena(
    facts: HostFacts,
    before: Optional[HostFacts],
    seconds: Optional[float],
    config: CheckConfig,
) -> Iterator[Finding]:
    for iface, counters in sorted(facts.ena.items()):
        then = before.ena.get(iface, {}) if before is not None else {}
        for key, value in sorted(counters.items()):
            if not key.endswith("_allowance_exceeded") or not value:
                continue
            grew = value - then.get(key, value) if seconds else 0
            if grew > 0 and seconds:
                yield finding(
                    "ena-allowance-exceeded",
                    f"{iface} {key} +{grew:,} in {seconds:.0f} s ({value:,} since boot)",
                    "critical",
                    iface=iface,
                    counter=key,
                    value=value,
                    per_minute=round(grew * 60.0 / seconds, 2),
                )
            else:
                yield finding(
                    "ena-allowance-exceeded",
                    f"{iface} {key} {value:,} since boot",
                    iface=iface,
                    counter=key,
                    value=value,
                )
        left = counters.get("conntrack_allowance_available")
        if left is not None and left < config.ena_conntrack_available_min:
            yield finding(
                "ena-conntrack-allowance-low",
                f"{iface} conntrack_allowance_available {left:,}, under "
                f"{config.ena_conntrack_available_min:,}",
                iface=iface,
                available=left,
                threshold=config.ena_conntrack_available_min,
            )


def _unknown(check: CheckFacts) -> Iterator[Finding]:
    missing = [
        name
        for name, value in (
            ("ip_forward", check.forwarding_v4),
            ("default_route", check.default_route_v4),
            ("tcp_timeout_established", check.tcp_timeout_established),
            ("nf_conntrack_buckets", check.buckets),
            ("MemTotal", check.mem_total_kb),
        )
        if value is None
    ]
    if missing:
        yield finding("facts-unknown", f"unknown: {', '.join(missing)}", unknown=";".join(missing))
