"""The ``natfleet`` command: argument parsing and the one place that prints errors and exits.

Each sub-command lives in ``natfleet/commands/<name>.py`` with ``register(subparsers)``, which
adds its parser and sets ``func(args) -> int``. Every parser refuses abbreviated options
(``--form`` is not ``--format``) and suggests the nearest choice for a typo.

Example:
    $ natfleet local -nN
    $ natfleet summary --host root@198.19.255.11
    $ natfleet sumary
    natfleet: error: argument COMMAND: unknown command 'sumary': did you mean 'summary'? ...
"""

from __future__ import annotations

import argparse
import difflib
import logging
import sys
from collections.abc import Iterator, Sequence
from typing import Any, Optional

from natfleet import __version__
from natfleet.errors import ExitCode, NatfleetError
from natfleet.invocation import remember, root_command
from natfleet.output import clip, log_handler

COMMAND_MODULES = (
    "discover",
    "conns",
    "summary",
    "local",
    "gateways",
    "compare",
    "check",
    "watch",
    "snapshot",
    "diff",
    "lab",
    "demo",
    "completion",
)


class _Parser(argparse.ArgumentParser):
    """argparse that exits with natfleet's usage code (2) and a hint, takes no abbreviated
    options and suggests the nearest choice (a command, a ``--format``) for a typo."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs["allow_abbrev"] = False
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> None:  # type: ignore[override]
        self.print_usage(sys.stderr)
        self.exit(ExitCode.USAGE, f"{self.prog}: error: {message}\n(see '{self.prog} --help')\n")

    def _check_value(self, action: argparse.Action, value: Any) -> None:
        if action.choices is not None and value not in action.choices:
            commands = isinstance(action, argparse._SubParsersAction)
            raise argparse.ArgumentError(action, invalid_choice(value, action.choices, commands))


def invalid_choice(value: Any, choices: Any, commands: bool = False) -> str:
    """The message for a value that is not one of ``choices``, with the nearest one.

    >>> invalid_choice("sumary", ["discover", "summary", "local"], commands=True)
    "unknown command 'sumary': did you mean 'summary'? (commands: discover, summary, local)"
    >>> invalid_choice("xml", ["table", "json"])
    "invalid choice: 'xml' (choose from table, json)"
    """
    names = [str(choice) for choice in choices]
    message = f"unknown command {str(value)!r}" if commands else f"invalid choice: {str(value)!r}"
    message += _did_you_mean(str(value), names)
    listed = ", ".join(names)
    return f"{message} ({'commands:' if commands else 'choose from'} {listed})"


def _did_you_mean(word: str, names: Sequence[str]) -> str:
    near = difflib.get_close_matches(word, names, n=1, cutoff=0.6)
    return f": did you mean {near[0]!r}?" if near else ""


def unrecognized(extra: Sequence[str], parser: argparse.ArgumentParser) -> str:
    """The message for arguments no option takes, with the nearest option for the first.

    >>> parser = _Parser(prog="natfleet conns")
    >>> _ = parser.add_argument("--format")
    >>> unrecognized(["--form", "json"], parser)
    "unrecognized arguments: --form json: did you mean '--format'?"
    """
    message = f"unrecognized arguments: {' '.join(extra)}"
    first = next((word for word in extra if word.startswith("--")), None)
    if first is None:
        return message
    options = [o for a in parser._actions for o in a.option_strings if o.startswith("--")]
    return message + _did_you_mean(first.split("=", 1)[0], options)


def _epilog() -> str:
    sudo = root_command()
    return (
        "examples:\n"
        "  natfleet summary                     every NAT instance found in AWS\n"
        "  natfleet conns -n --tag Role=nat -p tcp -S\n"
        f"  {sudo} local -nN\n"
        "                                       this box, like netstat-nat -nN\n"
        "  natfleet compare --since 3h          NAT instances next to NAT gateways\n"
        f'  eval "$({sudo} lab up)"\n'
        "                                       a local lab to try it all on\n"
        "  natfleet completion bash             shell completion (natfleet manpage: the manual)\n"
        "exit codes: 0 every target answered, 1 error, 2 usage, 3 some targets failed"
    )


def build_parser() -> argparse.ArgumentParser:
    """The whole command tree."""
    import importlib

    parser = _Parser(
        prog="natfleet",
        description="show xlate for a fleet of Linux NAT boxes: every translation on every NAT "
        "instance (conntrack over SSH) and NAT gateway metrics (CloudWatch), in one table.",
        epilog=_epilog(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"natfleet {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks and debug logs")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for name in COMMAND_MODULES:
        importlib.import_module(f"natfleet.commands.{name}").register(sub)
    for command_parser in sub.choices.values():
        command_parser.set_defaults(_parser=command_parser)
    for below in _subparsers(parser):
        # "run with --debug" must work after the command too: natfleet summary --debug
        if not any("--debug" in a.option_strings for a in below._actions):
            below.add_argument(
                "--debug", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS
            )
    return parser


def _subparsers(parser: argparse.ArgumentParser) -> Iterator[argparse.ArgumentParser]:
    """Every parser below ``parser`` (commands and their actions, e.g. ``lab up``)."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in dict.fromkeys(action.choices.values()):
                yield child
                yield from _subparsers(child)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run natfleet; returns the exit code (see :class:`natfleet.errors.ExitCode`)."""
    for stream in (sys.stdout, sys.stderr):  # an ASCII-only terminal gets \u escapes, no crash
        reconfigure = getattr(stream, "reconfigure", None)
        if reconfigure is not None:
            reconfigure(errors="backslashreplace")
    remember(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:
        command_parser = getattr(args, "_parser", None) or parser
        command_parser.error(unrecognized(extra, command_parser))
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
