"""The lab's login user: the boxes are logged into as a NAT instance is, as a user with sudo.

Like ``ec2-user`` on Amazon Linux: one system user, :data:`USER` (the boxes' namespaces share
this machine's /etc/passwd), with ``/bin/sh`` as its shell (so no shell start-up file of
root's runs for a lab login), a home in the state folder holding the lab's client key, and
``/etc/sudoers.d/natfleet-lab`` allowing NOPASSWD exactly natfleet's two remote commands as
``sudo -n`` runs them (the agent's python3, the raw fallback's sh), checked by ``visudo -cf``.
``lab down`` removes the user and the file only when the lab made them (the user's comment
is :data:`COMMENT`, the file's first line starts with :data:`MARK`) and that lab is the one
being taken down (the user's home is in its state folder).

Example:
    $ ssh -F /run/natfleet-lab/ssh_config nflab-box1 id -un
    nflab-ec2
"""

from __future__ import annotations

import os
import pwd
import shlex
import shutil
from pathlib import Path
from typing import Callable, Optional

from natfleet import agent, remote
from natfleet.errors import LabError
from natfleet.lab.system import SUDO_PATH, run

USER = "nflab-ec2"
COMMENT = "natfleet lab login user"  # how down() knows the user is the lab's
SHELL = "/bin/sh"
SUDOERS = Path("/etc/sudoers.d/natfleet-lab")
MARK = "# natfleet lab:"  # the first line of a sudoers file the lab wrote
HOME = "home"  # under the state folder: home/nflab-ec2/.ssh/authorized_keys
COMMANDS = (remote.REMOTE_COMMAND, agent.RAW_COMMAND)  # what natfleet runs under sudo
_ESCAPED = frozenset(",:=#*?[] \t!")  # sudoers' own characters, fnmatch's, the separators


def home_of(state_dir: Path) -> Path:
    """The lab user's home: ``<state>/home/nflab-ec2``."""
    return state_dir / HOME / USER


def authorized_keys_of(state_dir: Path) -> Path:
    """The lab user's ``authorized_keys`` (sshd reads it as the user)."""
    return home_of(state_dir) / ".ssh" / "authorized_keys"


def sudo_argv(command: str) -> list[str]:
    """What sudo runs for a remote command, as the login shell splits ``sudo -n COMMAND``.

    >>> sudo_argv("python3 -c 'print(1)'")
    ['python3', '-c', 'print(1)']
    """
    from natfleet.ssh import SUDO_PREFIX  # (paramiko: only when a lab is built)

    words = shlex.split(SUDO_PREFIX + command)
    prefix = shlex.split(SUDO_PREFIX)
    if words[: len(prefix)] != prefix or len(words) == len(prefix):
        raise LabError(f"not a sudo command: {SUDO_PREFIX + command!r}")
    return words[len(prefix) :]


def sudoers_arg(arg: str) -> str:
    """One argument written so that a sudoers rule matches exactly it: a backslash before
    sudoers' own characters (``, : = #``), the wildcards (``* ? [ ]``), ``!`` and blanks;
    a leading ``^`` too (else a regular expression).

    >>> sudoers_arg("n=int(x);a b*")
    'n\\\\=int(x);a\\\\ b\\\\*'
    """
    if "\\" in arg or "\n" in arg or not arg:
        raise LabError(f"no exact sudoers rule can be written for the argument {arg!r}")
    text = "".join("\\" + c if c in _ESCAPED else c for c in arg)
    return "\\" + text if text.startswith("^") else text


def sudoers_rule(user: str, argv: list[str], path: str = SUDO_PATH) -> str:
    """``USER ALL=(root) NOPASSWD: /full/path ARGS...`` for one command, found on sudo's
    secure_path as sudo finds it.

    >>> sudoers_rule("nflab-ec2", ["sh", "-c", "echo a,b"], "/usr/bin:/bin")
    'nflab-ec2 ALL=(root) NOPASSWD: /usr/bin/sh -c echo\\\\ a\\\\,b'
    """
    found = shutil.which(argv[0], path=path)
    if not found:
        raise LabError(f"the lab needs '{argv[0]}' on sudo's path ({path})")
    args = " ".join(sudoers_arg(arg) for arg in argv[1:])
    return f"{user} ALL=(root) NOPASSWD: {found} {args}".rstrip()


def sudoers_text(user: str = USER, path: str = SUDO_PATH) -> str:
    """The lab's sudoers drop-in: the two commands natfleet runs, with no password."""
    lines = [
        f"{MARK} {user} may run natfleet's remote commands as root, nothing else",
        *(sudoers_rule(user, sudo_argv(command), path) for command in COMMANDS),
    ]
    return "\n".join(lines) + "\n"


def _entry(user: str) -> Optional[pwd.struct_passwd]:
    try:
        return pwd.getpwnam(user)
    except KeyError:
        return None


def is_labs(entry: Optional[pwd.struct_passwd]) -> bool:
    """True for the lab's own user (its comment says so)."""
    return entry is not None and entry.pw_gecos == COMMENT


def _reachable(folder: Path) -> None:
    """LabError unless every folder above ``folder`` lets other users through (sshd reads the
    user's keys as the user)."""
    for parent in folder.parents:
        if parent.exists() and not parent.stat().st_mode & 0o001:
            raise LabError(
                f"the lab user {USER} cannot reach its home {folder}: {parent} is closed to "
                "other users (use a state folder under /run or /tmp: NATFLEET_LAB_DIR)"
            )


def check_free() -> None:
    """LabError when a user named USER or a SUDOERS file exists that the lab did not make
    (the lab neither uses nor removes those)."""
    entry = _entry(USER)
    if entry is not None and not is_labs(entry):
        raise LabError(
            f"a user {USER} exists that the lab did not make (its comment is not "
            f"{COMMENT!r}): the lab neither uses nor removes it; remove it first"
        )
    if SUDOERS.exists() and not _sudoers_is_labs():
        raise LabError(f"{SUDOERS} exists and the lab did not write it: remove it first")


def create(state_dir: Path, public_key: str) -> str:
    """Make the lab user (home, key, sudoers drop-in); returns its name. LabError when
    :func:`check_free` says no, or sudoers refuses the rule."""
    check_free()
    entry = _entry(USER)
    home = home_of(state_dir)
    _reachable(home)
    if entry is None:
        run(
            ["useradd", "--system", "--user-group", "--no-create-home", "--home-dir", str(home)]
            + ["--shell", SHELL, "--comment", COMMENT, "--password", "*", USER]
        )  # "*": no password, but not a locked account (sshd refuses those)
    else:  # left by a lab whose down did not run
        run(["usermod", "--home", str(home), "--shell", SHELL, USER])
    entry = pwd.getpwnam(USER)
    (state_dir / HOME).mkdir(mode=0o755, exist_ok=True)
    keys = authorized_keys_of(state_dir)
    keys.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    keys.write_text(public_key.strip() + "\n")
    for path, mode in ((home, 0o700), (keys.parent, 0o700), (keys, 0o600)):
        os.chown(path, entry.pw_uid, entry.pw_gid)
        path.chmod(mode)
    install_sudoers(sudoers_text(USER))
    return USER


def _sudoers_is_labs() -> bool:
    try:
        with SUDOERS.open() as handle:
            return handle.readline().startswith(MARK)
    except OSError:
        return False


def install_sudoers(text: str) -> None:
    """Write SUDOERS (mode 0440) once ``visudo -cf`` accepts it; LabError if it does not.

    The file is checked under a name with a dot, which sudo's ``@includedir`` skips, then
    renamed into place, so sudo never reads a half-written or refused rule.
    """
    pending = SUDOERS.with_name("." + SUDOERS.name + ".new")
    pending.write_text(text)
    pending.chmod(0o440)
    try:
        run(["visudo", "-c", "-q", "-f", str(pending)])
    except LabError:
        pending.unlink(missing_ok=True)
        raise
    os.replace(pending, SUDOERS)


def remove(state_dir: Path, log: Callable[[str], None] = print) -> None:
    """Remove the lab user and the sudoers file, when the lab made them and for the lab in
    ``state_dir`` (the user's home is there; a user that cannot be removed is said, not
    raised, so that the rest of ``down`` still runs).

    A lab user whose home is in another state folder belongs to another lab: left alone.
    """
    entry = _entry(USER)
    if entry is not None and not is_labs(entry):
        log(f"left the user {USER} alone: the lab did not make it")
        return
    if entry is not None and Path(entry.pw_dir) != home_of(state_dir):
        log(f"left the lab user {USER} alone: it belongs to the lab of {entry.pw_dir}")
        return
    if entry is not None:
        try:
            run(["userdel", USER])
        except LabError as exc:
            log(f"could not remove the lab user {USER}: {exc}")
            return
        log(f"removed the lab user {USER}")
    if SUDOERS.exists() and _sudoers_is_labs():
        SUDOERS.unlink()
        log(f"removed {SUDOERS}")
