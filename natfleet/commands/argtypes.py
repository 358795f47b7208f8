"""Argument types shared by the commands.

Example:
    >>> positive(int)("3")
    3
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
