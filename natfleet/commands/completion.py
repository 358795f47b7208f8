"""``natfleet completion bash|zsh|tcsh`` and ``natfleet manpage``: generated from the parser.

Example:
    $ natfleet completion bash > ~/.local/share/bash-completion/completions/natfleet
    $ natfleet manpage > ~/.local/share/man/man1/natfleet.1 && man natfleet
"""

from __future__ import annotations

import argparse
import sys

from natfleet.completion import EXTRA, SHELLS
from natfleet.errors import ExitCode

COMPLETION_EXAMPLES = f"""examples:
  natfleet completion bash > ~/.local/share/bash-completion/completions/natfleet
  natfleet completion zsh > "${{fpath[1]}}/_natfleet"     (then: compinit)
  eval "$(natfleet completion bash)"                     this shell only
needs shtab: {EXTRA}
"""
MANPAGE_EXAMPLES = f"""examples:
  natfleet manpage > ~/.local/share/man/man1/natfleet.1 && man natfleet
  natfleet manpage | man -l -
needs argparse-manpage: {EXTRA}
"""


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "completion",
        help="print a shell completion script (bash, zsh, tcsh)",
        description="Print the completion script for SHELL, generated from natfleet's own "
        "parser (shtab): every command, option and choice completes.",
        epilog=COMPLETION_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("shell", choices=SHELLS, metavar="SHELL", help=", ".join(SHELLS))
    parser.set_defaults(func=run_completion)
    man = sub.add_parser(
        "manpage",
        help="print the manual page (roff), every command and option",
        description="Print natfleet's manual page (roff, section 1), generated from its own "
        "parser (argparse-manpage).",
        epilog=MANPAGE_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    man.set_defaults(func=run_manpage)


def _root_parser() -> argparse.ArgumentParser:
    from natfleet.cli import build_parser

    return build_parser()


def run_completion(args: argparse.Namespace) -> int:
    from natfleet.completion import completion_script

    sys.stdout.write(completion_script(_root_parser(), args.shell))
    return ExitCode.OK


def run_manpage(args: argparse.Namespace) -> int:
    from natfleet.completion import manpage

    sys.stdout.write(manpage(_root_parser()))
    return ExitCode.OK
