"""natfleet's exceptions and exit codes, in one place.

Library code raises a :class:`NatfleetError` subclass; only ``natfleet.cli`` prints it
(``Error: <message>``) and exits with its ``exit_code``.

Example:
    >>> raise UsageError("-r takes src, dst, src-port, dst-port or state, not 'foo'")
"""

from __future__ import annotations

import enum


class ExitCode(enum.IntEnum):
    """Process exit codes (the contract scripts rely on)."""

    OK = 0  # every target answered
    ERROR = 1  # nothing useful could be done
    USAGE = 2  # bad flags or arguments
    PARTIAL = 3  # some targets failed; their errors are rows, the rest printed
    FINDINGS = 4  # natfleet check: a finding reached --fail-on (every target answered)


class NatfleetError(Exception):
    """Base class: a message a user can act on."""

    exit_code = ExitCode.ERROR


class UsageError(NatfleetError):
    """Bad command-line input."""

    exit_code = ExitCode.USAGE


class ConfigError(NatfleetError):
    """A configuration file is missing, unreadable or wrong."""


class TableError(NatfleetError):
    """The conntrack table cannot be read (no module, no permission)."""


class AwsError(NatfleetError):
    """An AWS API call failed (credentials, permissions, region)."""


class TargetError(NatfleetError):
    """One target could not be read (SSH, sudo, timeout, agent failure).

    ``kind`` names what failed: connect, auth, hostkey, sudo, timeout, agent or table.
    """

    def __init__(self, message: str, kind: str = "error") -> None:
        super().__init__(message)
        self.kind = kind


class LabError(NatfleetError):
    """The local lab cannot be built or used."""
