"""The lab's records and ``state.json``: what ``lab up`` built, for every other part to use.

Example:
    >>> state = load_state()            # after `natfleet lab up`
    >>> state.boxes[0].mgmt_ip, state.env()["NATFLEET_SSH_CONFIG"]
    ('198.19.255.11', '/run/natfleet-lab/ssh_config')
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional

from natfleet.errors import LabError
from natfleet.lab import system

DEFAULT_STATE_DIR = "/run/natfleet-lab"
STATE_FILE = "state.json"
MOTO_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}


def state_dir_path(state_dir: Optional[str] = None) -> Path:
    """The state folder: ``state_dir``, else ``$NATFLEET_LAB_DIR``, else /run/natfleet-lab."""
    return Path(state_dir or os.environ.get("NATFLEET_LAB_DIR") or DEFAULT_STATE_DIR)


@dataclass
class LabBox:
    """One lab NAT box: its namespace and addresses (see natfleet.lab.topology)."""

    name: str  # "nflab-box1"
    netns: str  # "nflab-box1"
    mgmt_ip: str  # "198.19.255.11"
    public_ip: str  # "198.51.100.11"
    inside_ip: str  # "198.18.1.1"
    inside_netns: str  # "nflab-in1"
    inside_host_ip: str  # "198.18.1.10"
    ssh_port: int = 22
    instance_id: Optional[str] = None  # filled by the AWS seeding (natfleet.lab.aws)


@dataclass
class LabState:
    """Everything needed to use a running lab; saved as ``<state_dir>/state.json``."""

    state_dir: str
    boxes: list[LabBox]
    ssh_config: str
    known_hosts: str
    key_file: str
    aws: dict[str, Any] = field(default_factory=dict)
    lifetime: int = 7200  # seconds every lab process may live
    started: float = 0.0  # time.time() when `up` finished
    user: str = "root"  # whom ssh_config logs in as: the lab user (natfleet.lab.login)

    def env(self) -> dict[str, str]:
        """Environment variables that point natfleet at the lab.

        Example: ``{"NATFLEET_SSH_CONFIG": "/run/natfleet-lab/ssh_config",
        "NATFLEET_KNOWN_HOSTS": "/run/natfleet-lab/known_hosts",
        "NATFLEET_LAB_DIR": "/run/natfleet-lab", "AWS_ENDPOINT_URL": "http://127.0.0.1:5001",
        "AWS_DEFAULT_REGION": "us-east-1", "AWS_ACCESS_KEY_ID": "testing", ...}``
        """
        env = {
            "NATFLEET_SSH_CONFIG": self.ssh_config,
            "NATFLEET_KNOWN_HOSTS": self.known_hosts,
            "NATFLEET_LAB_DIR": self.state_dir,
        }
        if self.aws.get("endpoint_url"):
            env["AWS_ENDPOINT_URL"] = str(self.aws["endpoint_url"])
            if self.aws.get("region"):
                env["AWS_DEFAULT_REGION"] = str(self.aws["region"])
            env.update(MOTO_CREDENTIALS)
            env.update({k: str(v) for k, v in self.aws.get("env", {}).items()})
        return env


def save_state(state: LabState) -> None:
    """Write ``state.json`` (mode 0600) atomically."""
    path = Path(state.state_dir) / STATE_FILE
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(asdict(state), indent=2) + "\n")
    tmp.chmod(0o600)
    tmp.replace(path)


def not_up() -> str:
    """The message for "no lab here", with the command that starts one.

    Example: ``"the lab is not up: run 'sudo natfleet lab up'"``
    """
    return f"the lab is not up: run 'sudo {system.natfleet_command()} lab up'"


def load_state(state_dir: Optional[str] = None) -> LabState:
    """Read ``state.json``; raises LabError(:func:`not_up`) when there is none."""
    path = state_dir_path(state_dir) / STATE_FILE
    natfleet = f"sudo {system.natfleet_command()}"
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError as exc:
        raise LabError(not_up()) from exc
    except PermissionError:
        raise LabError(
            f"cannot read {path}: the lab's state is root's (run natfleet as root)"
        ) from None
    except (OSError, ValueError) as exc:
        raise LabError(f"cannot read {path}: {exc}; run '{natfleet} lab down' then up") from exc
    try:
        boxes = [LabBox(**box) for box in data.pop("boxes")]
        return LabState(boxes=boxes, **data)
    except (KeyError, TypeError) as exc:
        raise LabError(f"{path} is not a lab state ({exc}); run '{natfleet} lab down'") from exc
