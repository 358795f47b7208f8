"""Argument types shared by the commands.

Example:
    >>> positive(int)("3")
    3
    >>> protocol("TCP"), protocol("47")
    ('tcp', '47')
"""

from __future__ import annotations

import argparse
from typing import Any


def positive(kind: type) -> Any:
    """An argparse type: a number of ``kind`` that must be more than 0."""

    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if value <= 0:
            raise argparse.ArgumentTypeError(f"{text!r} must be more than 0")
        return value

    return parse


def protocol(text: str) -> str:
    """An argparse type for ``-p``: a protocol name the agent knows (``tcp``, ``udp``,
    ``icmp``, ...) or a number 0-255, checked before any box is read.

    >>> protocol("300")
    Traceback (most recent call last):
    argparse.ArgumentTypeError: unknown protocol '300': protocol numbers are 0 to 255 (or a \
name: dccp, gre, icmp, icmpv6, sctp, tcp, udp, udplite)
    """
    from natfleet.agent import PROTO_NUMBERS

    value = text.strip().lower()
    names = ", ".join(sorted(PROTO_NUMBERS))
    if value in PROTO_NUMBERS:
        return value
    if value.isascii() and value.isdigit():
        if int(value) <= 255:
            return str(int(value))
        raise argparse.ArgumentTypeError(
            f"unknown protocol {text!r}: protocol numbers are 0 to 255 (or a name: {names})"
        )
    raise argparse.ArgumentTypeError(
        f"unknown protocol {text!r} (one of {names}, or a number 0-255)"
    )
