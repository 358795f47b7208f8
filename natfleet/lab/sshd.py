"""SSH for the lab: keys, one sshd per box on its management address, known_hosts, ssh_config.

Everything lives under the state folder; the user's ``~/.ssh`` is never read or written.
The lab's ssh_config logs in as the lab user (:mod:`natfleet.lab.login`), as a NAT instance
is logged into; ``root@nflab-box1`` logs in as root with the same key.

Example (what ``lab up`` writes, then any OpenSSH or natfleet client can use):
    $ ssh -F /run/natfleet-lab/ssh_config root@nflab-box1 conntrack -C
"""

from __future__ import annotations

import socket
from collections.abc import Sequence
from pathlib import Path
from typing import Optional

from natfleet.errors import LabError
from natfleet.lab import eic
from natfleet.lab.state import LabBox
from natfleet.lab.system import SSHD, netns_argv, run, spawn, wait_until

PRIVSEP_DIR = Path("/run/sshd")  # sshd refuses to start without it
SSH_DIR = "ssh"  # under the state folder: keys, sshd configs and logs
AWS_LAB_DIR = "aws-lab"  # under the state folder: the lab's Run Command and Instance Connect


def keygen(path: Path, comment: str) -> str:
    """Make an ed25519 key pair at ``path``; returns the public key line."""
    run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)])
    return path.with_suffix(".pub").read_text().strip()


Login = tuple[str, Path]  # a login user and the authorized_keys file sshd reads for it


def sshd_config(
    box: LabBox,
    host_key: Path,
    authorized_keys: Path | str,
    login: Optional[Login] = None,
    eic: str = "",
) -> str:
    """The sshd_config of one box: its mgmt address only, keys only, root allowed (with
    ``authorized_keys``, or ``none``); with ``login``, that user too (with its own keys), and
    no other; ``eic`` adds EC2 Instance Connect's AuthorizedKeysCommand
    (:func:`natfleet.lab.eic.sshd_lines`).

    The ``Match`` block for ``login`` ends the file: add nothing after it.
    """
    text = eic + (
        f"ListenAddress {box.mgmt_ip}\n"
        f"Port {box.ssh_port}\n"
        f"HostKey {host_key}\n"
        f"AuthorizedKeysFile {authorized_keys}\n"
        "PidFile none\n"
        "StrictModes no\n"
        "PermitRootLogin prohibit-password\n"
        "PubkeyAuthentication yes\n"
        "PasswordAuthentication no\n"
        "KbdInteractiveAuthentication no\n"
        "UsePAM no\n"
        "X11Forwarding no\n"
        "PrintMotd no\n"
        "MaxStartups 64:30:128\n"
        "MaxSessions 64\n"
        "LogLevel VERBOSE\n"
    )
    if login is None:
        return text
    user, keys = login
    return text + f"AllowUsers root {user}\nMatch User {user}\n    AuthorizedKeysFile {keys}\n"


def ssh_config(
    boxes: Sequence[LabBox], key_file: Path, known_hosts: Path, user: str = "root"
) -> str:
    """An ssh_config with ``Host nflab-boxN <mgmt ip>`` blocks using the lab key and hosts,
    logging in as ``user`` (``root@nflab-box1`` still picks root)."""
    blocks = []
    for box in boxes:
        blocks.append(
            f"Host {box.name} {box.mgmt_ip}\n"
            f"    HostName {box.mgmt_ip}\n"
            f"    Port {box.ssh_port}\n"
            f"    User {user}\n"
            f"    IdentityFile {key_file}\n"
            "    IdentitiesOnly yes\n"
            f"    UserKnownHostsFile {known_hosts}\n"
            "    GlobalKnownHostsFile /dev/null\n"
            "    StrictHostKeyChecking yes\n"
            "    ConnectTimeout 5\n"
        )
    return "\n".join(blocks)


def known_hosts_line(box: LabBox, host_public_key: str) -> str:
    """``198.19.255.11,nflab-box1 ssh-ed25519 AAAA...`` (``[ip]:port`` off port 22)."""
    names = [box.mgmt_ip, box.name]
    if box.ssh_port != 22:
        names = [f"[{name}]:{box.ssh_port}" for name in names]
    key_type, key_b64 = host_public_key.split()[:2]
    return f"{','.join(names)} {key_type} {key_b64}"


def start_sshd(
    box: LabBox,
    state_dir: Path,
    authorized_keys: Path,
    lifetime: int,
    login: Optional[Login] = None,
) -> tuple[int, str]:
    """Write the box's host key and config, start its sshd; returns (pid, host public key)."""
    ssh_dir = state_dir / SSH_DIR
    host_key = ssh_dir / f"{box.name}_host_ed25519_key"
    public = keygen(host_key, f"{box.name} host key")
    config = ssh_dir / f"{box.name}_sshd_config"
    # as on Amazon Linux: keys pushed with EC2 Instance Connect work too (natfleet.lab.ssm)
    eic_script = eic.write_script(state_dir / AWS_LAB_DIR)
    eic_text = eic.sshd_lines(eic_script, box.mgmt_ip)
    config.write_text(sshd_config(box, host_key, authorized_keys, login, eic_text))
    log = ssh_dir / f"{box.name}_sshd.log"
    pid = spawn(box.netns, [SSHD, "-D", "-e", "-f", str(config)], log, state_dir, lifetime)
    return pid, public


def wait_for_ssh(boxes: Sequence[LabBox], seconds: float = 10) -> None:
    """Wait until every box's sshd sends its banner; LabError naming the ones that did not."""
    waiting = wait_until(boxes, lambda box: ssh_answers(box.mgmt_ip, box.ssh_port), seconds)
    if waiting:
        names = ", ".join(f"{box.name} ({box.mgmt_ip}:{box.ssh_port})" for box in waiting)
        raise LabError(f"sshd did not answer within {seconds:.0f} s on {names}")


def ssh_answers(ip: str, port: int) -> bool:
    """True when something on ``ip:port`` sends an SSH banner within half a second."""
    try:
        with socket.create_connection((ip, port), timeout=0.5) as sock:
            return sock.recv(8).startswith(b"SSH-")
    except OSError:
        return False


def hold_sessions(
    boxes: Sequence[LabBox], state_dir: Path, config: Path, lifetime: int, seconds: float = 10
) -> None:
    """One SSH session per box held open from the root namespace: a ``local`` conntrack entry.

    Example: ``ssh -F <state>/ssh_config -o BatchMode=yes nflab-box1 sleep 7200``
    """
    for box in boxes:
        argv = ["ssh", "-F", str(config), "-o", "BatchMode=yes", box.name, "sleep", str(lifetime)]
        log = state_dir / SSH_DIR / f"{box.name}_session.log"
        spawn(None, argv, log, state_dir, lifetime)
    waiting = wait_until(boxes, _has_session, seconds)
    if waiting:
        names = ", ".join(box.name for box in waiting)
        raise LabError(f"the held SSH session did not start on {names}: see {state_dir / SSH_DIR}")


def _has_session(box: LabBox) -> bool:
    argv = ["ss", "-Htn", "state", "established", "sport", "=", f":{box.ssh_port}"]
    return bool(run(netns_argv(box.netns, argv)).strip())
