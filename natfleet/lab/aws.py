"""The lab's AWS: a moto server on 127.0.0.1 seeded with the lab boxes as NAT instances.

:func:`seed` starts ``moto.server`` (bound to 127.0.0.1 only, a free port, a hard lifetime
through ``SIGALRM``) and creates, with fake ``testing`` keys:

- VPC ``198.19.0.0/16``; the boxes' management subnet ``198.19.255.0/24``, where each lab box
  is an instance whose private IP is its management address and whose Elastic IP is its
  public address (tags ``Name=<box>``, ``Role=nat``), source/dest check off (instance and
  primary ENI: moto does not link them);
- a private subnet and route table per box sending ``0.0.0.0/0`` to the box: by InstanceId,
  except every third box (box 2, 5, ...) through its ENI (NetworkInterfaceId);
- a public subnet ``198.19.0.0/24`` with an internet gateway and a NAT gateway (EIP
  198.51.100.200; moto picks its private IP at random), used by one more route table;
- one ordinary instance with hostile tags (shell metacharacters, markup, bidi control, a
  near-miss ``Role``) that discovery must not pick up and renderers must print safely.

The server's Run Command and EC2 Instance Connect are real (:mod:`natfleet.lab.ssm`, set up
in ``<state>/aws-lab/``): ``natfleet summary --via ssm`` runs the agent in each box's namespace,
and ``--eic`` pushes a key each box's sshd accepts for 60 seconds.

:func:`publish_metrics` writes AWS/EC2 metrics from the boxes' real interface counters and a
deterministic AWS/NATGateway series. :func:`stop` ends the server (``natfleet lab down``).

Example:
    >>> aws_info = seed(state)          # called by natfleet.lab.up()
    >>> aws_info["endpoint_url"]
    'http://127.0.0.1:40123'
    >>> publish_metrics(state, since_minutes=60)
    1214
"""

from __future__ import annotations

import datetime as dt
import importlib.util
import socket
import subprocess
import sys
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Callable, Optional

from natfleet import aws
from natfleet.cloudwatch import EC2_NAMESPACE, NATGW_METRICS, NATGW_NAMESPACE
from natfleet.errors import AwsError, LabError
from natfleet.lab import ssm, system
from natfleet.lab.sshd import AWS_LAB_DIR

REGION = "us-east-1"
KEYS = ("testing", "testing")  # moto's fake credentials, never real ones
AMI = "ami-760aaa0f"  # an Amazon Linux image moto knows (ami-12c6146b is Windows)
INSTANCE_TYPE = "t4g.nano"
VPC_CIDR = "198.19.0.0/16"
MGMT_CIDR = "198.19.255.0/24"
PUBLIC_CIDR = "198.19.0.0/24"
GATEWAY_CLIENT_CIDR = "198.19.200.0/24"
HOSTILE_IP = "198.19.255.250"
GATEWAY_EIP = "198.51.100.200"  # documentation range, like every lab address
HOSTILE_TAGS = {
    # (no control characters: EC2's XML answers cannot carry them)
    "Name": "web'; $(reboot) `id` | <b>x</b> \u202egnp.exe \u00e9\u00e8 [31mred",
    "Role": "nat ",  # near miss: not "nat"
    "Owner": "a" * 255,
}
GATEWAY_POINTS = 60
DEFAULT_LIFETIME = 7200
_SERVER = (
    "import signal, sys; signal.alarm(int(sys.argv[1])); "
    "from moto.server import main; main(sys.argv[2:])"
)
SERVER_MODULES = ("moto", "flask", "flask_cors")  # what `moto.server` needs: the lab extra
LAB_EXTRA = "pip install 'natfleet[lab]'"
COUNTERS = ("rx_bytes", "tx_bytes", "rx_packets", "tx_packets")
EC2_FROM_COUNTER = {
    "NetworkIn": "rx_bytes",
    "NetworkOut": "tx_bytes",
    "NetworkPacketsIn": "rx_packets",
    "NetworkPacketsOut": "tx_packets",
}
_READ_SYSFS = (
    'for d in /sys/class/net/*; do n="${d##*/}"; [ "$n" = lo ] && continue; '
    'echo "$n $(cat "$d/statistics/rx_bytes") $(cat "$d/statistics/tx_bytes") '
    '$(cat "$d/statistics/rx_packets") $(cat "$d/statistics/tx_packets")"; done'
)


# --- the server -------------------------------------------------------------------------


def moto_missing() -> str:
    """'' when this Python can run the moto server, else a message naming the lab extra.

    Example (natfleet installed without its ``lab`` extra):
        >>> moto_missing()
        "the lab's AWS API (a moto server) needs natfleet's lab extra, and Python module ..."
    """
    for name in SERVER_MODULES:
        if importlib.util.find_spec(name) is None:
            return (
                f"the lab's AWS API (a moto server) needs natfleet's lab extra, and Python "
                f"module '{name}' is missing: {LAB_EXTRA} (into the Python that runs "
                f"natfleet, {sys.executable}), or 'natfleet lab up --no-aws' for a lab "
                "without AWS"
            )
    return ""


def _log_tail(log_file: Optional[Path], lines: int = 5) -> str:
    try:
        text = log_file.read_text(errors="replace") if log_file else ""
    except OSError:
        return ""
    return " | ".join(text.strip().splitlines()[-lines:])


def start_server(
    lifetime: int, log_file: Optional[Path] = None, runner_dir: Optional[Path] = None
) -> tuple[int, str]:
    """Start moto on 127.0.0.1 at a free port; returns ``(pid, endpoint_url)``.

    The process ends by itself after ``lifetime`` seconds (SIGALRM). Without the lab extra,
    LabError says to install it (see :func:`moto_missing`). With ``runner_dir``, its Run
    Command and Instance Connect are the lab's real ones (:mod:`natfleet.lab.ssm`, configured
    by ``runner_dir/runner.json``).

    Example:
        >>> start_server(600)
        (12345, 'http://127.0.0.1:40123')
    """
    missing = moto_missing()
    if missing:
        raise LabError(missing)
    port = _free_port()
    argv = [sys.executable, "-c", _SERVER, str(int(lifetime)), "-H", "127.0.0.1", "-p", str(port)]
    if runner_dir is not None:
        argv = ssm.server_argv(sys.executable, lifetime, runner_dir, port)
    out = open(log_file, "ab") if log_file else subprocess.DEVNULL  # noqa: SIM115
    try:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    finally:
        if log_file:
            out.close()  # type: ignore[union-attr]
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:  # its log goes with the lab's folder: say its end here
            said = _log_tail(log_file) or "no output"
            raise LabError(f"the moto server exited with {proc.returncode}: {said}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return proc.pid, f"http://127.0.0.1:{port}"
        except OSError:
            time.sleep(0.1)
    stop_pid(proc.pid)
    said = _log_tail(log_file) or "no output"
    raise LabError(f"the moto server did not listen on 127.0.0.1:{port} within 30 s: {said}")


def stop_pid(pid: int) -> None:
    """Stop a moto server started by :func:`start_server` (checked by its command line)."""
    from natfleet.lab.system import stop_pids

    stop_pids([pid], must_contain="moto.server")


def stop(state: Any) -> None:
    """Stop the lab's moto server, if any (``natfleet lab down`` calls this)."""
    pid = (state.aws or {}).get("pid")
    if pid:
        stop_pid(int(pid))


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _clients(endpoint_url: str, *services: str) -> list[Any]:
    session = aws.static_session(*KEYS, REGION)
    return [aws.client(session, s, REGION, endpoint_url=endpoint_url) for s in services]


# --- seeding ----------------------------------------------------------------------------


def seed(
    state: Any, read_counters: Optional[Callable[[str], dict[str, int]]] = None
) -> dict[str, Any]:
    """Start moto and create the lab's AWS side; fills ``box.instance_id`` and ``state.aws``,
    then publishes the first hour of metrics (box counters read with ``read_counters``,
    default: inside each box's namespace).

    Returns ``state.aws``: ``{"endpoint_url", "region", "pid", "nat_gateway_id", "vpc_id",
    "counters", "gateway_metrics"}``. On failure the server is stopped and LabError raised.
    """
    folder = Path(state.state_dir)
    log_file = folder / "moto.log" if folder.is_dir() else None
    lifetime = int(getattr(state, "lifetime", 0) or DEFAULT_LIFETIME)
    runner = folder / AWS_LAB_DIR  # Run Command and Instance Connect, for real (lab.ssm)
    ssm.write_runner(runner, {box.mgmt_ip: {"netns": box.netns} for box in state.boxes})
    pid, endpoint = start_server(lifetime, log_file, runner_dir=runner)
    try:
        try:
            (ec2,) = _clients(endpoint, "ec2")
            info = build_world(ec2, state.boxes)
            state.aws = {"endpoint_url": endpoint, "region": REGION, "pid": pid, **info}
            publish_metrics(state, read_counters=read_counters or box_counters)
        except (AwsError, KeyError) as exc:
            raise LabError(f"seeding the lab's moto server failed: {exc}") from exc
    except BaseException:
        stop_pid(pid)
        raise
    return state.aws


def build_world(ec2: Any, boxes: Sequence[Any]) -> dict[str, Any]:
    """Create the VPC, box instances, routes and NAT gateway (see the module docstring)."""
    call = _caller(ec2)
    vpc = call("create_vpc", CidrBlock=VPC_CIDR)["Vpc"]["VpcId"]
    mgmt = _subnet(call, vpc, MGMT_CIDR, "nflab-mgmt")
    public = _subnet(call, vpc, PUBLIC_CIDR, "nflab-public")
    igw = call("create_internet_gateway")["InternetGateway"]["InternetGatewayId"]
    call("attach_internet_gateway", InternetGatewayId=igw, VpcId=vpc)
    _route_table(call, vpc, public, "nflab-public", GatewayId=igw)

    for i, box in enumerate(boxes, 1):
        inst = _instance(call, mgmt, box.mgmt_ip, {"Name": box.name, "Role": "nat"})
        box.instance_id = inst["InstanceId"]
        eni = inst["NetworkInterfaces"][0]["NetworkInterfaceId"]
        off = {"Value": False}
        call("modify_instance_attribute", InstanceId=box.instance_id, SourceDestCheck=off)
        call("modify_network_interface_attribute", NetworkInterfaceId=eni, SourceDestCheck=off)
        if box.public_ip:  # the box's outside address, as its Elastic IP
            eip = call("allocate_address", Domain="vpc", Address=box.public_ip)
            call("associate_address", AllocationId=eip["AllocationId"], InstanceId=box.instance_id)
        private = _subnet(call, vpc, f"198.19.{i}.0/24", f"nflab-private-{i}")
        target = {"NetworkInterfaceId": eni} if i % 3 == 2 else {"InstanceId": box.instance_id}
        _route_table(call, vpc, private, f"nflab-private-{i}", **target)

    _instance(call, mgmt, HOSTILE_IP, HOSTILE_TAGS)
    eip = call("allocate_address", Domain="vpc", Address=GATEWAY_EIP)
    gateway = call(
        "create_nat_gateway",
        SubnetId=public,
        AllocationId=eip["AllocationId"],
        TagSpecifications=[{"ResourceType": "natgateway", "Tags": _tags({"Name": "nflab-natgw"})}],
    )["NatGateway"]["NatGatewayId"]
    clients = _subnet(call, vpc, GATEWAY_CLIENT_CIDR, "nflab-natgw-clients")
    _route_table(call, vpc, clients, "nflab-natgw-clients", NatGatewayId=gateway)
    return {"nat_gateway_id": gateway, "vpc_id": vpc}


def _caller(ec2: Any) -> Callable[..., dict[str, Any]]:
    return lambda operation, **kw: aws.call(ec2, operation, **kw)


def _tags(tags: dict[str, str]) -> list[dict[str, str]]:
    return [{"Key": k, "Value": v} for k, v in tags.items()]


def _subnet(call: Callable[..., dict[str, Any]], vpc: str, cidr: str, name: str) -> str:
    spec = [{"ResourceType": "subnet", "Tags": _tags({"Name": name})}]
    return call("create_subnet", VpcId=vpc, CidrBlock=cidr, TagSpecifications=spec)["Subnet"][
        "SubnetId"
    ]


def _route_table(
    call: Callable[..., dict[str, Any]], vpc: str, subnet: str, name: str, **target: str
) -> str:
    spec = [{"ResourceType": "route-table", "Tags": _tags({"Name": name})}]
    rtb = call("create_route_table", VpcId=vpc, TagSpecifications=spec)["RouteTable"]
    rtb_id = rtb["RouteTableId"]
    call("create_route", RouteTableId=rtb_id, DestinationCidrBlock="0.0.0.0/0", **target)
    call("associate_route_table", RouteTableId=rtb_id, SubnetId=subnet)
    return rtb_id


def _instance(
    call: Callable[..., dict[str, Any]], subnet: str, ip: str, tags: dict[str, str]
) -> dict[str, Any]:
    return call(
        "run_instances",
        ImageId=AMI,
        MinCount=1,
        MaxCount=1,
        InstanceType=INSTANCE_TYPE,
        SubnetId=subnet,
        PrivateIpAddress=ip,
        TagSpecifications=[{"ResourceType": "instance", "Tags": _tags(tags)}],
    )["Instances"][0]


def _save(state: Any) -> None:
    try:
        from natfleet.lab import save_state
    except ImportError:
        return
    save_state(state)


# --- metrics ----------------------------------------------------------------------------


def parse_counters(text: str) -> dict[str, int]:
    """Sum of ``name rx_bytes tx_bytes rx_packets tx_packets`` lines over interfaces.

    Example:
        >>> parse_counters("eth0 1000 2000 10 20\\nmgmt0 5 6 1 1\\n")
        {'rx_bytes': 1005, 'tx_bytes': 2006, 'rx_packets': 11, 'tx_packets': 21}
    """
    total = dict.fromkeys(COUNTERS, 0)
    for number, line in enumerate(text.splitlines(), 1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != 5 or not all(f.isdigit() for f in fields[1:]):
            raise LabError(f"interface counters line {number}: {line!r}")
        for key, value in zip(COUNTERS, fields[1:]):
            total[key] += int(value)
    return total


def box_counters(netns: str) -> dict[str, int]:
    """The box's interface counters (every interface but lo), read inside its namespace."""
    from natfleet.lab.system import netns_argv, run

    return parse_counters(run(netns_argv(netns, ["sh", "-c", _READ_SYSFS])))


def spread(total: int, points: int) -> list[int]:
    """``total`` over ``points`` integers with a deterministic shape, summing to ``total``.

    Example:
        >>> spread(100, 4)
        [10, 20, 30, 40]
    """
    weights = [(i % 5) + 1 for i in range(points)]
    parts = [total * w // sum(weights) for w in weights]
    parts[-1] += total - sum(parts)
    return parts


def gateway_series(points: int = GATEWAY_POINTS) -> dict[str, list[float]]:
    """Deterministic, plausible one-minute values for every AWS/NATGateway metric.

    Example:
        >>> gateway_series(3)["ActiveConnectionCount"]
        [200.0, 265.0, 330.0]
    """
    out: dict[str, list[float]] = {m: [] for m, _ in NATGW_METRICS}
    for i in range(points):
        attempts = 40 + (i * 7) % 13
        from_src = 1000 + 10 * (i % 7)
        from_dst = 1500 + 15 * (i % 5)
        values = {
            "ActiveConnectionCount": 200 + 65 * (i % 9),
            "ConnectionAttemptCount": attempts,
            "ConnectionEstablishedCount": attempts - i % 4,
            "ErrorPortAllocation": 3 if i in (37, 38) else 0,
            "IdleTimeoutCount": i % 3,
            "PacketsDropCount": 1 if i % 10 == 0 else 0,
            "PacketsInFromSource": from_src,
            "PacketsOutToDestination": from_src,
            "PacketsInFromDestination": from_dst,
            "PacketsOutToSource": from_dst,
            "BytesInFromSource": from_src * 400,
            "BytesOutToDestination": from_src * 400,
            "BytesInFromDestination": from_dst * 1100,
            "BytesOutToSource": from_dst * 1100,
        }
        for metric, value in values.items():
            out[metric].append(float(value))
    return out


def publish_metrics(
    state: Any,
    since_minutes: int = GATEWAY_POINTS,
    read_counters: Callable[[str], dict[str, int]] = box_counters,
    now: Optional[dt.datetime] = None,
) -> int:
    """Put AWS/EC2 metrics for every box and (once) the gateway's series; returns points put.

    Box traffic is the growth of the box's real counters since the last call (all of it the
    first time), spread over the last ``since_minutes`` minutes, so a window's NetworkIn sum
    equals the bytes the box really received.
    """
    endpoint = state.aws.get("endpoint_url")
    if not endpoint:
        raise LabError(f"the lab has no AWS API: run 'sudo {system.natfleet_command()} lab up'")
    (cw,) = _clients(endpoint, "cloudwatch")
    now = (now or dt.datetime.now(dt.timezone.utc)).replace(second=0, microsecond=0)
    minutes = [now - dt.timedelta(minutes=since_minutes - 1 - i) for i in range(since_minutes)]
    data: dict[str, list[dict[str, Any]]] = {EC2_NAMESPACE: [], NATGW_NAMESPACE: []}
    ec2, natgw = data[EC2_NAMESPACE], data[NATGW_NAMESPACE]
    seen = state.aws.setdefault("counters", {})
    for box in state.boxes:
        if not box.instance_id:
            continue
        counters = read_counters(box.netns)
        before = seen.get(box.name, dict.fromkeys(COUNTERS, 0))
        dim = [{"Name": "InstanceId", "Value": box.instance_id}]
        for metric, counter in EC2_FROM_COUNTER.items():
            delta = max(0, counters[counter] - before.get(counter, 0))
            ec2 += _points(metric, dim, minutes, spread(delta, since_minutes))
        cpu = [1.0 + (i * 7 % 10) / 2 for i in range(since_minutes)]
        ec2 += _points("CPUUtilization", dim, minutes, cpu)
        credits = [144.0 - i * 0.01 for i in range(since_minutes)]
        ec2 += _points("CPUCreditBalance", dim, minutes, credits)
        seen[box.name] = counters
    gateway = state.aws.get("nat_gateway_id")
    if gateway and not state.aws.get("gateway_metrics"):
        dim = [{"Name": "NatGatewayId", "Value": gateway}]
        at = [now - dt.timedelta(minutes=GATEWAY_POINTS - 1 - i) for i in range(GATEWAY_POINTS)]
        for metric, values in gateway_series().items():
            natgw += _points(metric, dim, at, values)
        state.aws["gateway_metrics"] = at[0].isoformat()
    for namespace, points in data.items():
        for i in range(0, len(points), 500):
            aws.call(cw, "put_metric_data", Namespace=namespace, MetricData=points[i : i + 500])
    _save(state)
    return len(ec2) + len(natgw)


def _points(
    metric: str,
    dimensions: list[dict[str, str]],
    times: Iterable[dt.datetime],
    values: Iterable[float],
) -> list[dict[str, Any]]:
    return [
        {"MetricName": metric, "Dimensions": dimensions, "Timestamp": t, "Value": float(v)}
        for t, v in zip(times, values)
    ]


PUBLISH_EVERY = 60  # seconds between two rounds of the lab's AWS/EC2 metrics


def publish_loop(state_dir: str, every: float = PUBLISH_EVERY) -> None:
    """Every ``every`` seconds, put each box's counter growth of the last minute into the
    lab's moto server, so ``natfleet compare`` sees real, current instance traffic however
    long the lab has been up. Stops when the lab is gone (the lab also bounds its lifetime).

    Run by ``natfleet lab up`` as ``python3 -m natfleet.lab.aws STATE_DIR``.
    """
    from natfleet.lab.state import load_state

    while True:
        time.sleep(every)
        try:
            publish_metrics(load_state(state_dir), since_minutes=1)
        except (LabError, AwsError):
            return  # the lab was taken down


if __name__ == "__main__":
    publish_loop(sys.argv[1], float(sys.argv[2]) if len(sys.argv) > 2 else PUBLISH_EVERY)
