"""A lab of broken NAT boxes for ``natfleet check``: one planted fault per box, real kernels,
real sshd, real traffic; and an AWS side (a moto server of its own) with planted faults.

Layout (box i = 1..7), apart from the shared lab (``nflab-*``) and its moto server::

    root ns: bridge nffault-br 198.19.252.1/24 --veth nffault-m{i}/mgmt0-- nffault{i} .(10+i)
    nffault-in{i} eth0 198.18.110.(66+16(i-1))/28 --veth-- lan0 .(65+16(i-1))   nffault{i}
    nffault{i}    wan0 198.18.110.(10+i)/26 --veth b{i}-- br0 198.18.110.1/26 nffault-inet
    nffault-inet  br0 also carries nffault-srv's eth0 198.18.110.50/26 (TCP 443, UDP 5353);
                  198.18.110.200 is blackholed there (the sink of the table fill)

The faults (:data:`FAULTS`): ``healthy`` (no warning or critical finding), ``forwarding``
(ip_forward 0), ``no-masquerade`` (no NAT rule), ``wrong-interface`` (MASQUERADE -o eth0,
which the box does not have), ``fill`` (nf_conntrack_max is global on this kernel and
read-only in a namespace, so the box's own table is filled with real UDP flows past 95 % of
it: ~254,000 entries, its namespace only), ``ports`` (ip_local_port_range and the
MASQUERADE port range 61000-61031, 30 real UDP flows toward one destination: 94 %), and
``source-dest-check`` (a healthy box whose EC2 instance has the check on). In moto
(:func:`seed_aws`): every box is a tagged instance behind its own route table; an instance
``nffault-stopped`` that a route table still uses is stopped; ``nffault-gone``, also
routed, is terminated (a blackholed route); a NAT gateway in the same VPC has an hour of
metrics with traffic and 10 ErrorPortAllocation a minute.

Everything is bounded: every process has a hard lifetime, the traffic is counted. Nothing
leaves the lab (``unreachable`` routes and a resolver of nowhere, as in the shared lab).

Example (as root)::

    with FaultLab() as lab:
        env = lab.env()          # NATFLEET_SSH_CONFIG, AWS_ENDPOINT_URL, ... for natfleet
        subprocess.run(["natfleet", "check", "--format", "json"], env={**os.environ, **env})
"""

from __future__ import annotations

import datetime as dt
import json
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from natfleet.errors import LabError
from natfleet.lab import sshd, topology
from natfleet.lab.state import MOTO_CREDENTIALS, LabBox
from natfleet.lab.system import (
    LabOwner,
    OwnLab,
    netns_argv,
    netns_list,
    recorded_pids,
    run,
    spawn,
    stop_pids,
    sysctl_in,
)
from natfleet.lab.traffic import GENERATOR

PREFIX = "nffault"
BRIDGE = "nffault-br"
GATEWAY = "198.19.252.1"
INET_NS = "nffault-inet"
SRV_NS = "nffault-srv"
INET_IP = "198.18.110.1"
SERVER_IP = "198.18.110.50"
SINK_IP = "198.18.110.200"
LAB_CIDR = "198.18.110.0/24"  # routed explicitly: every lab namespace has 198.18.0.0/15 unreachable
TCP_PORT, UDP_PORT = 443, 5353
OWNER = LabOwner(Path("/run/nffault.json"), "the fault lab is up", "natfleet.lab.faults")
DEFAULT_LIFETIME = 1800
PORTS = (61000, 61031)  # the ports box's port range: 32 ports
PORT_FLOWS = 30  # toward one destination: 30 / 32 = 93.75 %
FILL_TARGET = 0.97  # of nf_conntrack_max
REGION = "us-east-1"
VPC_CIDR = "198.19.252.0/24"
MGMT_CIDR = "198.19.252.0/26"
STOPPED_IP, GONE_IP = "198.19.252.40", "198.19.252.41"
GATEWAY_EIP = "198.18.110.250"
PORT_ERRORS_PER_MINUTE = 10


@dataclass(frozen=True)
class Fault:
    """A planted fault: the box it is on and the finding that must name it."""

    name: str
    finding: Optional[str]  # None: the healthy box


FAULTS = (
    Fault("healthy", None),
    Fault("forwarding", "forwarding-off"),
    Fault("no-masquerade", "masquerade-missing"),
    Fault("wrong-interface", "masquerade-wrong-interface"),
    Fault("fill", "conntrack-fill-critical"),
    Fault("ports", "port-pressure"),
    Fault("source-dest-check", "source-dest-check-on"),
)
# AWS-only faults: (subject, finding); the subject is named by its EC2 Name tag or id
AWS_FAULTS = (
    ("nffault-stopped", "route-to-stopped-instance"),
    ("nffault-gone", "route-to-missing-target"),
    ("nffault-natgw", "natgw-port-allocation-errors"),
    ("nffault-natgw", "natgw-carrying-traffic"),
)


def fault_box(i: int) -> LabBox:
    """Box ``i`` (1-based) of the fault lab.

    >>> fault_box(2).mgmt_ip, fault_box(2).inside_host_ip
    ('198.19.252.12', '198.18.110.82')
    """
    base = 64 + 16 * (i - 1)
    return LabBox(
        name=f"{PREFIX}{i}",
        netns=f"{PREFIX}{i}",
        mgmt_ip=f"198.19.252.{10 + i}",
        public_ip=f"198.18.110.{10 + i}",
        inside_ip=f"198.18.110.{base + 1}",
        inside_netns=f"{PREFIX}-in{i}",
        inside_host_ip=f"198.18.110.{base + 2}",
    )


def nat_rules(box: LabBox, fault: str) -> str:
    """The box's ``iptables-restore`` input for its fault (healthy: MASQUERADE out of wan0
    with --random-fully).

    >>> "-o eth0" in nat_rules(fault_box(4), "wrong-interface")
    True
    """
    lan = box.inside_ip.rsplit(".", 1)[0] + f".{int(box.inside_ip.rsplit('.', 1)[1]) - 1}/28"
    if fault == "no-masquerade":
        return "*nat\nCOMMIT\n"
    if fault == "ports":  # --to-ports needs a protocol
        rules = [
            f"-A POSTROUTING -s {lan} -o wan0 -p {proto} -j MASQUERADE --to-ports "
            f"{PORTS[0]}-{PORTS[1]}"
            for proto in ("udp", "tcp")
        ]
    else:
        out = "eth0" if fault == "wrong-interface" else "wan0"
        rules = [f"-A POSTROUTING -s {lan} -o {out} -j MASQUERADE --random-fully"]
    return "*nat\n" + "".join(rule + "\n" for rule in rules) + "COMMIT\n"


def box_sysctls(fault: str, lifetime: int) -> dict[str, object]:
    """A tuned NAT box's sysctls, and the fault's change."""
    keep = lifetime + 600
    values: dict[str, object] = {
        "net.ipv4.ip_forward": 0 if fault == "forwarding" else 1,
        "net.netfilter.nf_conntrack_tcp_timeout_established": 3600,
        "net.netfilter.nf_conntrack_acct": 1,
        "net.netfilter.nf_conntrack_udp_timeout": keep,
        "net.netfilter.nf_conntrack_udp_timeout_stream": keep,
        "net.ipv4.conf.all.rp_filter": 0,
    }
    if fault == "ports":
        values["net.ipv4.ip_local_port_range"] = f"{PORTS[0]} {PORTS[1]}"
    return values


def _ip(*args: str) -> None:
    run(["ip", *args])


def _addrs(netns: str, dev: str, cidrs: list[str]) -> None:
    for cidr in cidrs:
        _ip("-n", netns, "addr", "add", cidr, "dev", dev)
    _ip("-n", netns, "link", "set", dev, "up")


class FaultLab(OwnLab):
    """The fault lab: :meth:`start` builds it, :meth:`stop` removes everything it made.

    After start: ``boxes`` (LabBox, in :data:`FAULTS` order), ``faults`` (box name ->
    Fault), ``ssh_config``, ``known_hosts``, ``key_file``, ``endpoint_url`` (its moto
    server), ``instances`` (name -> instance id), ``nat_gateway_id``, all under ``dir``.
    """

    def __init__(self, lifetime: int = DEFAULT_LIFETIME, aws: bool = True) -> None:
        self.lifetime = lifetime
        self.with_aws = aws
        self.dir = Path()
        self.boxes = [fault_box(i) for i in range(1, len(FAULTS) + 1)]
        self.faults = {box.name: fault for box, fault in zip(self.boxes, FAULTS)}
        self.ssh_config = self.known_hosts = self.key_file = Path()
        self.endpoint_url = ""
        self.moto_pid = 0
        self.instances: dict[str, str] = {}
        self.nat_gateway_id = ""
        self.filled = 0

    def box_of(self, fault: str) -> LabBox:
        return next(b for b in self.boxes if self.faults[b.name].name == fault)

    def env(self) -> dict[str, str]:
        """What points natfleet at this lab (SSH config, known hosts, its moto server)."""
        env = {
            "NATFLEET_SSH_CONFIG": str(self.ssh_config),
            "NATFLEET_KNOWN_HOSTS": str(self.known_hosts),
        }
        if self.endpoint_url:
            env.update(MOTO_CREDENTIALS)
            env.update(AWS_ENDPOINT_URL=self.endpoint_url, AWS_DEFAULT_REGION=REGION)
        return env

    def _begin(self) -> None:
        OWNER.claim(remove_leftovers)
        self.dir = Path(tempfile.mkdtemp(prefix=f"{PREFIX}-"))
        OWNER.record(self.dir)

    def _build(self) -> None:
        self.dir.chmod(0o700)
        (self.dir / sshd.SSH_DIR).mkdir(mode=0o700)
        (self.dir / "traffic").mkdir()
        self._network()
        self._traffic()
        self._sshd()
        if self.with_aws:
            self._aws()

    def _network(self) -> None:
        _ip("link", "add", BRIDGE, "type", "bridge")
        _ip("addr", "add", f"{GATEWAY}/24", "dev", BRIDGE)
        _ip("link", "set", BRIDGE, "up")
        for name in (INET_NS, SRV_NS):
            topology.new_netns(name)
        _ip("-n", INET_NS, "link", "add", "br0", "type", "bridge")
        _addrs(INET_NS, "br0", [f"{INET_IP}/26"])
        _ip("-n", INET_NS, "link", "add", "s0", "type", "veth", "peer", "name", "eth0",
            "netns", SRV_NS)  # fmt: skip
        _ip("-n", INET_NS, "link", "set", "s0", "master", "br0", "up")
        _addrs(SRV_NS, "eth0", [f"{SERVER_IP}/26"])
        _ip("-n", SRV_NS, "route", "add", "default", "via", INET_IP)
        _ip("-n", INET_NS, "route", "add", "blackhole", f"{SINK_IP}/32")
        sysctl_in(INET_NS, {"net.ipv4.ip_forward": 1})
        for i, box in enumerate(self.boxes, 1):
            self._box(i, box, self.faults[box.name].name)

    def _box(self, i: int, box: LabBox, fault: str) -> None:
        ns, inside = box.netns, box.inside_netns
        topology.new_netns(ns)
        topology.new_netns(inside)
        root_veth = f"{PREFIX}-m{i}"
        _ip("link", "add", root_veth, "type", "veth", "peer", "name", "mgmt0", "netns", ns)
        _ip("link", "set", root_veth, "master", BRIDGE, "up")
        _addrs(ns, "mgmt0", [f"{box.mgmt_ip}/24"])
        _ip("-n", ns, "link", "add", "wan0", "type", "veth", "peer", "name", f"b{i}",
            "netns", INET_NS)  # fmt: skip
        _ip("-n", INET_NS, "link", "set", f"b{i}", "master", "br0", "up")
        _addrs(ns, "wan0", [f"{box.public_ip}/26"])
        _ip("-n", ns, "route", "add", "default", "via", INET_IP)
        _ip("-n", ns, "route", "add", LAB_CIDR, "via", INET_IP)  # over the unreachable /15
        _ip("-n", ns, "link", "add", "lan0", "type", "veth", "peer", "name", "eth0",
            "netns", inside)  # fmt: skip
        _addrs(ns, "lan0", [f"{box.inside_ip}/28"])
        _addrs(inside, "eth0", [f"{box.inside_host_ip}/28"])
        _ip("-n", inside, "route", "add", "default", "via", box.inside_ip)
        _ip("-n", inside, "route", "add", LAB_CIDR, "via", box.inside_ip)
        run(netns_argv(ns, ["iptables-restore"]), input=nat_rules(box, fault))
        sysctl_in(ns, box_sysctls(fault, self.lifetime))

    def _generator(self, netns: str, name: str, plan: dict[str, Any], wait: bool) -> str:
        plan = {"lifetime": self.lifetime, **plan}
        path = self.dir / "traffic" / f"{name}.json"
        if not wait:
            plan["ready"] = str(self.dir / "traffic" / f"{name}.ready")
        path.write_text(json.dumps(plan))
        argv = [sys.executable, str(GENERATOR), str(path)]
        if wait:
            return run(netns_argv(netns, argv), timeout=90)
        spawn(netns, argv, self.dir / "traffic" / f"{name}.log", self.dir, self.lifetime)
        ready = Path(plan["ready"])
        if not _wait(lambda: ready.exists(), 15):
            raise LabError(f"fault lab traffic in {netns} did not start: see {path.parent}")
        return ""

    def _traffic(self) -> None:
        """Servers; the healthy boxes' flows; 30 flows to one destination through the ports
        box; then the table fill (counted, bounded in time)."""
        listen = {"listen_tcp": [[SERVER_IP, TCP_PORT]], "listen_udp": [[SERVER_IP, UDP_PORT, 1]]}
        self._generator(SRV_NS, "srv", listen, wait=False)
        for box in self.boxes:
            fault = self.faults[box.name].name
            plan: dict[str, Any] = {}
            if fault in ("healthy", "source-dest-check"):
                plan = {
                    "tcp_hold": [[box.inside_host_ip, SERVER_IP, TCP_PORT, 2]],
                    "udp": [[box.inside_host_ip, SERVER_IP, UDP_PORT, 2]],
                }
            elif fault == "ports":
                plan = {"udp": [[box.inside_host_ip, SERVER_IP, UDP_PORT, PORT_FLOWS]]}
            if plan:
                self._generator(box.inside_netns, box.name, plan, wait=False)
        self.filled = self._fill(self.box_of("fill"))

    def _fill(self, box: LabBox) -> int:
        def read(name: str) -> int:
            return int(run(netns_argv(box.netns, ["sysctl", "-n", name])).strip())

        table_max = read("net.netfilter.nf_conntrack_max")
        flows = int(table_max * FILL_TARGET) - read("net.netfilter.nf_conntrack_count")
        spec = {
            "src": box.inside_host_ip,
            "dst": SINK_IP,
            "flows": flows,
            "ports": 1000,
            "first_port": 10000,
            "seconds_max": 60,
        }
        out = self._generator(box.inside_netns, "fill", {"lifetime": 70, "fill": spec}, True)
        return int(out.strip() or 0)

    def _sshd(self) -> None:
        ssh_dir = self.dir / sshd.SSH_DIR
        self.key_file = ssh_dir / "id_ed25519"
        authorized = ssh_dir / "authorized_keys"
        authorized.write_text(sshd.keygen(self.key_file, "natfleet fault lab client") + "\n")
        sshd.PRIVSEP_DIR.mkdir(mode=0o755, exist_ok=True)
        lines = []
        for box in self.boxes:
            _pid, public = sshd.start_sshd(box, self.dir, authorized, self.lifetime)
            lines.append(sshd.known_hosts_line(box, public))
        self.known_hosts = self.dir / "known_hosts"
        self.known_hosts.write_text("\n".join(lines) + "\n")
        self.ssh_config = self.dir / "ssh_config"
        self.ssh_config.write_text(sshd.ssh_config(self.boxes, self.key_file, self.known_hosts))
        sshd.wait_for_ssh(self.boxes)

    def _aws(self) -> None:
        from natfleet.lab import aws as lab_aws

        missing = lab_aws.moto_missing()
        if missing:
            raise LabError(missing)
        self.moto_pid, self.endpoint_url = lab_aws.start_server(
            self.lifetime, self.dir / "moto.log"
        )
        self.instances, self.nat_gateway_id = seed_aws(self.endpoint_url, self.boxes, self.faults)

    def stop(self) -> None:
        """Stop every process, remove every namespace, link and file this lab made."""
        if self.moto_pid:
            from natfleet.lab import aws as lab_aws

            lab_aws.stop_pid(self.moto_pid)
            self.moto_pid = 0
        if self.dir.parts and (self.dir / "pids").is_dir():
            stop_pids(recorded_pids(self.dir), must_contain=str(self.dir))
        remove_network()
        if self.dir.parts and self.dir.name.startswith(f"{PREFIX}-"):
            shutil.rmtree(self.dir, ignore_errors=True)
        OWNER.release()


def _wait(done: Any, seconds: float) -> bool:
    from natfleet.lab.system import wait_until

    return not wait_until([None], lambda _none: done(), seconds)


def remove_network() -> None:
    """Every ``nffault*`` namespace (its processes killed first), root veth, the bridge,
    and their ``/etc/netns`` files."""
    veths = [f"{PREFIX}-m{i}" for i in range(1, len(FAULTS) + 1)]
    topology.remove_bridged(PREFIX, BRIDGE, netns_list(PREFIX), veths)


# --- AWS (moto) -----------------------------------------------------------------------------


def seed_aws(
    endpoint_url: Optional[str], boxes: list[LabBox], faults: dict[str, Fault]
) -> tuple[dict[str, str], str]:
    """The fault lab's EC2 and CloudWatch in moto at ``endpoint_url`` (None: in-process
    ``mock_aws``; see the module docstring); returns (instance ids by name, the NAT
    gateway's id)."""
    from natfleet import aws
    from natfleet.lab import aws as lab_aws

    session = aws.make_session(region=REGION)
    ec2 = session.client("ec2", endpoint_url=endpoint_url, **_keys())
    cw = session.client("cloudwatch", endpoint_url=endpoint_url, **_keys())

    def call(operation: str, **kw: Any) -> dict[str, Any]:
        return aws.call(ec2, operation, **kw)

    vpc = call("create_vpc", CidrBlock=VPC_CIDR)["Vpc"]["VpcId"]
    mgmt = lab_aws._subnet(call, vpc, MGMT_CIDR, "nffault-mgmt")
    ids: dict[str, str] = {}
    named = [(b.name, b.mgmt_ip) for b in boxes] + [
        ("nffault-stopped", STOPPED_IP),
        ("nffault-gone", GONE_IP),
    ]
    for n, (name, ip) in enumerate(named):
        inst = lab_aws._instance(call, mgmt, ip, {"Name": name, "Role": "nat"})
        ids[name] = inst["InstanceId"]
        fault = faults.get(name)
        if fault is None or fault.name != "source-dest-check":
            off = {"Value": False}
            eni = inst["NetworkInterfaces"][0]["NetworkInterfaceId"]
            call("modify_instance_attribute", InstanceId=ids[name], SourceDestCheck=off)
            call("modify_network_interface_attribute", NetworkInterfaceId=eni, SourceDestCheck=off)
        private = lab_aws._subnet(call, vpc, f"198.19.252.{64 + 8 * n}/29", f"nffault-rt-{n}")
        lab_aws._route_table(call, vpc, private, f"nffault-rt-{n}", InstanceId=ids[name])
    call("stop_instances", InstanceIds=[ids["nffault-stopped"]])
    call("terminate_instances", InstanceIds=[ids["nffault-gone"]])
    public = lab_aws._subnet(call, vpc, "198.19.252.192/27", "nffault-public")
    eip = call("allocate_address", Domain="vpc", Address=GATEWAY_EIP)
    gateway = call(
        "create_nat_gateway",
        SubnetId=public,
        AllocationId=eip["AllocationId"],
        TagSpecifications=[
            {"ResourceType": "natgateway", "Tags": lab_aws._tags({"Name": "nffault-natgw"})}
        ],
    )["NatGateway"]["NatGatewayId"]
    _gateway_metrics(cw, gateway)
    return ids, gateway


def _keys() -> dict[str, str]:
    return {
        "aws_access_key_id": MOTO_CREDENTIALS["AWS_ACCESS_KEY_ID"],
        "aws_secret_access_key": MOTO_CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
    }


def _gateway_metrics(cw: Any, gateway: str, points: int = 60) -> None:
    """An hour of the shared lab's gateway series, with port errors every minute."""
    from natfleet import aws
    from natfleet.lab import aws as lab_aws

    series = lab_aws.gateway_series(points)
    series["ErrorPortAllocation"] = [float(PORT_ERRORS_PER_MINUTE)] * points
    now = dt.datetime.now(dt.timezone.utc).replace(second=0, microsecond=0)
    at = [now - dt.timedelta(minutes=points - 1 - i) for i in range(points)]
    dim = [{"Name": "NatGatewayId", "Value": gateway}]
    data = [p for m, v in series.items() for p in lab_aws._points(m, dim, at, v)]
    for i in range(0, len(data), 500):
        aws.call(cw, "put_metric_data", Namespace="AWS/NATGateway", MetricData=data[i : i + 500])


def remove_leftovers() -> None:
    """Remove what a fault lab that died without stop() left (its processes, namespaces,
    links, files).

    Example: ``python3 -m natfleet.lab.faults down``
    """
    old = Path(str(OWNER.read().get("dir") or ""))
    if old.name.startswith(f"{PREFIX}-") and (old / "pids").is_dir():
        stop_pids(recorded_pids(old), must_contain=str(old))
    remove_network()
    if old.name.startswith(f"{PREFIX}-") and old.parent == Path(tempfile.gettempdir()):
        shutil.rmtree(old, ignore_errors=True)
    OWNER.path.unlink(missing_ok=True)


if __name__ == "__main__":
    if sys.argv[1:] != ["down"]:
        sys.exit("usage: python3 -m natfleet.lab.faults down   (remove a leftover fault lab)")
    remove_leftovers()
