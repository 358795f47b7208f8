"""The ``natfleet`` command: argument parsing and the one place that prints errors and exits.

Each sub-command lives in ``natfleet/commands/<name>.py`` with ``register(subparsers)``, which
adds its parser and sets ``func(args) -> int``.

Example:
    $ natfleet local -nN
    $ natfleet summary --host root@198.19.255.11
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from typing import Optional

from natfleet import __version__
from natfleet.errors import ExitCode, NatfleetError
from natfleet.output import clip, log_handler

COMMAND_MODULES = (
    "discover",
    "conns",
    "summary",
    "local",
    "gateways",
    "compare",
    "lab",
    "demo",
)


class _Parser(argparse.ArgumentParser):
    """argparse that exits with natfleet's usage code (2) and a hint."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.print_usage(sys.stderr)
        self.exit(ExitCode.USAGE, f"{self.prog}: error: {message}\n(see '{self.prog} --help')\n")


def build_parser() -> argparse.ArgumentParser:
    """The whole command tree."""
    import importlib

    parser = _Parser(
        prog="natfleet",
        description="show xlate for a fleet of Linux NAT boxes: every translation on every NAT "
        "instance (conntrack over SSH) and NAT gateway metrics (CloudWatch), in one table.",
        epilog="examples:\n  natfleet summary                     every NAT instance found in AWS\n"
        "  natfleet conns -n --tag Role=nat -p tcp -S\n"
        "  sudo natfleet local -nN              this box, like netstat-nat -nN\n"
        "  natfleet compare --since 3h          NAT instances next to NAT gateways\n"
        '  eval "$(sudo natfleet lab up)"       a local lab to try it all on\n'
        "exit codes: 0 every target answered, 1 error, 2 usage, 3 some targets failed",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"natfleet {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks and debug logs")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for name in COMMAND_MODULES:
        importlib.import_module(f"natfleet.commands.{name}").register(sub)
    for command_parser in sub.choices.values():
        command_parser.set_defaults(_parser=command_parser)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run natfleet; returns the exit code (see :class:`natfleet.errors.ExitCode`)."""
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:
        (getattr(args, "_parser", None) or parser).error(
            f"unrecognized arguments: {' '.join(extra)}"
        )
    level = logging.DEBUG if args.debug else logging.WARNING
    logging.basicConfig(level=level, handlers=[log_handler(sys.stderr)])
    if not getattr(args, "func", None):
        parser.print_help(sys.stderr)
        return ExitCode.USAGE
    try:
        return int(args.func(args))
    except NatfleetError as exc:
        if args.debug:
            raise
        sys.stderr.write(f"Error: {clip(exc)}\n")
        return int(exc.exit_code)
    except KeyboardInterrupt:
        sys.stderr.write("Interrupted.\n")
        return 130
    except BrokenPipeError:
        return ExitCode.OK
    except Exception as exc:  # noqa: BLE001 - a bug: said in one line, traceback with --debug
        if args.debug:
            raise
        sys.stderr.write(
            f"Error: internal error: {type(exc).__name__}: {clip(exc)} "
            "(run with --debug for the traceback)\n"
        )
        return ExitCode.ERROR


if __name__ == "__main__":
    raise SystemExit(main())
