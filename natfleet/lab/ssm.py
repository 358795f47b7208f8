"""The lab's Systems Manager Run Command and EC2 Instance Connect, made real inside moto.

moto records ``SendCommand`` but runs nothing, and ``SendSSHPublicKey`` ignores its key.
:func:`install` patches moto, in the lab's moto server process, so that:

- ``SendCommand`` to a lab instance runs its ``commands`` for real, as root, in the box's
  network namespace (``ip netns exec``), under the command's ``executionTimeout``; its
  invocation answers ``InvocationDoesNotExist`` for ``not_exist_seconds`` after sending, then
  moves Pending, InProgress, then Success or Failed with the real exit code (TimedOut /
  ExecutionTimedOut past the timeout); stdout and stderr are cut at 24,000 and 8,000
  characters as the SSM agent cuts them, and with ``OutputS3BucketName`` written whole into
  moto's S3 under the agent's key layout
  (``PREFIX/COMMAND/INSTANCE/awsrunShellScript/0.awsrunShellScript/stdout``);
- a box marked ``managed: false`` answers Pending, then Failed / Undeliverable; one marked
  ``registered: false`` (and any instance the lab does not know) makes SendCommand fail with
  ``InvalidInstanceId``, as AWS does for an instance SSM does not manage; one marked
  ``denied: true`` makes SendCommand fail with ``AccessDeniedException`` (outside the caller's
  IAM scope); ``env`` replaces the command's environment (``{"PATH": "/nowhere"}``: a box
  without the tools), ``delay`` keeps the box busy that many seconds first, and
  ``s3_put: false`` is an instance profile without ``s3:PutObject``;
- ``SendSSHPublicKey`` to a lab instance records the key for ``key_seconds`` (60, as EC2
  Instance Connect) in the folder's ``eic-keys`` file, which the box's sshd reads through an
  ``AuthorizedKeysCommand`` (:mod:`natfleet.lab.eic`).

The folder's ``runner.json`` says what each instance is, by private IP, and is read at every
call, so a test may change a box between runs::

    {"boxes": {"198.19.255.11": {"netns": "nflab-box1"}, "198.18.100.12": {"netns": "nfssm2",
     "managed": false}}, "not_exist_seconds": 1.0, "key_seconds": 60}

Example (the lab's moto server, see natfleet.lab.aws.start_server):
    $ python3 -c '...; from natfleet.lab import ssm; ssm.install(FOLDER); moto.server.main()'
"""

from __future__ import annotations

import importlib
import json
import re
import subprocess
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

from natfleet.lab.system import OwnLab

RUNNER_FILE = "runner.json"
KEYS_FILE = "eic-keys"
RUNS_DIR = "runs"
STDOUT_LIMIT, STDERR_LIMIT = 24000, 8000  # what GetCommandInvocation shows (the agent cuts)
MAX_OUTPUT = 256 << 20  # bytes of one command's stdout kept for S3
PENDING_SECONDS = 0.3  # an invocation is Pending this long before it runs
UNDELIVERABLE_SECONDS = 1.0  # a not-managed box turns Undeliverable after this
KEY_SECONDS = 60.0  # EC2 Instance Connect keys last 60 s
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
_USER = re.compile(r"[a-z_][a-z0-9_.-]{0,31}")
_KEY = re.compile(r"(ssh-ed25519|ssh-rsa|ecdsa-sha2-nistp(256|384|521)) [A-Za-z0-9+/]+=*( .*)?")
_lock = threading.Lock()


def write_runner(folder: Path, boxes: dict[str, dict[str, Any]], **settings: Any) -> Path:
    """Write ``runner.json`` (atomically): ``boxes`` by private IP, and settings
    (``not_exist_seconds``, ``key_seconds``). Returns its path.

    Example: ``write_runner(folder, {"198.19.255.11": {"netns": "nflab-box1"}})``
    """
    folder.mkdir(mode=0o755, parents=True, exist_ok=True)
    path = folder / RUNNER_FILE
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"boxes": boxes, **settings}, indent=1) + "\n")
    tmp.replace(path)
    return path


def _runner(folder: Path) -> dict[str, Any]:
    try:
        data = json.loads((folder / RUNNER_FILE).read_text())
    except (OSError, ValueError):
        data = {}
    data.setdefault("boxes", {})
    return data


@dataclass
class Run:
    """One invocation as the lab plays it."""

    sent: float
    status: str = "Pending"
    details: str = "Pending"
    code: int = -1
    stdout: str = ""
    stderr: str = ""
    started: str = ""
    ended: str = ""
    urls: dict[str, str] = field(default_factory=dict)

    def fields(self) -> dict[str, Any]:
        return {
            "Status": self.status,
            "StatusDetails": self.details,
            "ResponseCode": self.code,
            "StandardOutputContent": self.stdout[:STDOUT_LIMIT],
            "StandardErrorContent": self.stderr[:STDERR_LIMIT],
            "StandardOutputUrl": self.urls.get("stdout", ""),
            "StandardErrorUrl": self.urls.get("stderr", ""),
            "ExecutionStartDateTime": self.started,
            "ExecutionEndDateTime": self.ended,
        }


RUNS: dict[tuple[str, str], Run] = {}


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime())


def _error(code: str, message: str) -> Exception:
    # (a class of this module: moto looks the code up in the service of the request)
    base = _moto("moto.core.exceptions").ServiceException
    error: Exception = type("LabError", (base,), {"__module__": __name__})(code, message)
    return error


def _moto(name: str) -> Any:
    """A moto module, imported at run time (moto is the lab extra's, and not type-checked)."""
    return importlib.import_module(name)


def install(folder: str | Path) -> Callable[[], None]:
    """Patch moto's SSM and EC2 Instance Connect to play the lab (see the module docstring);
    returns a function that undoes it (for in-process tests)."""
    ec2_backends = _moto("moto.ec2").ec2_backends
    connect = _moto("moto.ec2instanceconnect.responses").Ec2InstanceConnectResponse
    backend = _moto("moto.ssm.models").SimpleSystemManagerBackend

    base = Path(folder)
    original_send = backend.send_command
    original_get = backend.get_command_invocation
    original_push = connect.send_ssh_public_key

    def private_ip(backend: Any, instance_id: str) -> str:
        try:
            ec2 = ec2_backends[backend.account_id][backend.region_name]
            return str(ec2.get_instance(instance_id).private_ip_address or "")
        except Exception:  # noqa: BLE001 - not an instance of this region
            return ""

    def send_command(self: Any, **kwargs: Any) -> Any:
        runner = _runner(base)
        ids = list(kwargs.get("instance_ids") or [])
        boxes = {i: runner["boxes"].get(private_ip(self, i)) for i in ids}
        unknown = [i for i, b in boxes.items() if b is None or b.get("registered") is False]
        if unknown:
            raise _error(
                "InvalidInstanceId",
                f"Instances [[{', '.join(unknown)}]] not in a valid state for account "
                f"{self.account_id}",
            )
        for i, box in boxes.items():
            if box and box.get("denied"):
                raise _error(
                    "AccessDeniedException",
                    f"User: arn:aws:iam::{self.account_id}:user/nflab is not authorized to "
                    f"perform: ssm:SendCommand on resource: arn:aws:ec2:{self.region_name}:"
                    f"{self.account_id}:instance/{i} because no identity-based policy allows "
                    "the ssm:SendCommand action",
                )
        command = original_send(self, **kwargs)
        for i in command.instance_ids:
            run = Run(sent=time.monotonic())
            with _lock:
                RUNS[(command.command_id, i)] = run
            worker = threading.Thread(
                target=_play,
                args=(base, run, boxes.get(i) or {}, command, i, self),
                daemon=True,
            )
            worker.start()
        return command

    def get_command_invocation(self: Any, command_id: str, instance_id: str, plugin: Any) -> Any:
        answer = original_get(self, command_id, instance_id, plugin)
        with _lock:
            run = RUNS.get((command_id, instance_id))
        if run is None:
            return answer
        wait = float(_runner(base).get("not_exist_seconds", 1.0))
        if time.monotonic() - run.sent < wait:
            raise _error(
                "InvocationDoesNotExist",
                "An error occurred (InvocationDoesNotExist) when calling the "
                "GetCommandInvocation operation",
            )
        with _lock:
            return {**answer, **run.fields()}

    def send_ssh_public_key(self: Any) -> str:
        instance_id = str(self._get_param("InstanceId") or "")
        user = str(self._get_param("InstanceOSUser") or "")
        key = str(self._get_param("SSHPublicKey") or "").strip()
        try:
            ec2 = ec2_backends[self.current_account][self.region]
            ip = str(ec2.get_instance(instance_id).private_ip_address or "")
        except Exception:  # noqa: BLE001 - moto's InvalidInstanceId
            raise _error(
                "EC2InstanceNotFoundException", f"Instance {instance_id} not found"
            ) from None
        if not _USER.fullmatch(user):
            raise _error("InvalidArgsException", f"invalid InstanceOSUser {user!r}")
        if not _KEY.fullmatch(key):
            raise _error("InvalidArgsException", "SSHPublicKey is not an OpenSSH public key")
        seconds = float(_runner(base).get("key_seconds", KEY_SECONDS))
        record_key(base, ip, user, key, time.time() + seconds)
        return json.dumps({"RequestId": str(uuid.uuid4()), "Success": True})

    backend.send_command = send_command
    backend.get_command_invocation = get_command_invocation
    connect.send_ssh_public_key = send_ssh_public_key

    def undo() -> None:
        backend.send_command = original_send
        backend.get_command_invocation = original_get
        connect.send_ssh_public_key = original_push

    return undo


def record_key(folder: Path, ip: str, user: str, key: str, expires: float) -> None:
    """Add ``ip user expires keytype base64`` to ``eic-keys`` (expired lines dropped)."""
    path = folder / KEYS_FILE
    key_type, key_b64 = key.split()[:2]
    with _lock:
        try:
            lines = path.read_text().splitlines()
        except OSError:
            lines = []
        now = time.time()
        kept = [line for line in lines if len(line.split()) == 5 and float(line.split()[2]) > now]
        kept.append(f"{ip} {user} {expires:.3f} {key_type} {key_b64}")
        tmp = path.with_suffix(".tmp")
        tmp.write_text("\n".join(kept) + "\n")
        tmp.chmod(0o644)  # read by sshd's AuthorizedKeysCommand as nobody: public keys only
        tmp.replace(path)


def _play(base: Path, run: Run, box: dict[str, Any], command: Any, instance: str, ssm: Any) -> None:
    """Move ``run`` through its states, running the commands for real when the box is managed."""
    time.sleep(PENDING_SECONDS)
    if box.get("managed") is False:
        time.sleep(UNDELIVERABLE_SECONDS)
        with _lock:
            run.status, run.details = "Failed", "Undeliverable"
        return
    parameters = command.parameters or {}
    script = "\n".join(parameters.get("commands") or []) + "\n"
    try:
        timeout = max(1, int((parameters.get("executionTimeout") or ["3600"])[0]))
    except ValueError:
        timeout = 3600
    runs = base / RUNS_DIR
    runs.mkdir(mode=0o700, exist_ok=True)
    stem = runs / f"{command.command_id}-{instance}"
    script_file = stem.with_suffix(".sh")
    script_file.write_text(script)
    delay = float(box.get("delay") or 0)
    env = {"PATH": PATH, "HOME": "/root", "LANG": "C.UTF-8", **(box.get("env") or {})}
    # env -i: the box's own environment (the SSM agent's), whatever the moto server has
    inner = ["env", "-i", *(f"{k}={v}" for k, v in env.items()), "/bin/sh", str(script_file)]
    if delay:  # a box too busy to start at once
        inner[-2:] = ["/bin/sh", "-c", f"sleep {delay:g}; exec /bin/sh {script_file}"]
    argv = ["timeout", "-k", "2", str(timeout), *inner]
    if box.get("netns"):
        argv = ["ip", "netns", "exec", str(box["netns"]), *argv]
    with _lock:
        run.status = run.details = "InProgress"
        run.started = _now()
    out_file, err_file = stem.with_suffix(".out"), stem.with_suffix(".err")
    with open(out_file, "wb") as out, open(err_file, "wb") as err:
        code = subprocess.call(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=err)
    stdout = _read(out_file)
    stderr = _read(err_file)
    for path in (script_file, out_file, err_file):
        path.unlink(missing_ok=True)
    urls = _to_s3(ssm, command, instance, stdout, stderr, box.get("s3_put", True))
    with _lock:
        run.code, run.stdout, run.stderr, run.urls = code, stdout, stderr, urls
        run.ended = _now()
        if code == 124:
            run.status, run.details = "TimedOut", "ExecutionTimedOut"
        elif code == 0:
            run.status = run.details = "Success"
        else:
            run.status = run.details = "Failed"


def _read(path: Path) -> str:
    with open(path, "rb") as f:
        return f.read(MAX_OUTPUT).decode("utf-8", "replace")


def _to_s3(
    ssm: Any, command: Any, instance: str, stdout: str, stderr: str, allowed: bool
) -> dict[str, str]:
    """Write the whole stdout and stderr into moto's S3 as the SSM agent does; the URLs."""
    bucket = command.output_s3_bucket_name
    if not bucket:
        return {}
    s3_backends = _moto("moto.s3.models").s3_backends
    prefix = (command.output_s3_key_prefix or "").strip("/")
    parts = [prefix, command.command_id, instance, "awsrunShellScript", "0.awsrunShellScript"]
    folder = "/".join(p for p in parts if p)
    urls = {}
    s3 = s3_backends[ssm.account_id]["aws"]
    for name, text in (("stdout", stdout), ("stderr", stderr)):
        key = f"{folder}/{name}"
        urls[name] = f"https://s3.{ssm.region_name}.amazonaws.com/{bucket}/{key}"
        if not allowed:
            continue
        try:
            s3.put_object(bucket, key, text.encode("utf-8"))
        except Exception:  # noqa: BLE001 - no such bucket: the agent's upload fails too
            continue
    return urls


SERVER = (
    "import signal, sys; signal.alarm(int(sys.argv[1])); "
    "from natfleet.lab import ssm; ssm.install(sys.argv[2]); "
    "from moto.server import main; main(sys.argv[3:])"
)


def server_argv(python: str, lifetime: int, folder: Path, port: int) -> list[str]:
    """The moto server's command line with the lab's Run Command and Instance Connect."""
    return [
        python,
        "-c",
        SERVER,
        str(int(lifetime)),
        str(folder),
        "-H",
        "127.0.0.1",
        "-p",
        str(port),
    ]


def key_lines(folder: Path, now: Optional[float] = None) -> list[str]:
    """The unexpired lines of ``eic-keys`` (for tests and ``lab status``)."""
    now = time.time() if now is None else now
    try:
        lines = (folder / KEYS_FILE).read_text().splitlines()
    except OSError:
        return []
    return [line for line in lines if len(line.split()) == 5 and float(line.split()[2]) > now]


# --- a lab of its own for tests: namespaces nfssm*, 198.18.100.0/24, its own moto server ---

PREFIX = "nfssm"
BRIDGE = "nfssm-br"
GATEWAY = "198.18.100.1"
NO_BOX_IPS = ("198.18.100.21", "198.18.100.22")  # instances with no namespace (never run)


@dataclass
class SsmBox:
    """One box of :class:`SsmLab`: namespace ``nfssm1`` at 198.18.100.11."""

    name: str
    ip: str
    netns: str = ""
    instance_id: str = ""


class SsmLab(OwnLab):
    """Boxes in namespaces ``nfssm1..N`` on bridge ``nfssm-br`` (198.18.100.0/24), and a moto
    server of its own (127.0.0.1, a free port) whose Run Command and Instance Connect run in
    those namespaces and in the shared lab's boxes (``shared``: LabBox records; read-only
    agent runs only). :meth:`start` builds it, :meth:`stop` removes every namespace, process
    and file it made. ``folder`` (under /run: sshd checks the folders above its
    AuthorizedKeysCommand) holds runner.json, eic-keys and the moto log.

    Example (as root)::

        with SsmLab(boxes=2, shared=state.boxes) as lab:
            lab.configure({lab.boxes[1].ip: {"managed": False}})
            env = lab.env()     # AWS_ENDPOINT_URL and fake keys for natfleet
    """

    def __init__(self, boxes: int = 2, shared: Any = (), lifetime: int = 900) -> None:
        self.count = boxes
        self.shared = [_copy_box(b) for b in shared]
        self.lifetime = lifetime
        self.folder = Path()
        self.boxes: list[SsmBox] = []
        self.extra: list[SsmBox] = []  # instances without a namespace
        self.pid = 0
        self.endpoint = ""
        self.settings: dict[str, Any] = {"not_exist_seconds": 1.0}

    def _begin(self) -> None:
        import tempfile

        remove_leftovers()
        self.folder = Path(tempfile.mkdtemp(prefix=f"{PREFIX}-", dir="/run"))

    def _build(self) -> None:
        from natfleet import aws
        from natfleet.lab import aws as lab_aws
        from natfleet.lab import topology

        self.folder.chmod(0o755)
        _ip("link", "add", BRIDGE, "type", "bridge")
        _ip("addr", "add", f"{GATEWAY}/24", "dev", BRIDGE)
        _ip("link", "set", BRIDGE, "up")
        for i in range(1, self.count + 1):
            box = SsmBox(f"{PREFIX}{i}", f"198.18.100.{10 + i}", f"{PREFIX}{i}")
            topology.new_netns(box.netns)
            _ip("link", "add", f"{PREFIX}-v{i}", "type", "veth", "peer", "name", "eth0",
                "netns", box.netns)  # fmt: skip
            _ip("link", "set", f"{PREFIX}-v{i}", "master", BRIDGE, "up")
            _ip("-n", box.netns, "addr", "add", f"{box.ip}/24", "dev", "eth0")
            _ip("-n", box.netns, "link", "set", "eth0", "up")
            self.boxes.append(box)
        self.extra = [SsmBox(f"{PREFIX}-x{n}", ip) for n, ip in enumerate(NO_BOX_IPS, 1)]
        self.configure({})
        self.pid, self.endpoint = lab_aws.start_server(
            self.lifetime, self.folder / "moto.log", runner_dir=self.folder
        )
        session = aws.static_session(lab_aws.KEYS[0], lab_aws.KEYS[1], lab_aws.REGION)
        ec2 = aws.client(session, "ec2", lab_aws.REGION, endpoint_url=self.endpoint)
        if self.shared:
            lab_aws.build_world(ec2, self.shared)
        vpc = aws.call(ec2, "create_vpc", CidrBlock="198.18.100.0/24")["Vpc"]["VpcId"]
        subnet = aws.call(ec2, "create_subnet", VpcId=vpc, CidrBlock="198.18.100.0/24")
        for box in [*self.boxes, *self.extra]:
            tags = [{"Key": "Name", "Value": box.name}, {"Key": "Role", "Value": "nat"}]
            box.instance_id = aws.call(
                ec2,
                "run_instances",
                ImageId=lab_aws.AMI,
                MinCount=1,
                MaxCount=1,
                InstanceType=lab_aws.INSTANCE_TYPE,
                SubnetId=subnet["Subnet"]["SubnetId"],
                PrivateIpAddress=box.ip,
                TagSpecifications=[{"ResourceType": "instance", "Tags": tags}],
            )["Instances"][0]["InstanceId"]

    def start_sshd(self, box: SsmBox) -> Path:
        """An sshd in ``box`` with Instance Connect's AuthorizedKeysCommand and no key file of
        its own (``AuthorizedKeysFile none``); its host key goes to ``known_hosts``. Returns
        the client key natfleet logs in with (``id_ed25519``, ``.pub`` beside it), which the
        box accepts only once pushed."""
        from natfleet.lab import eic, sshd
        from natfleet.lab.state import LabBox
        from natfleet.lab.system import SSHD, spawn

        lab_box = LabBox(box.name, box.netns, box.ip, "", "", "", "")
        host_key = self.folder / f"{box.name}_host_ed25519_key"
        public = sshd.keygen(host_key, f"{box.name} host key")
        lines = eic.sshd_lines(eic.write_script(self.folder), box.ip)
        config = self.folder / f"{box.name}_sshd_config"
        config.write_text(sshd.sshd_config(lab_box, host_key, "none", eic=lines))
        log = self.folder / f"{box.name}_sshd.log"
        spawn(box.netns, [SSHD, "-D", "-e", "-f", str(config)], log, self.folder, self.lifetime)
        with open(self.known_hosts, "a") as f:
            f.write(sshd.known_hosts_line(lab_box, public) + "\n")
        sshd.wait_for_ssh([lab_box])
        if not self.key_file.exists():
            sshd.keygen(self.key_file, "natfleet ssm lab client")
        return self.key_file

    @property
    def known_hosts(self) -> Path:
        return self.folder / "known_hosts"

    @property
    def key_file(self) -> Path:
        return self.folder / "id_ed25519"

    def configure(self, changes: dict[str, dict[str, Any]], **settings: Any) -> None:
        """Rewrite runner.json: every box managed in its namespace (shared ones too), with
        ``changes`` by IP on top (``{"198.18.100.12": {"managed": False}}``) and settings."""
        boxes: dict[str, dict[str, Any]] = {b.mgmt_ip: {"netns": b.netns} for b in self.shared}
        boxes.update({b.ip: {"netns": b.netns} for b in self.boxes})
        boxes.update({b.ip: {"managed": False} for b in self.extra})  # (no namespace)
        for ip, change in changes.items():
            boxes[ip] = {**boxes.get(ip, {}), **change}
        self.settings.update(settings)
        write_runner(self.folder, boxes, **self.settings)

    def env(self) -> dict[str, str]:
        """What points natfleet (boto3) at this lab's moto server."""
        from natfleet.lab import aws as lab_aws

        return {
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_DEFAULT_REGION": lab_aws.REGION,
            "AWS_ACCESS_KEY_ID": lab_aws.KEYS[0],
            "AWS_SECRET_ACCESS_KEY": lab_aws.KEYS[1],
        }

    def load_table(self, box: SsmBox, flows: int) -> None:
        """Put ``flows`` distinct SNAT'd UDP entries into ``box``'s conntrack table
        (``conntrack -R``; they last 3,000 s)."""
        import random

        pick = random.Random(flows)  # the same table for the same count
        lines = []
        for n in range(flows):
            src = f"192.0.2.{pick.randrange(1, 255)}"
            dst = f"203.0.113.{pick.randrange(1, 255)}"
            sport, dport = 1024 + n, pick.randrange(1, 65536)
            lines.append(
                f"-A -t 3000 -u SEEN_REPLY -p udp -s {src} -d {dst} --sport {sport} "
                f"--dport {dport} -r {dst} -q 198.51.100.{pick.randrange(1, 255)} "
                f"--reply-port-src {dport} --reply-port-dst {pick.randrange(1024, 65536)}"
            )
        table = self.folder / f"{box.name}.conntrack"
        table.write_text("\n".join(lines) + "\n")
        from natfleet.lab.system import netns_argv, run

        run(netns_argv(box.netns, ["conntrack", "-R", str(table)]), timeout=60)

    def stop(self) -> None:
        """Stop the moto server and every process in the namespaces; remove them all."""
        if self.pid:
            from natfleet.lab.aws import stop_pid

            stop_pid(self.pid)
            self.pid = 0
        from natfleet.lab.system import recorded_pids, stop_pids

        if self.folder.parts and (self.folder / "pids").is_dir():
            stop_pids(recorded_pids(self.folder), must_contain=str(self.folder))
        remove_leftovers()
        if self.folder.name.startswith(f"{PREFIX}-") and self.folder.parent == Path("/run"):
            import shutil

            shutil.rmtree(self.folder, ignore_errors=True)


def _ip(*args: str) -> None:
    from natfleet.lab.system import run

    run(["ip", *args])


def _copy_box(box: Any) -> Any:
    import dataclasses

    return dataclasses.replace(box, instance_id=None)


def remove_leftovers() -> None:
    """Remove every ``nfssm*`` namespace (and what runs in it), its veth, /etc/netns entry and
    the bridge. Example: ``python3 -m natfleet.lab.ssm down``."""
    from natfleet.lab import topology
    from natfleet.lab.system import netns_list

    names = netns_list(PREFIX)
    veths = [f"{PREFIX}-v{name[len(PREFIX) :]}" for name in names]
    topology.remove_bridged(PREFIX, BRIDGE, names, veths)


if __name__ == "__main__":
    import sys

    if sys.argv[1:] != ["down"]:
        sys.exit("usage: python3 -m natfleet.lab.ssm down   (remove leftover nfssm* boxes)")
    remove_leftovers()
