"""Typed records shared by the laptop-side modules (the agent itself stays stdlib-only).

Example:
    >>> t = Target(name="nat-a", host="198.19.255.11", instance_id="i-0abc")
    >>> t.label
    'nat-a (i-0abc)'
    >>> HostError(t, "connection refused by root@198.19.255.11:22", kind="connect").kind
    'connect'
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Optional

from natfleet.errors import ExitCode
from natfleet.text import printable

if TYPE_CHECKING:
    from natfleet.answer import Answer

# What can go wrong with one target (HostError.kind), documented in docs/json.md.
FAILURE_KINDS = (
    "connect",  # no connection: refused, unreachable, name not resolved, proxy failed
    "auth",  # SSH authentication failed
    "hostkey",  # host key unknown, changed or revoked
    "timeout",  # the per-box deadline passed
    "sudo",  # sudo missing, asked for a password, or not allowed
    "answer",  # the box's answer broke the rules: too big, not JSON, a field that does not check
    "agent",  # the agent failed on the box (or answered ok: false with kind agent)
    "table",  # no table could be read (no python3 and the shell fallback read nothing)
    "permission",  # the agent could not read the table (not root)
    "no_table",  # no conntrack table on the box
    "bad_request",  # the box refused natfleet's request
    "input",  # a --input file could not be read
    "not_managed",  # SSM: not a managed instance (agent, profile, endpoints), Undeliverable
    "ssm_delivery",  # SSM: not delivered in time (Pending too long, Delayed, DeliveryTimedOut)
    "ssm_cancelled",  # SSM: the command was cancelled or terminated
    "ssm_output",  # SSM: the answer passed GetCommandInvocation's 24,000 characters, no S3 output
    "aws_denied",  # SSM, S3 or Instance Connect refused: access denied (the IAM action named)
    "throttled",  # SSM: Rate Exceeded / throttled past the retries
    "eic",  # EC2 Instance Connect could not push the key (or none to push)
    "internal",  # a bug in natfleet (run with --debug)
)


@dataclass(frozen=True)
class Target:
    """One box to read: an EC2 instance, a ``--host``, the local machine or a dump file.

    ``kind`` is ``ssh``, ``local`` or ``file``; ``host`` is what SSH connects to (an address
    or an ``~/.ssh/config`` alias); ``user``/``port`` override the SSH config when set.
    """

    name: str
    host: str = ""
    kind: str = "ssh"
    user: Optional[str] = None
    port: Optional[int] = None
    instance_id: Optional[str] = None
    region: Optional[str] = None
    path: Optional[str] = None  # for kind == "file"

    @property
    def label(self) -> str:
        """What a table shows in its first column: ``Name (i-0abc)`` or the host, with
        anything unprintable in a (possibly hostile) name escaped."""
        if self.instance_id and self.name and self.name != self.instance_id:
            return printable(f"{self.name} ({self.instance_id})")
        return printable(self.name or self.instance_id or self.host)

    @property
    def short_label(self) -> str:
        """What a compact table and netstat text show: the Name, else the instance ID, else
        the host; a dump file's name without its folder (the full :attr:`label` is in
        ``--wide`` and JSON), escaped.

        >>> Target("nat-a", instance_id="i-0abc").short_label, Target("", instance_id="i-1").label
        ('nat-a', 'i-1')
        >>> Target("/var/tmp/nat-a.txt", kind="file", path="/var/tmp/nat-a.txt").short_label
        'nat-a.txt'
        """
        if self.kind == "file" and self.path and self.name == self.path:
            return printable(os.path.basename(self.path) or self.path)
        return printable(self.name or self.instance_id or self.host or self.path or "")


@dataclass
class HostResult:
    """One target's checked answer (natfleet.answer.Answer), and what reading it cost."""

    target: Target
    answer: Answer
    seconds: float = 0.0
    bytes_received: int = 0


@dataclass
class HostError:
    """A target that could not be read; printed as a row with its message.

    ``kind`` is one of :data:`FAILURE_KINDS`; ``message`` may quote what a box said (the
    output layer escapes it)."""

    target: Target
    message: str
    kind: str = "internal"
    seconds: float = 0.0


def exit_code(results: Sequence[object]) -> ExitCode:
    """0 when every target answered, 3 when some failed (HostError), 1 when all failed.

    >>> exit_code([]), exit_code([HostError(Target("nat-a"), "refused")])
    (<ExitCode.OK: 0>, <ExitCode.ERROR: 1>)
    """
    failed = sum(isinstance(r, HostError) for r in results)
    if not failed:
        return ExitCode.OK
    return ExitCode.ERROR if failed == len(results) else ExitCode.PARTIAL


@dataclass
class Device:
    """A NAT device found in AWS: a NAT instance or a NAT gateway.

    ``found_by`` lists how: ``tag:Role=nat``, ``route:rtb-123 0.0.0.0/0``,
    ``source-dest-check:off``, ``nat-gateway``.
    """

    kind: str  # "instance", "gateway", or "missing" (a route target that no longer exists)
    id: str
    region: str
    name: str = ""
    vpc_id: str = ""
    subnet_id: str = ""
    private_ip: Optional[str] = None
    public_ip: Optional[str] = None
    instance_type: Optional[str] = None
    state: str = ""
    found_by: list[str] = field(default_factory=list)
    route_tables: list[str] = field(default_factory=list)
    blackhole_routes: list[str] = field(default_factory=list)
    addresses: list[str] = field(default_factory=list)  # gateway public/private IPs
    tags: dict[str, str] = field(default_factory=dict)
    profile: Optional[str] = None  # the AWS profile it was found with (None: default chain)


@dataclass
class MetricSeries:
    """One CloudWatch series: timestamps ascending, values aligned; empty means no data."""

    resource_id: str
    metric: str
    statistic: str
    timestamps: list[Any] = field(default_factory=list)
    values: list[float] = field(default_factory=list)
    namespace: str = ""  # AWS/NATGateway or AWS/EC2
    period: int = 0  # seconds per point

    @property
    def has_data(self) -> bool:
        return bool(self.values)
