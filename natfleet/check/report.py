"""Every subject's findings (a box, a NAT gateway, a route target), worst first, as output
records; and the ``--fail-on`` rule with its exit code.

Exit code precedence (docs: README "natfleet check"): a box that could not be read keeps the
fleet rule (1 when every box failed, 3 when some did); otherwise 4
(:attr:`~natfleet.errors.ExitCode.FINDINGS`) when a finding reaches ``--fail-on``; else 0.

Example:
    >>> from natfleet.models import Target
    >>> report = CheckReport([Subject(Target("nat-a"), "box", [finding("forwarding-off", "0")])])
    >>> report.exit_code("critical"), report.exit_code("never")
    (<ExitCode.FINDINGS: 4>, <ExitCode.OK: 0>)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Optional

from natfleet.aggregate import error_record, target_json
from natfleet.check.box import box_findings
from natfleet.check.cloud import aws_findings
from natfleet.check.findings import CATALOGUE, SEVERITIES, Finding, finding, reaches
from natfleet.check.thresholds import DEFAULTS, CheckConfig
from natfleet.config import METHODS
from natfleet.errors import ExitCode
from natfleet.fleet import Outcome
from natfleet.models import Device, HostError, HostResult, Target
from natfleet.models import exit_code as fleet_exit_code

FAIL_ON = (*SEVERITIES, "never")
__all__ = ["CheckReport", "Subject", "build_report", "finding"]


@dataclass
class Subject:
    """What findings are about: a box (``box``), a NAT gateway (``gateway``) or a route's
    target that is gone (``route``), with its findings worst first."""

    target: Target
    kind: str
    findings: list[Finding] = field(default_factory=list)

    @property
    def worst(self) -> Optional[str]:
        return min(self.findings, key=lambda f: f.rank).severity if self.findings else None

    def counts(self) -> dict[str, int]:
        return {s: sum(f.severity == s for f in self.findings) for s in SEVERITIES}


@dataclass
class CheckReport:
    """One check of a fleet: subjects worst first, the boxes that could not be read, and
    every result (for the exit code's fleet rule)."""

    subjects: list[Subject]
    errors: list[HostError] = field(default_factory=list)
    results: list[Outcome] = field(default_factory=list)
    interval: Optional[float] = None  # seconds between the two reads (--interval)

    def findings(self) -> list[tuple[Subject, Finding]]:
        return [(s, f) for s in self.subjects for f in s.findings]

    def exit_code(self, fail_on: str = "critical") -> ExitCode:
        """1 or 3 when boxes failed (the fleet rule), else 4 when a finding reaches
        ``fail_on``, else 0."""
        if fail_on not in FAIL_ON:
            raise ValueError(f"fail_on must be one of {', '.join(FAIL_ON)}, not {fail_on!r}")
        fleet = fleet_exit_code(self.results)
        if fleet != ExitCode.OK:
            return fleet
        if any(reaches(f, fail_on) for _s, f in self.findings()):
            return ExitCode.FINDINGS
        return ExitCode.OK

    def records(self) -> list[dict[str, Any]]:
        """One record per finding (every subject, worst subject first), plain values."""
        rows = []
        for subject in self.subjects:
            for found in subject.findings:
                rows.append(
                    {
                        "target": target_json(subject.target),
                        "subject": subject.kind,
                        **found.to_json(),
                    }
                )
        return rows

    def boxes(self) -> list[dict[str, Any]]:
        """Per subject: its target, kind, worst severity and counts (the JSON ``subjects``)."""
        return [
            {
                "target": target_json(s.target),
                "subject": s.kind,
                "worst": s.worst,
                "counts": s.counts(),
            }
            for s in self.subjects
        ]

    def error_records(self) -> list[dict[str, Any]]:
        return [error_record(e) for e in self.errors]


def _ordered(subjects: list[Subject]) -> list[Subject]:
    for subject in subjects:
        subject.findings.sort(key=lambda f: (f.rank, f.id, f.message))
    worst = len(SEVERITIES)
    return sorted(
        subjects,
        key=lambda s: (
            s.findings[0].rank if s.findings else worst,
            -len(s.findings),
            s.target.label,
        ),
    )


def device_target(device: Device) -> Target:
    """The target an AWS-only subject is named by (a gateway, a route's missing target)."""
    return Target(name=device.name or device.id, kind="aws", instance_id=device.id,
                  region=device.region)  # fmt: skip


def build_report(
    results: Sequence[Outcome],
    devices: Sequence[Device] = (),
    gateway_rows: Sequence[Mapping[str, Any]] = (),
    methods: Sequence[str] = METHODS,
    config: CheckConfig = DEFAULTS,
    first: Optional[Sequence[Outcome]] = None,
    seconds: Optional[float] = None,
) -> CheckReport:
    """Findings for every box read (``results`` of a check request, in target order;
    ``first`` an earlier info read of the same targets ``seconds`` before) and every AWS
    device and NAT gateway row."""
    cloud = aws_findings(devices, gateway_rows, methods, config)
    subjects: list[Subject] = []
    errors: list[HostError] = []
    earlier: dict[Target, Any] = {}
    for outcome in first or ():
        if isinstance(outcome, HostResult):
            earlier[outcome.target] = outcome.answer.facts
    for outcome in results:
        if isinstance(outcome, HostError):
            errors.append(outcome)
            continue
        before = earlier.get(outcome.target)
        found = box_findings(outcome.answer, config, before, seconds if before else None)
        found += cloud.pop(outcome.target.instance_id or "", [])
        subjects.append(Subject(outcome.target, "box", found))
    by_id = {d.id: d for d in devices}
    for device_id, found in cloud.items():
        device = by_id.get(device_id)
        if device is None:
            continue
        kind = {"gateway": "gateway", "missing": "route"}.get(device.kind, "box")
        subjects.append(Subject(device_target(device), kind, found))
    return CheckReport(_ordered(subjects), errors, list(results), seconds)


def advice_lines(report: CheckReport) -> list[tuple[str, str]]:
    """(finding id, advice) once per id, in the order the table shows them."""
    seen: dict[str, str] = {}
    for _subject, found in report.findings():
        seen.setdefault(found.id, found.advice or CATALOGUE[found.id].advice)
    return list(seen.items())
