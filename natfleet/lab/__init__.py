"""The local lab: real Linux NAT boxes in network namespaces, with sshd, traffic and AWS.

``up`` builds N boxes (see :mod:`natfleet.lab.topology` for the addresses and the resolver
that keeps every lookup inside the lab), makes the lab's login user with its sudo rule
(:mod:`natfleet.lab.login`: the boxes are logged into as a NAT instance is), starts one sshd
per box on its management address and the traffic generators, then seeds a moto server
(:mod:`natfleet.lab.aws`; it needs the ``lab`` extra: ``pip install 'natfleet[lab]'``).
``down`` removes every namespace, process and file, ``/etc/netns/nflab-*``, the lab user and
its sudoers file included.

Example:
    >>> state = up(boxes=3)          # as root: about 2 s, 5 s with the moto AWS API
    >>> state.boxes[0].mgmt_ip
    '198.19.255.11'
    >>> subprocess.run(["ssh", "-F", state.ssh_config, "nflab-box1", "conntrack", "-C"])
    >>> down()
"""

from __future__ import annotations

import importlib
import shutil
import sys
import time
from pathlib import Path
from typing import Callable, Optional

from natfleet.errors import LabError
from natfleet.lab import login, sshd, topology, traffic
from natfleet.lab.bench import fill_udp
from natfleet.lab.state import (
    DEFAULT_STATE_DIR,
    LabBox,
    LabState,
    load_state,
    save_state,
    state_dir_path,
)
from natfleet.lab.system import (
    check_can_run,
    kill_netns_processes,
    netns_argv,
    netns_list,
    recorded_pids,
    run,
    spawn,
    stop_pids,
)

__all__ = [
    "DEFAULT_LIFETIME",
    "DEFAULT_STATE_DIR",
    "LabBox",
    "LabState",
    "box_status",
    "down",
    "fill_udp",
    "is_running",
    "load_state",
    "netns_argv",
    "save_state",
    "up",
]

Log = Callable[[str], None]
DEFAULT_LIFETIME = 7200  # seconds: every lab process stops by itself after this
MIN_LIFETIME, MAX_LIFETIME = 30, 7 * 86400
MAX_BOXES = 200  # 198.19.255.(10+i) must stay a host address


def _boxes(n: int) -> str:
    """``1 box``, ``3 boxes``."""
    return f"{n} box" if n == 1 else f"{n} boxes"


def is_running(state: LabState) -> bool:
    """True when every namespace of ``state`` exists and every box's sshd answers."""
    expected = {box.netns for box in state.boxes} | {box.inside_netns for box in state.boxes}
    if not expected <= set(netns_list(topology.PREFIX)):
        return False
    return all(sshd.ssh_answers(box.mgmt_ip, box.ssh_port) for box in state.boxes)


def box_status(state: LabState) -> list[dict[str, object]]:
    """Per box: namespace present, sshd answering, conntrack entries in its table.

    Example: ``[{"name": "nflab-box1", "mgmt_ip": "198.19.255.11", "netns": True,
    "sshd": True, "conntrack": 21, "instance_id": None}, ...]``
    """
    present = set(netns_list(topology.PREFIX))
    rows: list[dict[str, object]] = []
    for box in state.boxes:
        count = None
        if box.netns in present:
            argv = netns_argv(box.netns, ["cat", "/proc/sys/net/netfilter/nf_conntrack_count"])
            count = int(run(argv).strip())
        rows.append(
            {
                "name": box.name,
                "mgmt_ip": box.mgmt_ip,
                "netns": box.netns in present,
                "sshd": sshd.ssh_answers(box.mgmt_ip, box.ssh_port),
                "conntrack": count,
                "instance_id": box.instance_id,
            }
        )
    return rows


def up(
    boxes: int = 3,
    state_dir: Optional[str] = None,
    aws: bool = True,
    log: Log = print,
    lifetime: int = DEFAULT_LIFETIME,
) -> LabState:
    """Build the lab with ``boxes`` NAT boxes (or return it if already up with as many).

    Every lab process stops by itself after ``lifetime`` seconds. On failure the partial lab
    is removed and LabError says what went wrong.
    """
    check_can_run("up")
    if not 1 <= boxes <= MAX_BOXES:
        raise LabError(f"--boxes must be between 1 and {MAX_BOXES}, not {boxes}")
    if not MIN_LIFETIME <= lifetime <= MAX_LIFETIME:
        raise LabError(
            f"--lifetime must be between {MIN_LIFETIME} and {MAX_LIFETIME} s, not {lifetime}"
        )
    folder = state_dir_path(state_dir)
    try:
        current = load_state(str(folder))
    except LabError:
        current = None
    if current and len(current.boxes) == boxes and is_running(current):
        log(f"lab already up: {_boxes(boxes)}, state in {folder}")
        if aws and not current.aws:
            _seed_aws(current, log)
            save_state(current)
        return current
    if aws:
        _check_aws_extra()  # before anything is removed or built
    login.check_free()
    if current or netns_list(topology.PREFIX) or topology.mgmt_bridge_exists():
        log("removing the previous lab first")
        down(str(folder), log=log)
    started = time.monotonic()
    try:
        state = _build(boxes, folder, lifetime, log)
        if aws:
            _seed_aws(state, log)
    except BaseException:
        down(str(folder), log=lambda _msg: None)
        raise
    state.started = time.time()
    save_state(state)
    log(f"lab up in {time.monotonic() - started:.1f} s: {_boxes(boxes)}, state in {folder}")
    return state


MARKER = ".natfleet-lab"  # in every state folder the lab made: down removes no other


def _build(count: int, folder: Path, lifetime: int, log: Log) -> LabState:
    folder.mkdir(mode=0o711, parents=True, exist_ok=True)
    folder.chmod(0o711)  # others may pass (the lab user's home is in it), not list
    (folder / MARKER).touch()
    ssh_dir = folder / sshd.SSH_DIR
    ssh_dir.mkdir(mode=0o700, exist_ok=True)
    boxes = [topology.make_box(i) for i in range(1, count + 1)]
    state = LabState(
        state_dir=str(folder),
        boxes=boxes,
        ssh_config=str(folder / "ssh_config"),
        known_hosts=str(folder / "known_hosts"),
        key_file=str(ssh_dir / "id_ed25519"),
        lifetime=lifetime,
        user=login.USER,
    )
    save_state(state)  # so that down() finds a half-built lab
    log(f"namespaces: {topology.INET_NS}, {topology.SRV_NS}, bridge {topology.MGMT_BRIDGE}")
    topology.build_shared()
    for box in boxes:
        topology.build_box(box, lifetime)
        log(f"{box.name}: mgmt {box.mgmt_ip}, public {box.public_ip}, inside {box.inside_ip}")
    # sshd's privilege-separation folder (tmpfs); left in place by down: other sshds need it.
    sshd.PRIVSEP_DIR.mkdir(mode=0o755, exist_ok=True)
    client_public = sshd.keygen(Path(state.key_file), "natfleet lab client")
    authorized = ssh_dir / "authorized_keys"  # root's
    authorized.write_text(client_public + "\n")
    user = login.create(folder, client_public)
    log(f"login user {user} (shell {login.SHELL}), sudo rule {login.SUDOERS}")
    host_lines = []
    for box in boxes:
        pair = (user, login.authorized_keys_of(folder))
        _pid, host_public = sshd.start_sshd(box, folder, authorized, lifetime, pair)
        host_lines.append(sshd.known_hosts_line(box, host_public))
    Path(state.known_hosts).write_text("\n".join(host_lines) + "\n")
    Path(state.ssh_config).write_text(
        sshd.ssh_config(boxes, Path(state.key_file), Path(state.known_hosts), user)
    )
    traffic.start_traffic(boxes, folder, lifetime)
    sshd.wait_for_ssh(boxes)
    sshd.hold_sessions(boxes, folder, Path(state.ssh_config), lifetime)
    log(f"sshd on {', '.join(f'{box.mgmt_ip}:{box.ssh_port}' for box in boxes)}")
    return state


def _check_aws_extra() -> None:
    """LabError naming ``pip install 'natfleet[lab]'`` when the moto server cannot run."""
    missing = importlib.import_module("natfleet.lab.aws").moto_missing()  # (boto3: imported late)
    if missing:
        raise LabError(missing)


def _seed_aws(state: LabState, log: Log) -> None:
    aws = importlib.import_module("natfleet.lab.aws")
    result = aws.seed(state)
    if isinstance(result, dict):
        state.aws = result
    folder = Path(state.state_dir)
    publisher = [sys.executable, "-m", "natfleet.lab.aws", str(folder)]
    spawn(None, publisher, folder / "metrics.log", folder, state.lifetime)
    log(f"AWS API (moto): {state.aws.get('endpoint_url', 'not started')}, box metrics every minute")


def down(state_dir: Optional[str] = None, log: Log = print) -> None:
    """Remove every lab namespace, process, the mgmt bridge and the state folder; idempotent."""
    check_can_run("down")
    folder = state_dir_path(state_dir)
    try:
        state: Optional[LabState] = load_state(str(folder))
    except LabError:
        state = None
    if state and state.aws.get("pid"):  # only natfleet.lab.aws puts a moto pid there
        importlib.import_module("natfleet.lab.aws").stop(state)
    if folder.exists():
        stop_pids(recorded_pids(folder), must_contain=str(folder))
    for netns in netns_list(topology.PREFIX):
        kill_netns_processes(netns)
        run(["ip", "netns", "delete", netns])
        log(f"removed namespace {netns}")
    for etc in topology.remove_netns_etc(topology.PREFIX):
        log(f"removed {etc}")
    if topology.mgmt_bridge_exists():
        run(["ip", "link", "delete", topology.MGMT_BRIDGE])
        log(f"removed bridge {topology.MGMT_BRIDGE}")
    login.remove(folder, log)  # (its processes went with the namespaces)
    remove_state_folder(folder, log)


def remove_state_folder(folder: Path, log: Log = print) -> bool:
    """Remove the lab's state folder, but only one the lab made (it has the marker file):
    ``NATFLEET_LAB_DIR=/tmp natfleet lab down`` must not empty /tmp."""
    if (folder / MARKER).is_file():
        shutil.rmtree(folder)
        log(f"removed {folder}")
        return True
    if folder.exists():
        log(f"left {folder} alone: the lab did not make it (no {MARKER} in it)")
    return False
