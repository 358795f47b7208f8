"""Hostile boxes for tests: an sshd per box whose ``ForceCommand`` answers what a test scripted.

Layout (box i = 1..N), apart from the shared lab (``nflab-*``, ``198.19.255.0/24``)::

    root ns: bridge nfhost-br 198.19.254.1/24 --veth nfhost-v{i}/eth0-- nfhost{i} .(10+i)/24

Each box has no route beyond the bridge, its own ``/etc/netns/nfhost{i}/resolv.conf``
(``nameserver 127.0.0.1``, where nothing listens), its own host key, and an sshd whose
``ForceCommand`` runs one fixed responder, whatever command the client asked for: it reads
the box's scenario (``<dir>/nfhost{i}/scenario.json``, rewritten by :meth:`HostileLab.script`
between cases, so sshd is started once), writes the scripted stderr and stdout, and exits with
the scripted status, reading and discarding stdin in the background (a :func:`by_mode`
scenario reads the request first and answers for its mode). Everything is bounded:
sshd lives ``lifetime`` seconds, one answer at most :data:`ANSWER_LIFETIME` seconds.

Example (as root)::

    with HostileLab(boxes=1) as lab:
        box = lab.boxes[0]
        lab.script(box, answer(part_text('{"agent":2,"ok":false}\\n'), status=1))
        subprocess.run(["ssh", "-F", str(lab.ssh_config), box.name, "anything"])
        lab.script(box, answer(part_endless("y\\n", seconds=60)))   # `timeout 60 yes`
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from natfleet.errors import LabError
from natfleet.lab import sshd, topology
from natfleet.lab.state import LabBox
from natfleet.lab.system import (
    SSHD,
    LabOwner,
    OwnLab,
    netns_list,
    recorded_pids,
    run,
    spawn,
    stop_pids,
)

PREFIX = "nfhost"  # namespaces nfhost1..N; never the shared lab's nflab-*
BRIDGE = "nfhost-br"
GATEWAY = "198.19.254.1"
NETNS_ETC = Path("/etc/netns")
OWNER = LabOwner(Path("/run/nfhost.json"), "hostile boxes are up", "natfleet.lab.hostile")
ANSWER_LIFETIME = 150  # seconds one answer may take, whatever it was scripted to do
MAX_PART_SECONDS = 120  # an endless or dripping part stops by itself after this
MAX_BOXES = 50
Scenario = dict[str, Any]
Part = dict[str, Any]

RESPONDER = r'''"""natfleet hostile box: answer the scenario in argv[1], whatever was asked."""
import json, os, select, signal, sys, threading, time

signal.alarm(LIFETIME)
CHUNK = 1 << 20


def discard_stdin():
    try:
        while os.read(0, 65536):
            pass
    except OSError:
        pass


def write_all(fd, data):
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def write_part(part):
    if "file" in part:
        with open(part["file"], "rb") as f:
            for block in iter(lambda: f.read(CHUNK), b""):
                write_all(1, block)
        return
    data = part["text"].encode("utf-8")
    if "every" in part:  # a drip: one byte per `every` seconds, for at most `seconds`
        end = time.monotonic() + part["seconds"]
        i = 0
        while time.monotonic() < end:
            write_all(1, data[i % len(data):][:1])
            i += 1
            time.sleep(part["every"])
    elif "seconds" in part:  # endless: as fast as the reader takes it, for at most `seconds`
        block = data * max(1, CHUNK // len(data))
        end = time.monotonic() + part["seconds"]
        while time.monotonic() < end:
            write_all(1, block)
    else:
        times = part.get("times", 1)
        per = max(1, CHUNK // max(1, len(data)))
        block = data * per
        for _ in range(times // per):
            write_all(1, block)
        write_all(1, data * (times % per))


def request_mode(seconds=3.0):
    """The request's mode from stdin (length line, agent source, request), read to EOF."""
    data, end = b"", time.monotonic() + seconds
    while time.monotonic() < end and len(data) < (16 << 20):
        ready, _, _ = select.select([0], [], [], max(0.0, end - time.monotonic()))
        chunk = os.read(0, 65536) if ready else b""
        if not chunk:
            break
        data += chunk
    head, _, rest = data.partition(b"\n")
    try:
        return json.loads(rest[int(head):].decode()).get("mode") or "list"
    except (ValueError, AttributeError):
        return "summary" if b'"mode": "summary"' in data[-4096:] else "list"


def main():
    with open(sys.argv[1]) as f:
        spec = json.load(f)
    if "by_mode" in spec:  # read the request first, answer for its mode
        modes = spec["by_mode"]
        spec = modes.get(request_mode()) or modes[sorted(modes)[0]]
    reader = threading.Thread(target=discard_stdin, daemon=True)
    reader.start()
    try:
        write_all(2, spec.get("stderr", "").encode("utf-8"))
        for part in spec.get("stdout", []):
            write_part(part)
    except OSError:  # the client went away (EPIPE): nothing more to say
        os._exit(0)
    reader.join(1.0)
    os._exit(int(spec.get("status", 0)))


main()
'''


@dataclass
class HostileBox:
    """One hostile box: ``nfhost1`` (its namespace and ssh_config alias) at 198.19.254.11."""

    name: str  # "nfhost1"
    ip: str  # "198.19.254.11"
    dir: Path  # its folder: scenario.json, host key, sshd_config, sshd.log

    @property
    def netns(self) -> str:
        return self.name

    @property
    def scenario_file(self) -> Path:
        return self.dir / "scenario.json"

    def lab_box(self) -> LabBox:
        """The box as the shared lab's sshd helpers expect it (only name and address used)."""
        return LabBox(self.name, self.name, self.ip, "", "", "", "")


def part_text(text: str, times: int = 1) -> Part:
    """``text`` (UTF-8) written ``times`` times: ``part_text("a", 600 << 20)`` is 600 MiB."""
    return {"text": text, "times": times}


def part_file(path: Path | str) -> Part:
    """The bytes of a file, as they are (e.g. ``tests/data/hostile/ok_false_message.jsonl``)."""
    return {"file": str(Path(path).resolve())}


def part_endless(text: str, seconds: float = 60) -> Part:
    """``text`` repeated as fast as the client reads, for at most ``seconds`` (``yes``)."""
    if not 0 < seconds <= MAX_PART_SECONDS or not text:
        raise LabError(f"an endless part needs text and 0 < seconds <= {MAX_PART_SECONDS}")
    return {"text": text, "seconds": seconds}


def part_drip(text: str, every: float = 1.0, seconds: float = 120) -> Part:
    """``text`` one byte per ``every`` seconds (from its start again when done), for at most
    ``seconds``: ``part_drip('{"agent":2}')`` sends ``{`` now, ``"`` a second later, ..."""
    if not 0 < seconds <= MAX_PART_SECONDS or not text or every <= 0:
        raise LabError(f"a drip needs text, every > 0 and 0 < seconds <= {MAX_PART_SECONDS}")
    return {"text": text, "every": every, "seconds": seconds}


def answer(*parts: Part, stderr: str = "", status: int = 0) -> Scenario:
    """What a box answers: ``stderr`` first, then the ``parts`` on stdout, then ``status``.

    Example: ``answer(part_file("tests/data/hostile/valid.list.jsonl"))``
    """
    return {"stdout": list(parts), "stderr": stderr, "status": status}


def by_mode(**scenarios: Scenario) -> Scenario:
    """Answers chosen by the request's mode (the box reads stdin to EOF first, at most 3 s).

    Example: ``by_mode(list=from_file("a.list.jsonl"), summary=from_file("a.summary.jsonl"))``
    """
    return {"by_mode": scenarios}


def from_file(path: Path | str, stderr: str = "", status: int = 0) -> Scenario:
    """A box answering the bytes of ``path`` on stdout."""
    return answer(part_file(path), stderr=stderr, status=status)


NO_SCENARIO = answer(
    part_text('{"agent":2,"ok":false,"error":{"kind":"agent","message":"no scenario"}}\n'),
    status=1,
)


def sshd_config_for(box: HostileBox, host_key: Path, authorized_keys: Path, responder: Path) -> str:
    """The shared lab's sshd_config, plus the ForceCommand that answers the box's scenario."""
    command = (
        f"timeout -k 2 {ANSWER_LIFETIME} {sys.executable} -I -S {responder} {box.scenario_file}"
    )
    return (
        sshd.sshd_config(box.lab_box(), host_key, authorized_keys)
        + f"ForceCommand {command}\n"
        + "PermitTTY no\nAllowTcpForwarding no\nAllowAgentForwarding no\n"
    )


class HostileLab(OwnLab):
    """``boxes`` hostile boxes; :meth:`start` builds them, :meth:`stop` removes everything.

    After start: ``boxes``, ``ssh_config`` (``Host nfhost1 198.19.254.11`` blocks),
    ``known_hosts`` and ``key_file`` (the client key the boxes accept), all in ``dir``.
    """

    def __init__(self, boxes: int = 1, lifetime: int = 1800) -> None:
        if not 1 <= boxes <= MAX_BOXES:
            raise LabError(f"hostile boxes: between 1 and {MAX_BOXES}, not {boxes}")
        self.count = boxes
        self.lifetime = lifetime
        self.dir = Path()
        self.boxes: list[HostileBox] = []
        self.ssh_config = Path()
        self.known_hosts = Path()
        self.key_file = Path()

    def _begin(self) -> None:
        OWNER.claim(remove_leftovers)
        self.dir = Path(tempfile.mkdtemp(prefix="nfhost-"))
        OWNER.record(self.dir)

    def _build(self) -> None:
        """The bridge, the namespaces and one sshd per box."""
        self.dir.chmod(0o700)
        self.boxes = [
            HostileBox(f"{PREFIX}{i}", f"198.19.254.{10 + i}", self.dir / f"{PREFIX}{i}")
            for i in range(1, self.count + 1)
        ]
        _bridge()
        for i, box in enumerate(self.boxes, 1):
            _netns(box, f"{PREFIX}-v{i}")
        self.key_file = self.dir / "id_ed25519"
        authorized = self.dir / "authorized_keys"
        authorized.write_text(sshd.keygen(self.key_file, "natfleet hostile client") + "\n")
        responder = self.dir / "answer.py"
        responder.write_text(RESPONDER.replace("LIFETIME", str(ANSWER_LIFETIME), 1))
        sshd.PRIVSEP_DIR.mkdir(mode=0o755, exist_ok=True)
        lines = [self._start_sshd(box, authorized, responder) for box in self.boxes]
        self.known_hosts = self.dir / "known_hosts"
        self.known_hosts.write_text("\n".join(lines) + "\n")
        self.ssh_config = self.dir / "ssh_config"
        labboxes = [box.lab_box() for box in self.boxes]
        self.ssh_config.write_text(sshd.ssh_config(labboxes, self.key_file, self.known_hosts))
        sshd.wait_for_ssh(labboxes)

    def _start_sshd(self, box: HostileBox, authorized: Path, responder: Path) -> str:
        """Write the box's folder, host key and config; start its sshd; its known_hosts line."""
        box.dir.mkdir()
        self.script(box, NO_SCENARIO)
        host_key = box.dir / "host_ed25519_key"
        public = sshd.keygen(host_key, f"{box.name} host key")
        config = box.dir / "sshd_config"
        config.write_text(sshd_config_for(box, host_key, authorized, responder))
        argv = [SSHD, "-D", "-e", "-f", str(config)]
        spawn(box.netns, argv, box.dir / "sshd.log", self.dir, self.lifetime)
        return sshd.known_hosts_line(box.lab_box(), public)

    def script(self, box: HostileBox, scenario: Scenario) -> None:
        """What ``box`` answers from its next session on (written atomically)."""
        tmp = box.scenario_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(scenario))
        tmp.replace(box.scenario_file)

    def stop(self) -> None:
        """Stop every process, remove every namespace, link and file this lab made."""
        if self.dir.parts and (self.dir / "pids").is_dir():
            stop_pids(recorded_pids(self.dir), must_contain=SSHD)
        _remove([f"{PREFIX}{i}" for i in range(1, self.count + 1)])
        if self.dir.parts and self.dir.name.startswith(f"{PREFIX}-"):
            shutil.rmtree(self.dir, ignore_errors=True)
        OWNER.release()


def _ip(*args: str) -> None:
    run(["ip", *args])


def _bridge() -> None:
    _ip("link", "add", BRIDGE, "type", "bridge")
    _ip("addr", "add", f"{GATEWAY}/24", "dev", BRIDGE)
    _ip("link", "set", BRIDGE, "up")


def _netns(box: HostileBox, root_veth: str) -> None:
    """The box's namespace, its own resolv.conf and its link to the bridge (no other route)."""
    etc = NETNS_ETC / box.netns
    etc.mkdir(parents=True, exist_ok=True)
    (etc / "resolv.conf").write_text("nameserver 127.0.0.1\n")  # nothing listens there
    _ip("netns", "add", box.netns)
    _ip("-n", box.netns, "link", "set", "lo", "up")
    _ip("link", "add", root_veth, "type", "veth", "peer", "name", "eth0", "netns", box.netns)
    _ip("link", "set", root_veth, "master", BRIDGE, "up")
    _ip("-n", box.netns, "addr", "add", f"{box.ip}/24", "dev", "eth0")
    _ip("-n", box.netns, "link", "set", "eth0", "up")


def _remove(names: list[str]) -> None:
    """Kill what runs in these namespaces; delete them, their links, /etc/netns files, bridge."""
    veths = [f"{PREFIX}-v{name[len(PREFIX) :]}" for name in names]
    topology.remove_bridged(PREFIX, BRIDGE, names, veths)


def remove_leftovers() -> None:
    """Remove what a hostile lab that died without stop() left: namespaces, bridge, files.

    Example: ``python3 -m natfleet.lab.hostile down``
    """
    old = Path(str(OWNER.read().get("dir") or ""))
    if old.name.startswith(f"{PREFIX}-") and (old / "pids").is_dir():
        stop_pids(recorded_pids(old), must_contain=SSHD)
    names = netns_list(PREFIX) + [p.name for p in NETNS_ETC.glob(f"{PREFIX}*")]
    _remove(sorted({name for name in names if name[len(PREFIX) :].isdigit()}))
    if old.name.startswith(f"{PREFIX}-") and old.parent == Path(tempfile.gettempdir()):
        shutil.rmtree(old, ignore_errors=True)
    OWNER.path.unlink(missing_ok=True)


if __name__ == "__main__":
    if sys.argv[1:] != ["down"]:
        sys.exit("usage: python3 -m natfleet.lab.hostile down   (remove leftover hostile boxes)")
    remove_leftovers()
