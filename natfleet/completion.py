"""Shell completion scripts and the manual page, generated from natfleet's own parser.

Nothing here is written by hand: the scripts come from shtab (bash, zsh, tcsh) and the
manual page from argparse-manpage, both walking the parser that ``natfleet`` itself uses,
so every command, option and choice is always there. Both libraries are natfleet's
``completion`` extra: ``pip install 'natfleet[completion]'``.

Example:
    >>> from natfleet.cli import build_parser
    >>> script = completion_script(build_parser(), "bash")
    >>> "-F _shtab_natfleet natfleet" in script
    True
    >>> manpage(build_parser()).startswith(".TH NATFLEET")
    True
"""

from __future__ import annotations

import argparse
import importlib
from types import ModuleType

from natfleet import __version__
from natfleet.errors import NatfleetError

SHELLS = ("bash", "zsh", "tcsh")
EXTRA = "pip install 'natfleet[completion]'"
SUMMARY = "show xlate for a fleet of Linux NAT boxes (conntrack over SSH, NAT gateway metrics)"
# options that name a file: the shells complete file names for them
FILE_OPTIONS = ("--input", "--hosts-file", "--config", "--ssh-config", "--known-hosts", "-i")
FILE = {"bash": "_shtab_compgen_files", "zsh": "_files", "tcsh": "f"}  # = shtab.FILE


class MissingExtra(NatfleetError):
    """A library of the ``completion`` extra is not installed."""


def _library(module: str, package: str) -> ModuleType:
    try:
        return importlib.import_module(module)
    except ImportError:
        raise MissingExtra(
            f"this needs the Python package {package!r}, natfleet's completion extra: {EXTRA} "
            "(into the Python that runs natfleet)"
        ) from None


def _mark_files(parser: argparse.ArgumentParser) -> None:
    """Tell shtab which options take file names (``action.complete``), in every parser."""
    for action in parser._actions:
        if any(option in FILE_OPTIONS for option in action.option_strings):
            action.complete = FILE  # type: ignore[attr-defined]
        if isinstance(action, argparse._SubParsersAction):
            for child in dict.fromkeys(action.choices.values()):
                _mark_files(child)


def completion_script(parser: argparse.ArgumentParser, shell: str) -> str:
    """The completion script for ``shell`` (bash, zsh or tcsh), from shtab.

    Example: ``completion_script(build_parser(), "zsh")`` -> ``"#compdef natfleet\\n..."``
    """
    if shell not in SHELLS:
        raise NatfleetError(f"no completion for {shell!r}: one of {', '.join(SHELLS)}")
    shtab = _library("shtab", "shtab")
    _mark_files(parser)
    return str(shtab.complete(parser, shell=shell))


def manpage(parser: argparse.ArgumentParser) -> str:
    """The manual page (roff, section 1), from argparse-manpage: every command with its
    options, in groups (targets, ssh, AWS, netstat-nat flags).

    Example: ``manpage(build_parser())`` -> ``'.TH NATFLEET "1" ... .SH NAME\\nnatfleet ...'``
    """
    module = _library("argparse_manpage.manpage", "argparse-manpage")
    page = module.Manpage(
        parser,
        _data={
            "description": SUMMARY,
            "version": __version__,
            "manual_title": "natfleet manual",
            "manual_section": 1,
            "project_name": "natfleet",
        },
    )
    return str(page)
