"""natfleet as a library: read a fleet of NAT boxes, discover them in AWS, with plain arguments.

The command line is a thin layer over these functions; defaults come from one place
(natfleet.config, which equals config/natfleet.toml). Results are typed records:
:class:`~natfleet.models.HostResult` (a checked :class:`~natfleet.answer.Answer`) or
:class:`~natfleet.models.HostError` per target, in target order.

Example (runs as is from a checkout: a saved table, no SSH, no AWS):
    >>> from natfleet import api
    >>> targets, _ = api.resolve_targets(inputs=["tests/data/tables/lab-box.txt"])
    >>> [result] = api.read_fleet(targets, api.summary_request())
    >>> result.answer.summary.by_nat["snat"] > 0
    True
    >>> rows = api.read_fleet(targets, api.list_request(proto="tcp", nat=["snat"]))
    >>> {flow.nat for flow in rows[0].answer.flows}
    {'snat'}
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Optional

from natfleet import targets as _targets
from natfleet.agent import TRANSLATED, AgentError, Request
from natfleet.config import Config, load_config
from natfleet.errors import UsageError
from natfleet.fleet import Outcome, Progress, ReadOptions, run_fleet
from natfleet.limits import MiB
from natfleet.models import Device, HostError, HostResult, Target

if TYPE_CHECKING:  # boto3 and paramiko load only when AWS or SSH is used
    import boto3

    from natfleet.check.report import CheckReport
    from natfleet.cloudwatch import Window
    from natfleet.compare import Comparison
    from natfleet.config import Prices
    from natfleet.remote import Executor
    from natfleet.ssh import SshOptions
    from natfleet.ssm import SsmOptions

__all__ = [
    "Config",
    "Device",
    "HostError",
    "HostResult",
    "ReadOptions",
    "Target",
    "check",
    "check_request",
    "compare",
    "discover",
    "gateway_metrics",
    "instance_targets",
    "list_request",
    "load_config",
    "read_fleet",
    "read_options",
    "resolve_targets",
    "sessions",
    "ssh_executor",
    "summary_request",
    "time_window",
    "transport",
]

resolve_targets = _targets.resolve_targets


def list_request(
    proto: Optional[str] = None,
    src: Sequence[str] = (),
    dst: Sequence[str] = (),
    nat: Optional[Sequence[str]] = None,
    sort: Optional[str] = None,
    limit: Optional[int] = None,
    resolve: bool = False,
) -> dict[str, Any]:
    """A listing request (docs/json.md): netstat-nat's -p -s -d -S/-D/-L/-R -r, ``--limit``
    and name lookups (``resolve``, netstat-nat without -n). Raises UsageError.

    >>> list_request(proto="tcp", nat=["snat"])["filters"]["nat"]
    ['snat']
    """
    request = {
        "mode": "list",
        "filters": {
            "proto": proto,
            "src": list(src),
            "dst": list(dst),
            "nat": list(nat) if nat else sorted(TRANSLATED),
        },
        "sort": sort,
        "limit": limit,
        "resolve": resolve,
    }
    return _checked(request)


def summary_request(top: int = 10, jobs: Optional[int] = None) -> dict[str, Any]:
    """A summary request: ``top`` talkers, and at most ``jobs`` processes on a box."""
    request: dict[str, Any] = {"mode": "summary", "top": top}
    if jobs is not None:
        request["jobs"] = jobs
    return _checked(request)


def _checked(request: dict[str, Any]) -> dict[str, Any]:
    try:
        Request(request)
    except AgentError as exc:
        raise UsageError(str(exc)) from None
    return request


def read_options(
    config: Optional[Config] = None,
    timeout: Optional[float] = None,
    parallel: Optional[int] = None,
    max_answer_mb: Optional[int] = None,
) -> ReadOptions:
    """The per-box deadline, parallelism and byte caps: arguments over the configuration.

    >>> read_options(timeout=5).timeout, read_options().parallel
    (5.0, 32)
    """
    config = config or load_config()
    limits = config.limits
    if max_answer_mb is not None:
        limits = type(limits)(
            summary_bytes=limits.summary_bytes,
            list_bytes=max_answer_mb * MiB,
            list_base_bytes=limits.list_base_bytes,
            row_bytes=limits.row_bytes,
            line_bytes=limits.line_bytes,
            stderr_bytes=limits.stderr_bytes,
        )
    return ReadOptions(
        timeout=float(timeout or config.ssh.timeout),
        parallel=parallel or config.ssh.parallel,
        limits=limits,
    )


def ssh_executor(options: SshOptions) -> Executor:
    """The SSH transport (paramiko) for ``options``."""
    from natfleet.ssh import SshConnector

    return SshConnector(options)


def transport(
    ssh_options: Optional[SshOptions] = None,
    via: str = "ssh",
    sessions: Optional[dict[Optional[str], boto3.Session]] = None,
    ssm_options: Optional[SsmOptions] = None,
    eic: bool = False,
    profile_of: Optional[dict[str, Optional[str]]] = None,
    probe_timeout: float = 1.5,
) -> Executor:
    """The transport for ``via``: ``ssh`` (with ``eic``, EC2 Instance Connect pushes the
    login key first), ``ssm`` (Run Command), or ``auto`` (SSM for an instance without a
    reachable SSH path: natfleet.ssm.AutoExecutor). ``sessions`` (by profile) and
    ``profile_of`` (instance ID -> profile) are for the AWS calls; raises UsageError.

    Example (Run Command, answers over 24,000 characters read from S3)::

        executor = transport(SshOptions(), via="ssm", sessions=sessions(["prod"]),
                             ssm_options=SsmOptions(output_s3="my-bucket/natfleet"))
        read_fleet(instance_targets(discover(sessions(["prod"])))[0], summary_request(),
                   executor)
    """
    from natfleet import ssm
    from natfleet.ssh import SshOptions

    if via not in ssm.VIA:
        raise UsageError(f"via must be one of {', '.join(ssm.VIA)}, not {via!r}")
    if (via != "ssh" or eic) and not sessions:
        raise UsageError(f"--via {via}{' --eic' if eic else ''} needs AWS sessions")
    ssh: Optional[Executor] = None
    if via != "ssm":
        ssh = ssh_executor(ssh_options or SshOptions())
        if eic:
            from natfleet.eic import EicExecutor

            ssh = EicExecutor(ssh, sessions or {}, profile_of)
        if via == "ssh":
            return ssh
    run_command = ssm.SsmExecutor(ssm_options or ssm.SsmOptions(), sessions or {}, profile_of)
    if via == "ssm":
        return run_command
    return ssm.AutoExecutor(ssh, run_command, probe_timeout)


def read_fleet(
    targets: Sequence[Target],
    request: dict[str, Any],
    executor: Optional[Executor] = None,
    options: Optional[ReadOptions] = None,
    progress: Optional[Progress] = None,
) -> list[Outcome]:
    """Run ``request`` on every target: one HostResult or HostError each, in order.

    SSH targets need an ``executor`` (see :func:`ssh_executor`); without one they are
    read with a default SSH configuration.
    """
    if executor is None and any(t.kind == "ssh" for t in targets):
        from natfleet.ssh import SshOptions

        executor = ssh_executor(SshOptions())
    return run_fleet(list(targets), request, executor, options or read_options(), progress)


def sessions(profiles: Sequence[Optional[str]] = (None,)) -> dict[Optional[str], boto3.Session]:
    """One boto3 session per AWS profile (None: the default credential chain)."""
    from natfleet import aws

    return {p: aws.make_session(p) for p in profiles or (None,)}


def discover(
    sessions: dict[Optional[str], boto3.Session],
    regions: Optional[Sequence[str]] = None,
    tags: Sequence[str] = ("Role=nat",),
    methods: Sequence[str] = ("tag", "route", "source-dest-check"),
    vpc_ids: Sequence[str] = (),
    instance_ids: Sequence[str] = (),
    gateways: bool = True,
) -> list[Device]:
    """NAT instances and NAT gateways across profiles and regions, merged by id (an account
    reached through two profiles is listed once, with every way it was found)."""
    from natfleet import discovery

    merged: dict[tuple[str, str], Device] = {}
    for profile, session in sessions.items():
        for device in discovery.discover(
            session,
            list(regions) if regions else None,
            tags=tuple(tags),
            methods=list(methods),
            vpc_ids=tuple(vpc_ids),
            instance_ids=tuple(instance_ids),
            gateways=gateways,
            profile=profile,
        ):
            key = (device.region, device.id)
            if key in merged:
                known = merged[key].found_by
                known += [way for way in device.found_by if way not in known]
            else:
                merged[key] = device
    return list(merged.values())


def instance_targets(
    devices: Sequence[Device], address: str = "private"
) -> tuple[list[Target], list[HostError]]:
    """SSH targets for the NAT instances among ``devices``, and an error for each one that
    cannot be read (stopped, or no address of that kind)."""
    from natfleet.discovery import targets_and_errors

    return targets_and_errors([d for d in devices if d.kind == "instance"], address)


def time_window(
    since: str = "3h", until: Optional[str] = None, period: Optional[str] = None
) -> Window:
    """A CloudWatch window from ``--since --until --period`` text (``30m``, ``3h``, ``2d``,
    ISO 8601; ``60``, ``5m``); raises UsageError."""
    from natfleet.cloudwatch import Window

    return Window.from_options(since, until, period)


def gateway_metrics(
    sessions: dict[Optional[str], boto3.Session],
    devices: Sequence[Device],
    window: Window,
    ids: Optional[Sequence[str]] = None,
) -> list[dict[str, Any]]:
    """One row of CloudWatch figures per NAT gateway among ``devices`` (only ``ids`` when
    given): connections, attempts, bytes, packets, port errors, drops, idle timeouts."""
    from natfleet import cloudwatch

    gateways = [d for d in cloudwatch.select_gateways(devices, ids) if d.kind == "gateway"]
    return cloudwatch.gateway_rows(sessions, gateways, window)


def compare(
    sessions: dict[Optional[str], boto3.Session],
    devices: Sequence[Device],
    results: Sequence[Outcome],
    prices: Prices,
    window: Window,
) -> Comparison:
    """NAT instances (``results`` of a summary read) and NAT gateways in the same columns."""
    from natfleet import compare as comparing

    return comparing.compare(sessions, devices, results, prices, window)


def check_request(top: int = 10, jobs: Optional[int] = None) -> dict[str, Any]:
    """A check request: a summary (``top`` talkers, ``jobs`` processes) and the check facts."""
    request: dict[str, Any] = {**summary_request(top, jobs), "mode": "check"}
    return _checked(request)


def check(
    targets: Sequence[Target],
    executor: Optional[Executor] = None,
    options: Optional[ReadOptions] = None,
    *,
    config: Optional[Config] = None,
    interval: Optional[float] = None,
    devices: Sequence[Device] = (),
    gateway_rows: Sequence[dict[str, Any]] = (),
    methods: Sequence[str] = ("tag", "route", "source-dest-check"),
    errors: Sequence[HostError] = (),
    progress: Optional[Progress] = None,
) -> CheckReport:
    """``natfleet check`` as a function: read every target in check mode (with
    ``interval``, an info read first and the check read that many seconds later, so the
    drop and ENA counters' growth is known), then the findings of every box, every
    discovered device and every NAT gateway row (:func:`gateway_metrics`), worst first.
    ``errors`` (targets that could not be read) join the report's errors.

    >>> targets, _ = resolve_targets(inputs=["tests/data/tables/lab-box.txt"])
    >>> [f.id for _box, f in check(targets).findings()][:1]
    ['facts-unknown']
    """
    import time

    from natfleet.check.report import build_report

    config = config or load_config()
    first = None
    started = time.monotonic()
    if interval:
        first = read_fleet(targets, {"mode": "info"}, executor, options, progress)
        time.sleep(max(0.0, interval - (time.monotonic() - started)))
    second = time.monotonic()
    results = read_fleet(targets, check_request(), executor, options, progress)
    seconds = second - started if first is not None else None
    outcomes = [*results, *errors]
    return build_report(outcomes, devices, gateway_rows, methods, config.check, first, seconds)
