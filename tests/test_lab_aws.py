"""natfleet.lab.aws against a real moto server on 127.0.0.1, without the netns lab.

The state is a real LabState in a temp folder with made-up boxes; counters are handed in, so
no namespace, root or network beyond loopback is needed. The server is always stopped.
"""

from __future__ import annotations

import datetime as dt
import os

import pytest

from natfleet import aws, cloudwatch
from natfleet.discovery import discover
from natfleet.errors import LabError
from natfleet.lab import aws as lab_aws
from natfleet.lab.state import LabState, save_state
from natfleet.lab.topology import make_box

COUNTERS = {
    "nflab-box1": {"rx_bytes": 6000, "tx_bytes": 5000, "rx_packets": 60, "tx_packets": 50},
    "nflab-box2": {"rx_bytes": 10, "tx_bytes": 0, "rx_packets": 1, "tx_packets": 0},
    "nflab-box3": {"rx_bytes": 0, "tx_bytes": 0, "rx_packets": 0, "tx_packets": 0},
}


@pytest.fixture
def lab(tmp_path, monkeypatch):
    state = LabState(
        state_dir=str(tmp_path),
        boxes=[make_box(i) for i in (1, 2, 3)],
        ssh_config=str(tmp_path / "ssh_config"),
        known_hosts=str(tmp_path / "known_hosts"),
        key_file=str(tmp_path / "key"),
        lifetime=300,
    )
    try:
        lab_aws.seed(state, read_counters=COUNTERS.get)
        for key, value in state.env().items():
            monkeypatch.setenv(key, value)
        yield state
    finally:
        pid = state.aws.get("pid")
        lab_aws.stop(state)
        if pid:  # our child: reap it, proving it ended
            assert os.waitpid(int(pid), 0)[0] == int(pid)


def test_seed_builds_the_lab_vpc(lab):
    aws_info = lab.aws
    assert aws_info["endpoint_url"].startswith("http://127.0.0.1:")
    assert aws_info["region"] == "us-east-1"
    assert os.path.exists(lab.state_dir + "/state.json")
    session = aws.make_session()
    found = {d.name or d.id: d for d in discover(session)}
    ids = [box.instance_id for box in lab.boxes]
    assert all(ids)
    for i, box in enumerate(lab.boxes, 1):
        device = found[box.name]
        assert device.id == box.instance_id
        assert device.private_ip == box.mgmt_ip
        assert device.public_ip == box.public_ip
        assert device.found_by[:2] == ["tag:Role=nat", "source-dest-check:off"]
        route = device.found_by[2]
        if i == 2:
            assert route.startswith("route:rtb-") and " 0.0.0.0/0 via eni-" in route
        else:
            assert route.startswith("route:rtb-") and route.endswith(" 0.0.0.0/0")
    gw = found["nflab-natgw"]
    assert gw.id == aws_info["nat_gateway_id"]
    assert gw.kind == "gateway" and len(gw.route_tables) == 1
    assert gw.public_ip == lab_aws.GATEWAY_EIP
    assert len(found) == 4  # the hostile-tag instance is not a NAT instance


def test_publish_metrics_from_counters(lab):
    """seed() published the counters once (over 60 minutes) and the gateway's series."""
    now = dt.datetime.now(dt.timezone.utc).replace(second=0, microsecond=0)
    counters = {name: dict(c) for name, c in COUNTERS.items()}
    session = aws.make_session()
    start, end = now - dt.timedelta(minutes=61), now + dt.timedelta(minutes=1)
    box1 = lab.boxes[0].instance_id
    series = cloudwatch.instance_metrics(session, "us-east-1", [box1], start, end, 60)
    sums = {s.metric: cloudwatch.series_sum(s) for s in series}
    assert sums["NetworkIn"] == 6000 and sums["NetworkOut"] == 5000
    assert sums["NetworkPacketsIn"] == 60 and sums["NetworkPacketsOut"] == 50

    # a second call adds only what the counters grew by
    counters["nflab-box1"] = {
        "rx_bytes": 6500,
        "tx_bytes": 5000,
        "rx_packets": 65,
        "tx_packets": 50,
    }
    put = lab_aws.publish_metrics(lab, since_minutes=10, read_counters=counters.get, now=now)
    assert put == 3 * 6 * 10  # the gateway series is published once only
    series = cloudwatch.instance_metrics(session, "us-east-1", [box1], start, end, 60)
    assert cloudwatch.series_sum(series[0]) == 6500

    gw = lab.aws["nat_gateway_id"]
    (row,) = cloudwatch.gateway_summary(
        cloudwatch.gateway_metrics(session, "us-east-1", [gw], start, end, 60), start, end
    )
    expected = lab_aws.gateway_series()
    assert row["peak_active_connections"] == max(expected["ActiveConnectionCount"])
    assert row["error_port_allocation"] == 6.0
    assert row["connection_attempts"] == sum(expected["ConnectionAttemptCount"])
    assert len(row["active_connections"]) == 60  # published once, not twice


def test_parse_counters_and_spread():
    assert lab_aws.parse_counters("eth0 1000 2000 10 20\nmgmt0 5 6 1 1\n") == {
        "rx_bytes": 1005,
        "tx_bytes": 2006,
        "rx_packets": 11,
        "tx_packets": 21,
    }
    with pytest.raises(Exception, match="line 1"):
        lab_aws.parse_counters("eth0 x 1 2 3")
    assert lab_aws.spread(100, 4) == [10, 20, 30, 40]
    assert sum(lab_aws.spread(12345, 60)) == 12345
    assert lab_aws.spread(0, 3) == [0, 0, 0]


def test_publish_loop_publishes_each_round_until_the_lab_is_gone(tmp_path, monkeypatch):
    state = LabState(
        state_dir=str(tmp_path),
        boxes=[make_box(1)],
        ssh_config="",
        known_hosts="",
        key_file="",
    )
    save_state(state)
    rounds = []

    def publish(loaded, since_minutes):
        rounds.append((loaded.boxes[0].name, since_minutes))
        if len(rounds) == 3:  # `natfleet lab down` removes the state
            (tmp_path / "state.json").unlink()

    monkeypatch.setattr(lab_aws, "publish_metrics", publish)
    monkeypatch.setattr(lab_aws.time, "sleep", lambda seconds: None)
    lab_aws.publish_loop(str(tmp_path), every=60)
    assert rounds == [("nflab-box1", 1)] * 3


# --- without the lab extra --------------------------------------------------------------


def _without(monkeypatch, missing: str) -> None:
    real = lab_aws.importlib.util.find_spec
    monkeypatch.setattr(
        lab_aws.importlib.util,
        "find_spec",
        lambda name, *args: None if name == missing else real(name, *args),
    )


@pytest.mark.parametrize("missing", ["moto", "flask", "flask_cors"])
def test_without_the_lab_extra_the_message_names_it(monkeypatch, tmp_path, missing):
    _without(monkeypatch, missing)
    message = lab_aws.moto_missing()
    assert f"Python module '{missing}' is missing: pip install 'natfleet[lab]'" in message
    assert "natfleet lab up --no-aws" in message
    spawned = []
    monkeypatch.setattr(lab_aws.subprocess, "Popen", lambda *a, **k: spawned.append(a))
    with pytest.raises(LabError) as err:
        lab_aws.start_server(60, tmp_path / "moto.log")
    assert str(err.value) == message
    assert spawned == []  # said before anything starts


def test_lab_up_without_the_lab_extra_stops_before_building(monkeypatch, tmp_path):
    import natfleet.lab

    _without(monkeypatch, "flask")
    monkeypatch.setattr(natfleet.lab, "check_can_run", lambda _action: None)

    def never(*_args, **_kwargs):
        raise AssertionError("the lab must not be touched")

    for name in ("down", "_build", "netns_list"):
        monkeypatch.setattr(natfleet.lab, name, never)
    with pytest.raises(LabError, match=r"pip install 'natfleet\[lab\]'"):
        natfleet.lab.up(boxes=1, state_dir=str(tmp_path / "lab"), log=never)
    assert not (tmp_path / "lab").exists()


def test_a_moto_server_that_exits_is_quoted_not_pointed_at(monkeypatch, tmp_path):
    log = tmp_path / "moto.log"  # goes with the lab's folder when up fails: quote it
    script = "import sys; print('moto: cannot start, no such thing'); sys.exit(3)"
    monkeypatch.setattr(lab_aws, "_SERVER", script)
    with pytest.raises(LabError) as err:
        lab_aws.start_server(60, log)
    assert str(err.value) == "the moto server exited with 3: moto: cannot start, no such thing"
