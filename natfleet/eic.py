"""EC2 Instance Connect: push the user's public key for 60 seconds, then SSH as today.

:class:`EicExecutor` wraps the SSH transport (natfleet.ssh.SshConnector): before each
connection it calls ``SendSSHPublicKey`` (``ec2-instance-connect``) for the box's instance ID,
its login user (``--ssh-user``, ssh_config ``User``, or ``[ssh] user``, e.g. ``ec2-user``) and
the public key of the identity natfleet will log in with (``KEY.pub`` beside ``-i KEY`` or
ssh_config's ``IdentityFile``); the box's sshd accepts that key for 60 seconds through its
``AuthorizedKeysCommand`` (package ec2-instance-connect, preinstalled on Amazon Linux). Host
keys are still checked strictly; no long-lived key is left on the box.

Example:
    >>> executor = EicExecutor(SshConnector(SshOptions(user="ec2-user",
    ...                        identity_files=("~/.ssh/nat",))), sessions)
    >>> run_fleet(targets, {"mode": "summary"}, executor)    # discovered instances
"""

from __future__ import annotations

import os
import re
import threading
import time
from typing import Any, Callable, Optional

from natfleet import aws
from natfleet.errors import TargetError
from natfleet.limits import Deadline
from natfleet.models import Target
from natfleet.remote import ExecResult

KEY_SECONDS = 60  # how long EC2 Instance Connect keeps a pushed key
_PUBLIC_KEY = re.compile(r"(ssh-ed25519|ssh-rsa|ecdsa-sha2-nistp(256|384|521)) [A-Za-z0-9+/]+=*")
DENIED = {"AccessDenied", "AccessDeniedException", "UnauthorizedOperation"}


def public_key(key_files: list[str]) -> tuple[str, str]:
    """(path, ``TYPE BASE64``) of the first ``KEY.pub`` next to one of ``key_files``; raises
    TargetError (``eic``) naming the files when there is none.

    Example: ``public_key(["~/.ssh/nat"])`` -> ``("~/.ssh/nat.pub", "ssh-ed25519 AAAA...")``
    """
    for key in key_files:
        path = os.path.expanduser(key) + ".pub"
        try:
            with open(path, encoding="ascii", errors="replace") as f:
                fields = f.read(16384).split()
        except OSError:
            continue
        text = " ".join(fields[:2])
        if _PUBLIC_KEY.fullmatch(text):
            return path, text
    tried = ", ".join(f"{k}.pub" for k in key_files) or "none (no -i, no IdentityFile)"
    raise TargetError(
        f"--eic pushes the public key of the key natfleet logs in with, and found none "
        f"(tried {tried}): give -i KEY with KEY.pub beside it, or an IdentityFile in ssh_config",
        kind="eic",
    )


class EicExecutor:
    """SSH through an SshConnector, after pushing the login key with EC2 Instance Connect.

    ``sessions`` maps profiles to boto3 sessions, ``profile_of`` instance IDs to profiles.
    """

    def __init__(
        self,
        connector: Any,
        sessions: dict[Optional[str], Any],
        profile_of: Optional[dict[str, Optional[str]]] = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not sessions:
            raise ValueError("EicExecutor needs at least one boto3 session")
        self.connector = connector
        self.sessions = sessions
        self.profile_of = profile_of or {}
        self.clock = clock
        self._lock = threading.Lock()
        self._clients: dict[tuple[Optional[str], str], Any] = {}

    def exec(
        self,
        target: Target,
        command: str,
        stdin: bytes,
        on_stdout: Callable[[bytes], None],
        deadline: Deadline,
        max_stderr: int = 65536,
        as_root: bool = True,
    ) -> ExecResult:
        """Push the key for ``target``'s login, then run ``command`` over SSH; TargetError
        ``eic`` when the push fails, ``auth`` (saying the key was pushed) when the box then
        refuses it."""
        if not target.instance_id:
            raise TargetError(
                f"{target.label}: --eic needs an EC2 instance (AWS discovery or "
                "--instance-id), not a --host",
                kind="eic",
            )
        if not target.host:
            raise TargetError(f"{target.label}: no address to connect to", kind="connect")
        hop = self._chain(target)[-1]  # the login the SSH transport will use
        path, key = public_key(hop.key_files)
        self._push(target, hop.user, key)
        pushed = self.clock()
        try:
            return self.connector.exec(
                target, command, stdin, on_stdout, deadline, max_stderr, as_root
            )
        except TargetError as exc:
            if exc.kind != "auth":
                raise
            age = self.clock() - pushed
            raise TargetError(
                f"{exc} -- the key {path} was pushed with EC2 Instance Connect for "
                f"{hop.user!r} {age:.1f} s before and the box refused it: a pushed key lasts "
                f"{KEY_SECONDS} s (a slow bastion or ProxyCommand can outlast it), and the box "
                "needs ec2-instance-connect (sshd's AuthorizedKeysCommand) and that login user",
                kind="auth",
            ) from None

    def _chain(self, target: Target) -> list[Any]:
        """The SSH hops to ``target`` (the connector's; ``--via auto`` looks at them too)."""
        return list(self.connector._chain(target))

    def _client(self, profile: Optional[str], region: str) -> Any:
        with self._lock:
            if (profile, region) not in self._clients:
                session = self.sessions[profile]
                self._clients[(profile, region)] = aws.client(
                    session, "ec2-instance-connect", region or None
                )
            return self._clients[(profile, region)]

    def _push(self, target: Target, user: str, key: str) -> None:
        from botocore.exceptions import BotoCoreError, ClientError

        instance = str(target.instance_id)
        profile = self.profile_of.get(instance, next(iter(self.sessions)))
        region = target.region or self.sessions[profile].region_name or ""
        client = self._client(profile, region)
        try:
            answer = client.send_ssh_public_key(
                InstanceId=instance, InstanceOSUser=user, SSHPublicKey=key
            )
        except ClientError as exc:
            error = exc.response.get("Error", {})
            code, message = error.get("Code", ""), str(error.get("Message", ""))[:300]
            if code in DENIED:
                raise TargetError(
                    f"{target.label}: access denied for ec2-instance-connect:SendSSHPublicKey "
                    f"(login {user!r}): grant it for the instance and ec2:osuser "
                    "(config/iam-policy.json)",
                    kind="aws_denied",
                ) from None
            raise TargetError(
                f"{target.label}: EC2 Instance Connect did not take the key for {user!r}: "
                f"{code}: {message}",
                kind="eic",
            ) from None
        except BotoCoreError as exc:
            raise TargetError(
                f"{target.label}: {aws.translate(exc, 'ec2-instance-connect:SendSSHPublicKey')}",
                kind="eic",
            ) from None
        if not answer.get("Success", False):
            raise TargetError(
                f"{target.label}: EC2 Instance Connect answered Success: false for {user!r}",
                kind="eic",
            )
