"""Target and SSH options shared by every command that reads boxes.

Example:
    >>> parser = argparse.ArgumentParser()
    >>> add_target_options(parser)
    >>> args = parser.parse_args(["--host", "root@198.51.100.7", "--timeout", "5"])
    >>> resolve_targets_from_args(args)[0][0].user, read_options_from_args(args).timeout
    ('root', 5.0)
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
import sys
from typing import TYPE_CHECKING, Any, Optional, TextIO

from natfleet import api
from natfleet import targets as targets_mod
from natfleet.commands.argtypes import positive
from natfleet.commands.awsopts import config_from_args
from natfleet.config import Config
from natfleet.errors import NatfleetError, UsageError
from natfleet.fleet import Outcome, ReadOptions
from natfleet.invocation import rerun_as_root
from natfleet.models import Device, HostError, Target
from natfleet.output import StatusLine, is_terminal
from natfleet.snapshot import outcomes_from_file as snapshot_outcomes

if TYPE_CHECKING:
    from natfleet.ssh import SshOptions


def add_target_options(parser: argparse.ArgumentParser) -> None:
    """Add --host/--hosts-file/--local/--input, the SSH options and (if present) AWS ones."""
    group = parser.add_argument_group(
        "targets", "AWS discovery when none of --host, --hosts-file, --local, --input is given"
    )
    group.add_argument(
        "--host",
        action="append",
        default=[],
        metavar="[USER@]ADDR[:PORT]",
        help="a box to read over SSH (repeatable; IPv6 with a port as [ADDR]:PORT)",
    )
    group.add_argument(
        "--hosts-file",
        action="append",
        default=[],
        metavar="FILE",
        help="boxes to read, one [USER@]ADDR[:PORT] per line, '#' comments",
    )
    group.add_argument("--local", action="store_true", help="read this machine (no SSH)")
    group.add_argument(
        "--input",
        action="append",
        default=[],
        metavar="FILE|-",
        help="a saved /proc/net/nf_conntrack or 'conntrack -L -o extended' dump ('-' is "
        "stdin), or a natfleet snapshot (every box in it, re-filtered offline)",
    )
    group.add_argument(
        "--address",
        choices=("private", "public"),
        help="which address of a discovered instance to connect to (default: config, else private)",
    )
    ssh = parser.add_argument_group("ssh")
    ssh.add_argument(
        "--ssh-config",
        metavar="FILE",
        help="ssh_config to honour (default: $NATFLEET_SSH_CONFIG, else ~/.ssh/config)",
    )
    ssh.add_argument(
        "--ssh-user", metavar="USER", help="login name (default: ssh_config, else yours)"
    )
    ssh.add_argument(
        "-i",
        "--identity-file",
        action="append",
        default=[],
        metavar="KEY",
        help="private key to try (repeatable; ssh-agent keys are tried too)",
    )
    ssh.add_argument(
        "--proxy-jump", metavar="[USER@]BASTION[:PORT]", help="reach the boxes through a bastion"
    )
    ssh.add_argument(
        "--known-hosts",
        metavar="FILE",
        help="known_hosts file (default: $NATFLEET_KNOWN_HOSTS, else ~/.ssh/known_hosts)",
    )
    ssh.add_argument(
        "--accept-new-host-keys",
        action="store_true",
        help="record the keys of boxes seen for the first time (a changed key is still refused)",
    )
    ssh.add_argument(
        "--timeout",
        type=positive(float),
        metavar="SECONDS",
        help="per box, everything included: connecting, running the agent, reading and "
        "checking its answer (default: config [ssh] timeout, 60); connecting takes at most "
        "[ssh] connect_timeout (10) of it",
    )
    ssh.add_argument(
        "--max-answer-mb",
        type=positive(int),
        metavar="MB",
        help="the most a box may send for a listing, decoded (default: config [limits] "
        "listing_mb, 128); a box that sends more is an error row",
    )
    ssh.add_argument(
        "--parallel",
        type=positive(int),
        metavar="N",
        help="boxes read at the same time (default: config [ssh] parallel, 32)",
    )
    add_transport_options(parser)
    from natfleet.commands.awsopts import add_aws_options

    add_aws_options(parser)


TRANSPORT_HELP = """\
Without an SSH key or an open port 22: --via ssm runs the agent through AWS Systems Manager
Run Command (the instance needs the SSM agent and an instance profile with
AmazonSSMManagedInstanceCore); --via auto uses SSM for each discovered instance without a
reachable SSH path (no address, or its SSH port does not answer within [ssm] probe_timeout);
--eic pushes your key with EC2 Instance Connect before connecting over SSH. Example:
  natfleet summary --via ssm
  natfleet conns -n --via ssm --ssm-output-s3 my-bucket/natfleet"""


def add_transport_options(parser: argparse.ArgumentParser) -> None:
    """``--via ssh|ssm|auto``, ``--ssm-output-s3 BUCKET[/PREFIX]`` and ``--eic``."""
    group = parser.add_argument_group("without SSH", TRANSPORT_HELP)
    group.add_argument(
        "--via",
        choices=("ssh", "ssm", "auto"),
        help="how to reach discovered instances (default: config [ssm] via, else ssh)",
    )
    group.add_argument(
        "--ssm-output-s3",
        metavar="BUCKET[/PREFIX]",
        help="where Run Command writes answers longer than the 24,000 characters SSM returns "
        "(a listing): you need s3:GetObject, the instances s3:PutObject (default: [ssm] "
        "output_s3)",
    )
    group.add_argument(
        "--eic",
        action="store_true",
        default=None,
        help="push your public key (KEY.pub of -i KEY) with EC2 Instance Connect for 60 s "
        "before each SSH connection (login user from --ssh-user or [ssh] user, e.g. ec2-user)",
    )


def transport_from_args(
    args: argparse.Namespace,
    config: Config,
    found: list[Target],
    errors: list[HostError],
    devices: Optional[list[Device]],
) -> tuple[Any, list[Target], list[HostError]]:
    """The executor for ``--via``/``--eic`` (or None: no box needs one), and the targets:
    with SSM, discovered instances that only lack an address become targets.

    >>> executor, found, errors = transport_from_args(args, config, found, errors, devices)
    """
    via = getattr(args, "via", None) or config.ssm.via
    eic = bool(getattr(args, "eic", None) or config.ssm.eic)
    if not any(t.kind == "ssh" for t in found) and (via == "ssh" or not errors):
        return None, found, errors
    if via == "ssh" and not eic:
        return api.ssh_executor(ssh_options_from_args(args, config)), found, errors
    from natfleet import ssm
    from natfleet.commands import awsopts

    if via != "ssh" and devices:
        more, errors = ssm.ssm_targets(errors, devices)
        found = [*found, *more]
    output_s3 = getattr(args, "ssm_output_s3", None) or config.ssm.output_s3
    bucket = output_s3.strip("/").split("/", 1)[0]
    if output_s3 and not re.fullmatch(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]", bucket):
        raise UsageError(
            f"--ssm-output-s3 {output_s3!r}: BUCKET[/PREFIX], the bucket named by 3 to 63 "
            "lowercase letters, digits, dots and hyphens"
        )
    options = ssm.SsmOptions(
        output_s3=output_s3,
        max_concurrency=config.ssm.max_concurrency,
        max_errors=config.ssm.max_errors,
    )
    executor = api.transport(
        ssh_options_from_args(args, config),
        via=via,
        sessions=awsopts.sessions_from_args(args),
        ssm_options=options,
        eic=eic,
        profile_of={d.id: d.profile for d in devices or []},
        probe_timeout=config.ssm.probe_timeout,
    )
    return executor, found, errors


def fleet_from_args(
    args: argparse.Namespace, config: Config, devices: Optional[list[Device]] = None
) -> tuple[list[Target], list[HostError], Any]:
    """The targets (named, else discovered: ``devices`` when already discovered), the
    errors of discovered instances that cannot be read, and the executor that reaches them
    (``--via``, ``--eic``; None when no target needs one).

    >>> targets, errors, executor = fleet_from_args(args, config_from_args(args))
    """
    via = getattr(args, "via", None) or config.ssm.via
    eic = getattr(args, "eic", None) or config.ssm.eic
    if devices is None and not _named(args) and (via != "ssh" or eic):
        from natfleet.commands import awsopts  # SSM and EIC need the devices' profiles

        devices = awsopts.devices_from_args(args, config, gateways=False)
    found, errors = resolve_targets_from_args(args, devices)
    executor, found, errors = transport_from_args(args, config, found, errors, devices)
    return found, errors, executor


def resolve_targets_from_args(
    args: argparse.Namespace, devices: Optional[list[Device]] = None
) -> tuple[list[Target], list[HostError]]:
    """The targets named by the options, else AWS discovery (or the NAT instances among
    ``devices``, already discovered): (reachable targets, errors for discovered instances
    that cannot be read). Raises UsageError."""

    def discover() -> tuple[list[Target], list[HostError]]:
        from natfleet.commands import awsopts  # boto3 only when AWS is used

        return awsopts.targets_from_args(args, devices=devices)

    return targets_mod.resolve_targets(
        hosts=args.host,
        hosts_files=args.hosts_file,
        local=args.local,
        inputs=args.input,
        discover=discover,
    )


def read_options_from_args(
    args: argparse.Namespace, config: Optional[Config] = None
) -> ReadOptions:
    """The per-box deadline, parallelism and byte caps: options over the configuration
    (through SSM, boxes mostly wait: ``[ssm] parallel`` of them at once)."""
    config = config or config_from_args(args)
    parallel = args.parallel
    if parallel is None and (getattr(args, "via", None) or config.ssm.via) != "ssh":
        parallel = config.ssm.parallel
    return api.read_options(
        config, timeout=args.timeout, parallel=parallel, max_answer_mb=args.max_answer_mb
    )


def ssh_options_from_args(args: argparse.Namespace, config: Optional[Config] = None) -> SshOptions:
    """An ``SshOptions`` from the options (checks that -i and --ssh-config files exist)."""
    from natfleet.ssh import SshOptions  # paramiko only when SSH is used

    for key in args.identity_file:
        if not os.path.isfile(os.path.expanduser(key)):
            raise UsageError(f"-i {key!r}: no such key file")
    if args.ssh_config and not os.path.isfile(os.path.expanduser(args.ssh_config)):
        raise UsageError(f"--ssh-config {args.ssh_config!r}: no such file")
    if args.proxy_jump:
        for spec in args.proxy_jump.split(","):
            targets_mod.split_host_spec(spec, where="--proxy-jump")
    defaults = (config or config_from_args(args)).ssh
    timeout = args.timeout or defaults.timeout
    return SshOptions(
        ssh_config=args.ssh_config,
        user=args.ssh_user or defaults.user or None,
        identity_files=tuple(args.identity_file),
        proxy_jump=args.proxy_jump,
        known_hosts=args.known_hosts,
        accept_new_host_keys=args.accept_new_host_keys,
        connect_timeout=min(defaults.connect_timeout, timeout),
        debug=bool(getattr(args, "debug", False)),
    )


class BoxProgress(StatusLine):
    """The fleet read's progress line on a terminal (natfleet.output.StatusLine), as a
    fleet progress callback ``progress(done, total, failed)``:
    ``natfleet: 3/20 boxes answered, 1 failed, 16 pending``.

    >>> import io
    >>> progress = BoxProgress(io.StringIO())
    >>> progress(4, 20, 1)
    >>> progress.stream.getvalue()
    '\\r\\x1b[Knatfleet: 3/20 boxes answered, 1 failed, 16 pending'
    """

    def __call__(self, done: int, total: int, failed: int) -> None:
        answered = done - failed
        self.show(f"{answered}/{total} boxes answered, {failed} failed, {total - done} pending")


def box_progress(stream: TextIO) -> Optional[BoxProgress]:
    """A :class:`BoxProgress` on ``stream`` when it is a terminal (not ``TERM=dumb``), else
    None: pipes, files and CI logs get no progress text."""
    if not is_terminal(stream) or os.environ.get("TERM") == "dumb":
        return None
    return BoxProgress(stream)


def run_from_args(
    args: argparse.Namespace,
    request: dict,
    devices: Optional[list[Device]] = None,
    allow_empty: bool = False,
) -> list[Outcome]:
    """Targets from the options, then the request on all of them. On a terminal, a
    progress line from the start (AWS discovery, then boxes answered / failed / pending:
    the fleet reports 0 done first), erased before this returns, so the caller's output
    starts on a clean line.

    Returns one HostResult or HostError per target, in target order; discovered instances
    that cannot be read come last, as errors.

    >>> results = run_from_args(args, api.summary_request())   # [HostResult | HostError]
    """
    progress = box_progress(sys.stderr)
    try:
        return _run(args, request, devices, allow_empty, progress)
    finally:
        if progress is not None:
            progress.clear()


def _run(
    args: argparse.Namespace,
    request: dict,
    devices: Optional[list[Device]],
    allow_empty: bool,
    progress: Optional[BoxProgress],
) -> list[Outcome]:
    if progress is not None and devices is None and not _named(args):
        progress.show("finding NAT instances in AWS")
    config = config_from_args(args)
    found, errors, executor = fleet_from_args(args, config, devices)
    if not found and not errors and not allow_empty:
        raise NatfleetError(
            "no NAT instances found (AWS discovery by tag, route table and source/dest "
            f"check: see '{_own_command()} discover'); name boxes with --host, --hosts-file, "
            "--local or --input"
        )
    options = read_options_from_args(args, config)
    saved = [t for t in found if t.kind == "snapshot"]  # --input SNAPSHOT: answered offline
    found = [t for t in found if t.kind != "snapshot"]
    offline = [r for t in saved for r in snapshot_outcomes(str(t.path), request)]
    results = api.read_fleet(found, request, executor, options, progress=progress)
    return [*(_advised(r) for r in results), *offline, *errors]


def _advised(result: Outcome) -> Outcome:
    """A permission error on this machine's own table, with the command that works."""
    if isinstance(result, HostError) and (result.kind, result.target.kind) == (
        "permission",
        "local",
    ):
        return dataclasses.replace(result, message=f"{result.message}: {rerun_as_root()}")
    return result


def _named(args: argparse.Namespace) -> bool:
    """True when the options name targets (no AWS discovery)."""
    return bool(args.host or args.hosts_file or args.local or args.input)


def _own_command() -> str:
    from natfleet.invocation import own_command

    return own_command()
