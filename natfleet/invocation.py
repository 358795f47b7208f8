"""How to name this natfleet in a hint: a command that works in the user's install.

natfleet may run from a venv that is not on PATH (``./dev`` makes one), and ``sudo`` resets
PATH to its secure path, so ``sudo natfleet`` may not find it. Every hint natfleet prints
names the command through these functions.

Example (run as ``/src/natfleet/.venv/bin/natfleet``, the venv not activated):
    >>> root_command()                                   # doctest: +SKIP
    'sudo /src/natfleet/.venv/bin/natfleet'
"""

from __future__ import annotations

import os
import shlex
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Optional

SUDO_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"  # sudo's secure_path
_ARGV: list[list[str]] = []  # the arguments natfleet.cli.main runs with (remember())


def remember(argv: Sequence[str]) -> None:
    """Note the command line being run (natfleet.cli.main does), for :func:`rerun_as_root`."""
    _ARGV[:] = [list(argv)]


def command_on(path: str) -> str:
    """This natfleet as a command a shell with ``path`` runs: ``natfleet`` when ``path``
    finds this very one, else its full path (a venv's), else ``<python> -m natfleet``.

    >>> command_on("/nonexistent").endswith(("natfleet", "-m natfleet"))
    True
    """
    script = Path(sys.executable).parent / "natfleet"
    if not script.is_file():
        return f"{sys.executable} -m natfleet"
    found = shutil.which("natfleet", path=path)
    if found and Path(found).resolve() == script.resolve():
        return "natfleet"
    return str(script)


def own_command() -> str:
    """This natfleet as the user can type it in this shell (its PATH)."""
    return command_on(os.environ.get("PATH", os.defpath))


def root_command() -> str:
    """This natfleet as a command that works as root: ``sudo natfleet`` when sudo's PATH
    finds it, else ``sudo /full/path/natfleet``."""
    return f"sudo {command_on(SUDO_PATH)}"


def rerun_as_root(argv: Optional[Sequence[str]] = None) -> str:
    """The command line the user ran (``argv``; default: what natfleet.cli.main was given,
    else sys.argv), as root, in a form that works in this install: the advice for
    "permission denied" on this machine's table.

    >>> rerun_as_root(["local", "-nN", "-s", "a b"]).endswith("natfleet local -nN -s 'a b'")
    True
    """
    if argv is None:
        argv = _ARGV[0] if _ARGV else sys.argv[1:]
    words = list(argv)
    return " ".join([root_command(), *(shlex.quote(word) for word in words)])
