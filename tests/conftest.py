"""Test guards shared by every test.

- Nothing reaches real AWS, the real ``~/.ssh`` or the network beyond the lab: an autouse
  fixture clears AWS credentials and endpoint variables and points HOME at a temp folder.
- Lab tests call :func:`need_lab`; it skips with the reason, or fails when
  ``NATFLEET_REQUIRE_LAB=1`` (set by ``.ci/run``) so CI always exercises them.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

DATA = Path(__file__).parent / "data"

_AWS_VARS = (
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_SECURITY_TOKEN",
    "AWS_PROFILE",
    "AWS_DEFAULT_PROFILE",
    "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_EC2",
    "AWS_ENDPOINT_URL_CLOUDWATCH",
    "AWS_CONFIG_FILE",
    "AWS_SHARED_CREDENTIALS_FILE",
    "AWS_ROLE_ARN",
    "AWS_WEB_IDENTITY_TOKEN_FILE",
    "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
    "AWS_CONTAINER_CREDENTIALS_FULL_URI",
    "NATFLEET_CONFIG",
)


@pytest.fixture(autouse=True)
def isolated_env(monkeypatch, tmp_path_factory):
    """No real credentials, endpoint, config or ~/.ssh can leak into a test."""
    for var in _AWS_VARS:
        monkeypatch.delenv(var, raising=False)
    home = tmp_path_factory.mktemp("home")
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(home / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(home / "no-aws-credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("NO_COLOR", "1")
    yield


@pytest.fixture
def session(monkeypatch):
    """A boto3 session inside in-process moto (us-east-1, fake keys): never real AWS."""
    from moto import mock_aws

    from natfleet import aws

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    with mock_aws():
        yield aws.make_session(region="us-east-1")


def lab_missing() -> str:
    """Why the lab cannot run here, or '' when it can."""
    if os.geteuid() != 0:
        return "lab tests need root (network namespaces, iptables)"
    for tool in ("ip", "iptables", "conntrack", "netstat-nat", "sshd"):
        if not (shutil.which(tool) or os.path.exists(f"/usr/sbin/{tool}")):
            return (
                f"lab tests need '{tool}' "
                "(sudo ./dev setup, or apt-get install iptables conntrack netstat-nat "
                "openssh-server iproute2)"
            )
    return ""


def need_lab() -> None:
    """Skip (or, with NATFLEET_REQUIRE_LAB=1, fail) when the lab cannot run."""
    reason = lab_missing()
    if reason:
        if os.environ.get("NATFLEET_REQUIRE_LAB") == "1":
            pytest.fail(f"NATFLEET_REQUIRE_LAB=1 but {reason}")
        pytest.skip(reason)


def pytest_collection_modifyitems(config, items):
    """Tests marked ``lab`` check for the lab before they run."""
    for item in items:
        if item.get_closest_marker("lab"):
            item.add_marker(pytest.mark.usefixtures("_lab_guard"))


@pytest.fixture
def _lab_guard():
    need_lab()


def pytest_sessionfinish(session, exitstatus):
    """Under NATFLEET_REQUIRE_LAB=1 (CI) any skipped test fails the run."""
    if os.environ.get("NATFLEET_REQUIRE_LAB") != "1":
        return
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    skipped = reporter.stats.get("skipped", []) if reporter else []
    if skipped:
        reporter.write_line(
            f"NATFLEET_REQUIRE_LAB=1: {len(skipped)} test(s) skipped, which CI counts as failure",
            red=True,
        )
        session.exitstatus = 1


LAB_STARTED_HERE = {"value": False}  # set by the `lab` fixture when it built the lab


@pytest.fixture(scope="session")
def lab():
    """The running lab (3 boxes, natfleet.lab.LabState), brought up once per session.

    Torn down at the end only when this fixture brought it up (then
    ``LAB_STARTED_HERE["value"]`` is True); a lab someone started by hand
    (``sudo natfleet lab up``) or another session is used as it is and left running.
    """
    need_lab()
    import natfleet.lab
    from natfleet.errors import LabError

    try:
        before = natfleet.lab.load_state()
        was_up = len(before.boxes) == 3 and natfleet.lab.is_running(before)
    except LabError:
        was_up = False
    state = natfleet.lab.up(boxes=3, log=lambda _message: None)
    LAB_STARTED_HERE["value"] = not was_up
    yield state
    if not was_up:
        natfleet.lab.down(log=lambda _message: None)
