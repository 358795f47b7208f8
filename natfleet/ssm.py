"""Run the agent through AWS Systems Manager Run Command: no SSH key, no open port 22.

:class:`SsmExecutor` is a transport (the :class:`natfleet.remote.Executor` interface): the
fleet calls ``exec`` once per box, as it calls SSH. Boxes that ask at nearly the same time
with the same script share one ``SendCommand`` (``AWS-RunShellScript``, up to 50 instance IDs;
``MaxConcurrency`` and ``MaxErrors`` from ``[ssm]``); each box then polls its own
``GetCommandInvocation`` (retrying ``InvocationDoesNotExist`` for the first seconds: the API is
eventually consistent) until its status is final or its deadline passes, and hands its decoded
stdout to the fleet's trust boundary, chunk by chunk, as SSH does.

The script is a fixed template (:func:`build_script`): the bytes SSH would write on stdin
(``remote.agent_stdin``: the zlib-compressed agent and the request) travel base64-encoded in
single quotes, are piped into the same constant command as over SSH, and its stdout comes
back gzip-compressed and base64-encoded. No host name, tag or user string is ever in it.
``GetCommandInvocation`` returns only the first 24,000 characters of stdout: an answer of
exactly that length may be cut, so it is read from S3 (``--ssm-output-s3 BUCKET[/PREFIX]``,
``GetObject`` under the agent's key layout) or is a clear error naming the option.

Every final status is its own error, with advice (:data:`STATUS_ADVICE` and the kinds
``not_managed``, ``ssm_delivery``, ``ssm_cancelled``, ``aws_denied``, ``throttled``,
``ssm_output``, ``timeout``, ``agent``).

Example:
    >>> executor = SsmExecutor(SsmOptions(output_s3="my-bucket/natfleet"), sessions)
    >>> run_fleet(targets, {"mode": "summary"}, executor)     # targets with instance IDs
    [HostResult(...), HostError(..., kind='not_managed')]
"""

from __future__ import annotations

import base64
import binascii
import logging
import math
import re
import socket
import threading
import time
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Callable, Optional

from natfleet import agent, aws, remote
from natfleet.errors import TargetError
from natfleet.limits import Deadline
from natfleet.models import Target
from natfleet.remote import ExecResult

log = logging.getLogger(__name__)

DOCUMENT = "AWS-RunShellScript"
MAX_IDS = 50  # InstanceIds per SendCommand
STDOUT_LIMIT = 24000  # characters of stdout GetCommandInvocation returns (the SSM agent cuts)
STDERR_LIMIT = 8000
# No documented limit was found for the ``commands`` parameter; SSM documents are capped at
# 64 KB. natfleet stays under that, with room for the request around it.
MAX_SCRIPT = 64000  # characters
MIN_DELIVERY_TIMEOUT = 30  # SendCommand TimeoutSeconds: 30 .. 2592000
GATHER_SECONDS = 0.3  # how long the first box of a batch waits for others to join
NOT_EXIST_SECONDS = 20.0  # InvocationDoesNotExist is retried this long after sending
EXECUTION_MARGIN = 2  # seconds the box's own executionTimeout ends before natfleet's deadline
POLL_FIRST, POLL_MAX = 0.5, 4.0  # seconds between two GetCommandInvocation calls of a box
S3_PLUGIN_PATH = ("awsrunShellScript", "0.awsrunShellScript", "stdout")
VIA = ("ssh", "ssm", "auto")
_B64_TEXT = re.compile(r"[A-Za-z0-9+/=]*")
_CHUNK = 1 << 16
ALLOWED_COMMANDS = (remote.REMOTE_COMMAND, agent.RAW_COMMAND)  # constants only

MANAGED_ADVICE = (
    "an instance is managed by SSM when its SSM agent runs, its instance profile has "
    "AmazonSSMManagedInstanceCore (or Default Host Management Configuration is on), and it "
    "reaches the ssm, ssmmessages and ec2messages endpoints (through a NAT, the internet or "
    "VPC endpoints); check with 'aws ssm describe-instance-information', or use --via ssh"
)
DENIED_CODES = {"AccessDenied", "AccessDeniedException", "UnauthorizedOperation"}
THROTTLED_CODES = {"ThrottlingException", "Throttling", "RequestLimitExceeded", "TooManyRequests"}


@dataclass(frozen=True)
class SsmOptions:
    """How Run Command is used (``[ssm]`` in the config; ``--ssm-output-s3``).

    ``output_s3`` is ``BUCKET`` or ``BUCKET/PREFIX`` ("" : no S3 output, answers must fit
    24,000 characters). ``max_concurrency`` and ``max_errors`` go to SendCommand as they are
    (``"50"``, ``"10%"``).

    >>> SsmOptions(output_s3="logs/natfleet/run").s3_location()
    ('logs', 'natfleet/run')
    """

    output_s3: str = ""
    max_concurrency: str = "50"
    max_errors: str = "100%"
    gather_seconds: float = GATHER_SECONDS

    def s3_location(self) -> tuple[str, str]:
        """(bucket, key prefix) of ``output_s3``; ("", "") when there is none."""
        bucket, _, prefix = self.output_s3.strip().strip("/").partition("/")
        return bucket, prefix.strip("/")


def build_script(command: str, stdin: bytes) -> str:
    """The AWS-RunShellScript for ``command`` (one of natfleet's constant commands) with
    ``stdin`` base64-encoded in it: the box runs the command on those bytes and prints its
    stdout gzip-compressed and base64-encoded; the script exits with the command's status.
    Raises TargetError (``ssm_delivery``) when the script would exceed :data:`MAX_SCRIPT`.

    >>> script = build_script(remote.REMOTE_COMMAND, b"1\\nx{}")
    >>> "natfleet_in='MQp4e30='" in script and "| gzip -c | base64 -w0" in script
    True
    """
    if command not in ALLOWED_COMMANDS:
        raise TargetError("SSM runs only natfleet's constant commands", kind="internal")
    payload = base64.b64encode(stdin).decode("ascii")
    if not _B64_TEXT.fullmatch(payload):  # (never: b64encode's alphabet)
        raise TargetError("the SSM payload is not base64", kind="internal")
    script = (
        "# natfleet: its read-only agent and request (base64) on the stdin of the command\n"
        f"natfleet_in='{payload}'\n"
        "exec 4>&1\n"
        "natfleet_rc=$( { { printf '%s' \"$natfleet_in\" | base64 -d | "
        f"{command}; echo $? >&3; }} | gzip -c | base64 -w0 >&4; }} 3>&1 )\n"
        'exit "${natfleet_rc:-1}"\n'
    )
    if len(script) > MAX_SCRIPT:
        raise TargetError(
            f"the agent is {len(script):,} characters as an SSM command, over natfleet's "
            f"conservative limit of {MAX_SCRIPT:,} (SSM documents are capped at 64 KB): "
            "read these boxes with --via ssh",
            kind="ssm_delivery",
        )
    return script


def decode_answer(chunks: Iterable[str], on_stdout: Callable[[bytes], None], label: str) -> int:
    """Feed the gzip-compressed, base64-encoded answer in ``chunks`` (text) to ``on_stdout``
    as it decompresses, in pieces of at most 64 KiB (the sink's cap stops a bomb); returns the
    decoded byte count. Raises TargetError (``answer``) when it is not such an answer.

    >>> import gzip
    >>> out = []
    >>> decode_answer([base64.b64encode(gzip.compress(b"hello")).decode()], out.append, "b")
    5
    """
    unzip = zlib.decompressobj(wbits=31)
    pending = ""
    total = 0

    def bad(why: str) -> TargetError:
        return TargetError(
            f"{label}: the SSM output is not natfleet's encoded answer: {why}", kind="answer"
        )

    def feed(data: bytes) -> None:
        nonlocal total
        piece = unzip.decompress(data, _CHUNK)
        while True:
            if piece:
                total += len(piece)
                on_stdout(piece)
            if not unzip.unconsumed_tail:
                return
            piece = unzip.decompress(unzip.unconsumed_tail, _CHUNK)

    try:
        for chunk in chunks:
            text = "".join(chunk.split())
            if not _B64_TEXT.fullmatch(text):
                raise bad("characters outside base64")
            pending += text
            cut = len(pending) - len(pending) % 4
            if cut:
                feed(base64.b64decode(pending[:cut], validate=True))
                pending = pending[cut:]
        if pending:
            raise bad("base64 that ends mid-group")
        if not unzip.eof and (total or pending or unzip.unused_data):
            raise bad("the compressed answer ends early")
        if unzip.unused_data:
            raise bad("bytes after the compressed answer")
    except (binascii.Error, zlib.error) as exc:
        raise bad(str(exc)) from None
    return total


def _normal(status: str) -> str:
    """``Delivery Timed Out`` / ``DeliveryTimedOut`` -> ``deliverytimedout``."""
    return re.sub(r"[^a-z]", "", status.lower())


@dataclass
class _Batch:
    """Boxes that share one SendCommand: same client, same script, up to MAX_IDS."""

    key: tuple[Any, ...]
    ids: list[str]
    created: float
    closed: bool = False
    done: Optional[threading.Event] = None
    sent_at: float = 0.0
    commands: Optional[dict[str, str]] = None  # instance -> command id
    errors: Optional[dict[str, TargetError]] = None


class SsmExecutor:
    """Runs natfleet's constant commands on EC2 instances through SSM Run Command.

    ``sessions`` maps AWS profile names to boto3 sessions; ``profile_of`` names the profile
    an instance was found with (default: the only session). ``clock``/``sleep`` are for tests.
    """

    def __init__(
        self,
        options: SsmOptions,
        sessions: dict[Optional[str], Any],
        profile_of: Optional[dict[str, Optional[str]]] = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if not sessions:
            raise ValueError("SsmExecutor needs at least one boto3 session")
        self.options = options
        self.sessions = sessions
        self.profile_of = profile_of or {}
        self.sleep = sleep
        self._lock = threading.Lock()
        self._joined = threading.Condition(self._lock)
        self._open: dict[tuple[Any, ...], _Batch] = {}
        self._clients: dict[tuple[Optional[str], str, str], Any] = {}

    # ---- the Executor interface

    def exec(
        self,
        target: Target,
        command: str,
        stdin: bytes,
        on_stdout: Callable[[bytes], None],
        deadline: Deadline,
        max_stderr: int = 65536,
        as_root: bool = True,  # (Run Command runs as root)
    ) -> ExecResult:
        """Run ``command`` with ``stdin`` on ``target`` (its ``instance_id``) within
        ``deadline``; its decoded stdout goes to ``on_stdout``. Raises TargetError."""
        instance = target.instance_id
        if not instance:
            raise TargetError(
                f"{target.label}: SSM reads EC2 instances only (found by AWS discovery or "
                "--instance-id); read this box with --via ssh",
                kind="not_managed",
            )
        where = f"ssm:{instance}"
        script = build_script(command, stdin)
        profile = self.profile_of.get(instance, next(iter(self.sessions)))
        region = target.region or self.sessions[profile].region_name or ""
        ssm = self._client(profile, region, "ssm")
        command_id, sent_at = self._send(ssm, (profile, region, script), instance, deadline)
        invocation = self._poll(ssm, command_id, instance, sent_at, deadline, target.label)
        stdout = str(invocation.get("StandardOutputContent") or "")
        stderr = str(invocation.get("StandardErrorContent") or "").encode("utf-8", "replace")
        if len(stdout) >= STDOUT_LIMIT:
            chunks = self._from_s3(profile, region, command_id, instance, len(stdout), target)
        else:
            chunks = iter([stdout])
        decode_answer(chunks, on_stdout, target.label)
        code = invocation.get("ResponseCode")
        status = int(code) if isinstance(code, int) and code >= 0 else None
        return ExecResult(status, stderr[-max_stderr:], len(stdout) + len(stderr), where, "root")

    # ---- clients

    def _client(self, profile: Optional[str], region: str, service: str) -> Any:
        with self._lock:  # (making clients from one session is not thread-safe)
            key = (profile, region, service)
            if key not in self._clients:
                self._clients[key] = aws.client(self.sessions[profile], service, region or None)
            return self._clients[key]

    # ---- SendCommand, by batches

    def _send(
        self, ssm: Any, key: tuple[Any, ...], instance: str, deadline: Deadline
    ) -> tuple[str, float]:
        """Join (or open) the batch for ``key``; the box that opened it sends it once it is
        full or :attr:`SsmOptions.gather_seconds` passed. (command id, time sent)."""
        with self._lock:
            batch = self._open.get(key)
            opener = batch is None or batch.closed or len(batch.ids) >= MAX_IDS
            if opener:
                batch = _Batch(key, [], time.monotonic(), done=threading.Event())
                self._open[key] = batch
            assert batch is not None
            batch.ids.append(instance)
            if len(batch.ids) >= MAX_IDS:
                self._joined.notify_all()
            if opener:
                end = batch.created + self.options.gather_seconds
                while len(batch.ids) < MAX_IDS and time.monotonic() < end:
                    self._joined.wait(max(0.01, end - time.monotonic()))
                batch.closed = True
                if self._open.get(key) is batch:
                    del self._open[key]
        assert batch.done is not None
        if opener:
            try:
                self._send_batch(ssm, batch, deadline)
            finally:
                batch.done.set()
        elif not batch.done.wait(max(0.1, deadline.left())):
            raise TargetError(
                f"SSM: the command for {instance} was not sent in time", kind="ssm_delivery"
            )
        error = (batch.errors or {}).get(instance)
        if error is not None:
            raise error
        return (batch.commands or {})[instance], batch.sent_at

    def _send_batch(self, ssm: Any, batch: _Batch, deadline: Deadline) -> None:
        script = batch.key[2]
        left = max(1.0, deadline.left())
        execution = max(1, math.floor(left - EXECUTION_MARGIN))
        request: dict[str, Any] = {
            "DocumentName": DOCUMENT,
            "Comment": "natfleet (read-only conntrack agent)",
            "Parameters": {"commands": [script], "executionTimeout": [str(execution)]},
            "TimeoutSeconds": max(MIN_DELIVERY_TIMEOUT, math.ceil(left)),
            "MaxConcurrency": self.options.max_concurrency,
            "MaxErrors": self.options.max_errors,
        }
        bucket, prefix = self.options.s3_location()
        if bucket:
            request["OutputS3BucketName"] = bucket
            if prefix:
                request["OutputS3KeyPrefix"] = prefix
        batch.errors, batch.commands = {}, {}
        try:
            command_id = self._send_command(ssm, request, batch.ids)
            batch.commands = dict.fromkeys(batch.ids, command_id)
        except _SendError as exc:
            if len(batch.ids) == 1 or not exc.per_instance:
                batch.errors = dict.fromkeys(batch.ids, exc)
                return
            # one instance may be the cause (not managed, outside the IAM scope): one by one
            log.info("SendCommand of %d instances: %s; sending one by one", len(batch.ids), exc)
            for instance in batch.ids:
                try:
                    batch.commands[instance] = self._send_command(ssm, request, [instance])
                except _SendError as single:
                    batch.errors[instance] = single
        finally:
            batch.sent_at = time.monotonic()

    def _send_command(self, ssm: Any, request: dict[str, Any], ids: list[str]) -> str:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            answer = ssm.send_command(InstanceIds=list(ids), **request)
        except ClientError as exc:
            raise _send_error(exc, ids) from None
        except BotoCoreError as exc:
            message = str(aws.translate(exc, "ssm:SendCommand"))
            raise _SendError(message, kind="ssm_delivery") from None
        return str(answer["Command"]["CommandId"])

    # ---- GetCommandInvocation

    def _poll(
        self,
        ssm: Any,
        command_id: str,
        instance: str,
        sent_at: float,
        deadline: Deadline,
        label: str,
    ) -> dict[str, Any]:
        """The invocation once its status is final (Success, or Failed with an exit code);
        raises the status's TargetError otherwise, or at the deadline."""
        from botocore.exceptions import BotoCoreError, ClientError

        interval = POLL_FIRST
        last = ""  # the last status seen ("" : no invocation yet)
        throttled = False
        while True:
            try:
                invocation = ssm.get_command_invocation(CommandId=command_id, InstanceId=instance)
                throttled = False
            except ClientError as exc:
                code = exc.response.get("Error", {}).get("Code", "")
                if code == "InvocationDoesNotExist" and (
                    time.monotonic() - sent_at < NOT_EXIST_SECONDS
                ):
                    invocation = None
                elif code in THROTTLED_CODES:
                    invocation, throttled = None, True
                else:
                    raise _poll_error(exc, instance, label) from None
            except BotoCoreError as exc:
                raise TargetError(
                    str(aws.translate(exc, "ssm:GetCommandInvocation")), kind="ssm_delivery"
                ) from None
            if invocation is not None:
                last = str(invocation.get("StatusDetails") or invocation.get("Status") or "")
                final = _final(invocation, label)
                if final:
                    return invocation
            if deadline.left() <= 0:
                raise _still(last, label, deadline.seconds, throttled)
            self.sleep(max(0.05, min(interval, deadline.left())))
            interval = min(POLL_MAX, interval * 1.5)

    # ---- S3 output

    def _from_s3(
        self,
        profile: Optional[str],
        region: str,
        command_id: str,
        instance: str,
        shown: int,
        target: Target,
    ) -> Iterator[str]:
        """The full stdout from S3, as text chunks; TargetError (``ssm_output``) when there is
        no S3 output or the object cannot be read."""
        bucket, prefix = self.options.s3_location()
        if not bucket:
            raise TargetError(
                f"{target.label}: the answer is {shown:,} characters or more, and "
                f"GetCommandInvocation returns only the first {STDOUT_LIMIT:,} (possibly cut): "
                "give --ssm-output-s3 BUCKET[/PREFIX] (or [ssm] output_s3) to read it from S3 "
                "(the instance profile needs s3:PutObject there, you s3:GetObject), or "
                "narrow it (-p, -s, -d, --limit), or use summary",
                kind="ssm_output",
            )
        key = s3_key(prefix, command_id, instance)
        return self._read_s3(self._client(profile, region, "s3"), bucket, key, target.label)

    def _read_s3(self, s3: Any, bucket: str, key: str, label: str) -> Iterator[str]:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            body = s3.get_object(Bucket=bucket, Key=key)["Body"]
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "")
            if code in DENIED_CODES:
                raise TargetError(
                    f"{label}: access denied for s3:GetObject on s3://{bucket}/{key}: grant it "
                    "(config/iam-policy.json, the S3 output statement)",
                    kind="aws_denied",
                ) from None
            if code in ("NoSuchKey", "NoSuchBucket", "404"):
                raise TargetError(
                    f"{label}: the command's output is not in S3 at s3://{bucket}/{key} "
                    f"({code}): the instance profile needs s3:PutObject on that bucket and "
                    "prefix (and the bucket must exist, in a region the box reaches)",
                    kind="ssm_output",
                ) from None
            raise TargetError(
                f"{label}: reading s3://{bucket}/{key}: {aws.translate(exc)}", kind="ssm_output"
            ) from None
        except BotoCoreError as exc:
            raise TargetError(
                f"{label}: reading s3://{bucket}/{key}: {exc}", kind="ssm_output"
            ) from None
        return _body_text(body)


def _body_text(body: Any) -> Iterator[str]:
    try:
        while True:
            data = body.read(_CHUNK)
            if not data:
                return
            yield data.decode("ascii", "replace")
    finally:
        body.close()


def s3_key(prefix: str, command_id: str, instance: str) -> str:
    """Where the SSM agent puts a box's stdout: ``PREFIX/COMMAND/INSTANCE/awsrunShellScript/
    0.awsrunShellScript/stdout``.

    >>> s3_key("natfleet", "c0ffee", "i-0abc")
    'natfleet/c0ffee/i-0abc/awsrunShellScript/0.awsrunShellScript/stdout'
    >>> s3_key("", "c0ffee", "i-0abc").split("/")[0]
    'c0ffee'
    """
    parts = [prefix.strip("/"), command_id, instance, *S3_PLUGIN_PATH]
    return "/".join(p for p in parts if p)


def _aws_message(exc: Any) -> str:
    error = exc.response.get("Error", {})
    message = str(error.get("Message", ""))
    if str(error.get("Code", "")).isdigit() or message.lstrip().startswith("<"):
        return "the endpoint answered with an HTTP error page, not AWS's API"
    return message if len(message) <= 300 else message[:300] + "..."


class _SendError(TargetError):
    """A failed SendCommand; ``per_instance`` when one instance may be the cause."""

    def __init__(self, message: str, kind: str, per_instance: bool = False) -> None:
        super().__init__(message, kind=kind)
        self.per_instance = per_instance


def _send_error(exc: Any, ids: list[str]) -> _SendError:
    """The TargetError for a failed SendCommand of ``ids``; ``per_instance`` is set when one
    instance may be the cause (then each is sent alone)."""
    code = exc.response.get("Error", {}).get("Code", "")
    which = ids[0] if len(ids) == 1 else f"{len(ids)} instances"
    per_instance = code in DENIED_CODES or code == "InvalidInstanceId"
    if code in DENIED_CODES:
        return _SendError(
            f"access denied for ssm:SendCommand on {which}: grant it on the {DOCUMENT} "
            "document and on the instance (config/iam-policy.json scopes it by tag: is the "
            f"instance tagged?): {_aws_message(exc)}",
            kind="aws_denied",
            per_instance=per_instance,
        )
    if code == "InvalidInstanceId":
        return _SendError(
            f"{which} is not a managed instance of SSM (InvalidInstanceId): {MANAGED_ADVICE}",
            kind="not_managed",
            per_instance=per_instance,
        )
    if code in THROTTLED_CODES:
        return _SendError(
            f"SSM throttled SendCommand for {which} (Rate Exceeded: {code}) after adaptive "
            "retries: read fewer boxes at once (--parallel) or try again later",
            kind="throttled",
        )
    return _SendError(
        f"ssm:SendCommand for {which} failed: {code}: {_aws_message(exc)}", kind="ssm_delivery"
    )


def _poll_error(exc: Any, instance: str, label: str) -> TargetError:
    code = exc.response.get("Error", {}).get("Code", "")
    if code in DENIED_CODES:
        return TargetError(
            f"{label}: access denied for ssm:GetCommandInvocation: grant it "
            "(config/iam-policy.json)",
            kind="aws_denied",
        )
    if code == "InvocationDoesNotExist":
        return TargetError(
            f"{label}: SSM lists no invocation of the command on {instance} "
            f"(InvocationDoesNotExist for {NOT_EXIST_SECONDS:g} s after sending): "
            f"{MANAGED_ADVICE}",
            kind="ssm_delivery",
        )
    return TargetError(
        f"{label}: ssm:GetCommandInvocation failed: {code}: {_aws_message(exc)}",
        kind="ssm_delivery",
    )


# A final status that is not an answer: (kind, what happened, what to do)
STATUS_ADVICE: dict[str, tuple[str, str, str]] = {
    "deliverytimedout": (
        "ssm_delivery",
        "SSM did not deliver the command before its delivery timeout (Delivery Timed Out)",
        "the instance was offline, stopped, or its SSM agent lost its connection",
    ),
    "executiontimedout": (
        "timeout",
        "the command ran past its execution timeout on the box (Execution Timed Out)",
        "raise --timeout for a very large table",
    ),
    "undeliverable": (
        "not_managed",
        "SSM cannot deliver commands to this instance (Undeliverable)",
        MANAGED_ADVICE,
    ),
    "terminated": (
        "ssm_cancelled",
        "the command was terminated on the box (Terminated)",
        "someone or something stopped it (a reboot, the SSM agent restarting); try again",
    ),
    "cancelled": (
        "ssm_cancelled",
        "the command was cancelled (Cancelled)",
        "cancelled by a person, or by MaxErrors ([ssm] max_errors) after other boxes failed",
    ),
    "cancelling": (
        "ssm_cancelled",
        "the command is being cancelled (Cancelling)",
        "cancelled by a person, or by MaxErrors ([ssm] max_errors) after other boxes failed",
    ),
    "invalidplatform": (
        "not_managed",
        f"the instance cannot run {DOCUMENT} (Invalid Platform)",
        "it is not a Linux instance; read it with --via ssh",
    ),
    "accessdenied": (
        "aws_denied",
        "SSM refused to run the command on the instance (Access Denied)",
        "the caller's ssm:SendCommand permission on the document, the instance or its tags "
        "(config/iam-policy.json), or a run-as setting of Session Manager, refused it",
    ),
    "rateexceeded": (
        "throttled",
        "SSM refused the command: too many commands at once (Rate Exceeded)",
        "read fewer boxes at once (--parallel, [ssm] max_concurrency) or try again later",
    ),
}
_ANSWERED = {"success", "failed"}  # an exit code, and maybe an answer on stdout
_WAITING = {"pending", "inprogress", "delayed", ""}


def _final(invocation: dict[str, Any], label: str) -> bool:
    """True when the invocation finished with an exit code (Success or Failed); False while
    it is on its way; raises the TargetError of any other final status."""
    details = _normal(str(invocation.get("StatusDetails") or ""))
    status = _normal(str(invocation.get("Status") or ""))
    name = details or status
    if name in _ANSWERED and status not in ("timedout", "cancelled"):
        return True
    if name in _WAITING and status in _WAITING | {"inprogress"}:
        return False
    if name not in STATUS_ADVICE and status == "timedout":
        name = "executiontimedout"
    kind, what, advice = STATUS_ADVICE.get(
        name,
        (
            "ssm_delivery",
            f"SSM ended with status {invocation.get('StatusDetails')!r}",
            "see the command in the Systems Manager console",
        ),
    )
    tail = remote._tail(str(invocation.get("StandardErrorContent") or "").encode())
    said = f" (stderr: {tail})" if tail else ""
    raise TargetError(f"{label}: {what}{said}: {advice}", kind=kind)


def _still(last: str, label: str, seconds: float, throttled: bool) -> TargetError:
    """The TargetError for a box whose deadline passed while its command was on its way."""
    state = _normal(last)
    if throttled:
        return TargetError(
            f"{label}: SSM throttled GetCommandInvocation until the deadline ({seconds:g} s, "
            "Rate Exceeded): read fewer boxes at once (--parallel) or raise --timeout",
            kind="throttled",
        )
    if state == "pending":
        return TargetError(
            f"{label}: the command was still Pending after {seconds:g} s: the instance's SSM "
            f"agent did not pick it up (is it running and connected?): {MANAGED_ADVICE}",
            kind="ssm_delivery",
        )
    if state == "delayed":
        return TargetError(
            f"{label}: SSM could not reach the instance's agent within {seconds:g} s "
            "(Delayed: it retries; the instance may be stopped, offline or overloaded)",
            kind="ssm_delivery",
        )
    if state == "inprogress":
        return TargetError(
            f"{label}: the command was still running after {seconds:g} s (In Progress): "
            "raise --timeout for a very large table",
            kind="timeout",
        )
    return TargetError(
        f"{label}: SSM listed no invocation of the command within {seconds:g} s "
        "(InvocationDoesNotExist)",
        kind="ssm_delivery",
    )


class AutoExecutor:
    """``--via auto``: SSH for a box with a reachable SSH path, SSM for a discovered instance
    without one. A box has a reachable SSH path when it is not an EC2 instance (``--host``),
    or ssh_config / ``--proxy-jump`` reach it through a bastion or ProxyCommand, or a TCP
    connection to its SSH address and port opens within ``probe_timeout`` seconds. An
    instance with no address of the ``--address`` kind, or whose port does not answer in
    time (refused, unreachable, filtered), is read through SSM. ``chosen`` records, per box
    label, ``ssh`` or ``ssm`` and why.

    >>> auto = AutoExecutor(ssh_connector, SsmExecutor(SsmOptions(), sessions))
    >>> auto.choose(Target("nat-a", host="", instance_id="i-0abc"))
    ('ssm', 'no address to connect to')
    """

    def __init__(
        self,
        ssh: Any,
        ssm: Any,
        probe_timeout: float = 1.5,
        tcp_connect: Callable[..., Any] = socket.create_connection,
    ) -> None:
        self.ssh = ssh
        self.ssm = ssm
        self.probe_timeout = probe_timeout
        self.tcp_connect = tcp_connect
        self.chosen: dict[str, tuple[str, str]] = {}

    def choose(self, target: Target) -> tuple[str, str]:
        """(``ssh`` or ``ssm``, why) for ``target``."""
        if not target.instance_id:
            return "ssh", "not an EC2 instance"
        if not target.host:
            return "ssm", "no address to connect to"
        chain = getattr(self.ssh, "_chain", None)
        hops = chain(target) if chain else []
        if len(hops) > 1 or (hops and hops[-1].proxy_command):
            return "ssh", "through a bastion or ProxyCommand"
        host, port = (hops[-1].hostname, hops[-1].port) if hops else (target.host, 22)
        try:
            self.tcp_connect((host, port), self.probe_timeout).close()
        except OSError as exc:
            return "ssm", f"{host}:{port} did not answer ({exc.strerror or type(exc).__name__})"
        return "ssh", f"{host}:{port} answered"

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
        """Run through the transport :meth:`choose` picks (once per box and run)."""
        if target.label not in self.chosen:
            self.chosen[target.label] = self.choose(target)
            log.info("%s: via %s (%s)", target.label, *self.chosen[target.label])
        via = self.ssm if self.chosen[target.label][0] == "ssm" else self.ssh
        return via.exec(target, command, stdin, on_stdout, deadline, max_stderr, as_root)


def ssm_targets(errors: Iterable[Any], devices: Iterable[Any]) -> tuple[list[Target], list[Any]]:
    """Split discovery's errors: running instances that only lack an address become targets
    (SSM needs no address), the rest stay errors.

    >>> targets, errors = ssm_targets(errors, devices)   # "no private address" -> a target
    """
    running = {d.id for d in devices if getattr(d, "state", "") == "running"}
    targets, kept = [], []
    for error in errors:
        target = error.target
        if target.instance_id in running and not target.host:
            targets.append(target)
        else:
            kept.append(error)
    return targets, kept
