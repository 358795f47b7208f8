"""The lab's EC2 Instance Connect on the box side: an sshd ``AuthorizedKeysCommand``.

On Amazon Linux, ec2-instance-connect's ``eic_run_authorized_keys`` prints the keys pushed
with ``SendSSHPublicKey`` in the last 60 seconds. The lab's moto server records each pushed
key in ``<folder>/eic-keys`` (:func:`natfleet.lab.ssm.record_key`: ``IP USER EXPIRES TYPE
BASE64`` lines); :func:`write_script` writes a small shell script that prints the unexpired
keys of one box and one user, and :func:`sshd_lines` is what a box's sshd_config needs to ask
it (``AuthorizedKeysCommand SCRIPT IP %u``, run as ``nobody``).

Example (what a box's sshd runs for a login as ec2-user):
    $ /run/natfleet-lab/aws-lab/eic-authorized-keys 198.19.255.11 ec2-user
    ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAA...
"""

from __future__ import annotations

from pathlib import Path

from natfleet.lab.ssm import KEYS_FILE

SCRIPT = "eic-authorized-keys"
RUN_AS = "nobody"  # the keys file holds public keys only; the script needs nothing else
SCRIPT_TEXT = """#!/bin/sh
# natfleet lab: EC2 Instance Connect's AuthorizedKeysCommand. Prints the keys pushed for box
# $1 and user $2 that have not expired (lines: IP USER EXPIRES TYPE BASE64).
now=$(date +%s)
exec awk -v ip="$1" -v user="$2" -v now="$now" \\
    '$1 == ip && $2 == user && $3 + 0 > now + 0 { print $4 " " $5 }' KEYS 2>/dev/null
"""


def write_script(folder: Path) -> Path:
    """Write the AuthorizedKeysCommand into ``folder`` (root's, mode 0755, as sshd demands
    of the command and of every folder above it); returns its path."""
    folder.mkdir(mode=0o755, parents=True, exist_ok=True)
    folder.chmod(0o755)
    path = folder / SCRIPT
    path.write_text(SCRIPT_TEXT.replace("KEYS", str(folder / KEYS_FILE)))
    path.chmod(0o755)
    return path


def sshd_lines(script: Path, ip: str) -> str:
    """The sshd_config lines that make a box accept keys pushed for it (``ip``).

    >>> sshd_lines(Path("/run/x/eic-authorized-keys"), "198.19.255.11").splitlines()[0]
    'AuthorizedKeysCommand /run/x/eic-authorized-keys 198.19.255.11 %u'
    """
    return f"AuthorizedKeysCommand {script} {ip} %u\nAuthorizedKeysCommandUser {RUN_AS}\n"
