"""AWS options shared by every command that finds targets in AWS (discover, gateways, conns,
summary, compare), and the one way those options become devices and targets.

Example:
    >>> add_aws_options(parser)
    >>> args = parser.parse_args(["--profile", "prod", "--region", "all", "--tag", "Role=nat"])
    >>> devices = devices_from_args(args)
    >>> targets, errors = targets_from_args(args)
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Optional

from natfleet.config import Config, load_config
from natfleet.errors import ConfigError
from natfleet.models import Device, HostError, Target

if TYPE_CHECKING:  # boto3 is imported only when AWS is really used
    import boto3

AWS_HELP = """\
AWS discovery: NAT instances are found by tag (config [discovery] tags, default Role=nat),
by route tables sending 0.0.0.0/0 or ::/0 to an instance or its ENI, and by a disabled
source/dest check; --tag replaces the configured tags and limits discovery to tags.
Credentials come from the usual AWS chain (AWS_PROFILE, ~/.aws, SSO, instance role)."""


def add_aws_options(parser: argparse.ArgumentParser, address: bool = True) -> None:
    """Add ``--profile --region --tag --vpc-id --instance-id`` (each repeatable, so lists),
    and ``--address`` (when ``address``) and ``--config`` unless the parser has them already."""
    group = parser.add_argument_group("AWS", AWS_HELP)
    group.add_argument(
        "--profile",
        action="append",
        metavar="P",
        help="AWS profile (repeatable: every profile is scanned); default: the AWS chain",
    )
    group.add_argument(
        "--region",
        action="append",
        metavar="R",
        help="region (repeatable), or 'all' for every enabled region; default: the profile's",
    )
    group.add_argument(
        "--tag",
        action="append",
        metavar="KEY=VALUE",
        help="NAT instances carry this tag (repeatable, any matches; KEY= for any value)",
    )
    group.add_argument(
        "--vpc-id", action="append", metavar="VPC", help="only this VPC (repeatable)"
    )
    group.add_argument(
        "--instance-id", action="append", metavar="ID", help="only this instance (repeatable)"
    )
    if address and not _has_option(parser, "--address"):  # targetopts may have added it
        group.add_argument(
            "--address",
            choices=("private", "public"),
            help="instance address to connect to (default: config, else private)",
        )
    if not _has_option(parser, "--config"):
        group.add_argument("--config", metavar="FILE", help="natfleet config file (TOML)")


def config_from_args(args: argparse.Namespace) -> Config:
    """The configuration named by ``--config`` (else $NATFLEET_CONFIG, ~/.config, defaults).

    A config that cannot be looked at (``~/.config/natfleet`` mode 000) is a ConfigError
    naming it, never a PermissionError traceback."""
    try:
        return load_config(getattr(args, "config", None))
    except OSError as exc:
        where = exc.filename or getattr(args, "config", None) or "the natfleet config"
        raise ConfigError(
            f"{where}: cannot read: {exc.strerror or exc} (fix its permissions, or name "
            "another file with --config or $NATFLEET_CONFIG)"
        ) from None


def sessions_from_args(args: argparse.Namespace) -> dict[Optional[str], boto3.Session]:
    """One session per ``--profile`` (None: the default chain)."""
    from natfleet import api

    return api.sessions(getattr(args, "profile", None) or [None])


def devices_from_args(
    args: argparse.Namespace,
    config: Optional[Config] = None,
    instances: bool = True,
    gateways: Optional[bool] = None,
) -> list[Device]:
    """Every device the AWS options describe, across profiles and regions, merged by id.

    ``instances=False`` finds NAT gateways only; ``gateways`` None follows the config.
    """
    from natfleet import api

    disc = (config or config_from_args(args)).discovery
    tags = getattr(args, "tag", None)
    methods = (["tag"] if tags else list(disc.methods)) if instances else []
    return api.discover(
        sessions_from_args(args),
        getattr(args, "region", None),
        tags=tags or disc.tags,
        methods=methods,
        vpc_ids=getattr(args, "vpc_id", None) or (),
        instance_ids=getattr(args, "instance_id", None) or (),
        gateways=disc.gateways if gateways is None else gateways,
    )


def targets_from_args(
    args: argparse.Namespace,
    config: Optional[Config] = None,
    devices: Optional[list[Device]] = None,
) -> tuple[list[Target], list[HostError]]:
    """SSH targets for the NAT instances found (or among ``devices``, already discovered),
    and errors for those without an address."""
    from natfleet import api

    config = config or config_from_args(args)
    if devices is None:
        devices = devices_from_args(args, config, gateways=False)
    return api.instance_targets(devices, getattr(args, "address", None) or config.discovery.address)


def _has_option(parser: argparse.ArgumentParser, option: str) -> bool:
    return any(option in action.option_strings for action in parser._actions)
