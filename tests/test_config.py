"""natfleet.config: lookup order, defaults equal to config/*.toml, errors naming file and key."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from natfleet.config import (
    Config,
    Prices,
    find_config,
    load_config,
    load_prices,
    parse_config,
    parse_prices,
    parse_tag,
)
from natfleet.errors import ConfigError, UsageError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

REPO = Path(__file__).resolve().parent.parent


def _toml(path: Path) -> dict:
    return tomllib.loads(path.read_text())


def test_builtin_defaults_equal_the_example_file():
    example = REPO / "config" / "natfleet.toml"
    assert parse_config(_toml(example), example) == Config(path=example)


def test_builtin_prices_equal_the_shipped_price_list():
    prices = REPO / "config" / "prices.toml"
    assert parse_prices(_toml(prices), prices) == Prices(path=prices)
    assert Prices().nat_gateway_hourly == 0.045 and Prices().nat_gateway_per_gb == 0.045


def test_no_file_means_defaults():
    cfg = load_config()
    assert cfg.path is None
    assert cfg.discovery.tags == ("Role=nat",)
    assert cfg.discovery.methods == ("tag", "route", "source-dest-check")
    assert load_prices(cfg).instance_hourly["t4g.nano"] == 0.0042


def test_lookup_order(tmp_path, monkeypatch):
    home_cfg = Path.home() / ".config" / "natfleet" / "config.toml"
    home_cfg.parent.mkdir(parents=True)
    home_cfg.write_text('[ssh]\nuser = "home"\n')
    assert load_config().ssh.user == "home"

    env_cfg = tmp_path / "env.toml"
    env_cfg.write_text('[ssh]\nuser = "env"\n')
    monkeypatch.setenv("NATFLEET_CONFIG", str(env_cfg))
    assert load_config().ssh.user == "env"

    flag_cfg = tmp_path / "flag.toml"
    flag_cfg.write_text('[ssh]\nuser = "flag"\n')
    assert load_config(str(flag_cfg)).ssh.user == "flag"
    assert find_config(str(flag_cfg)) == flag_cfg


def test_missing_explicit_file_is_an_error(tmp_path, monkeypatch):
    with pytest.raises(ConfigError, match=r"nope.toml: no such config file \(from --config\)"):
        load_config(str(tmp_path / "nope.toml"))
    monkeypatch.setenv("NATFLEET_CONFIG", str(tmp_path / "gone.toml"))
    with pytest.raises(
        ConfigError, match=r"gone.toml: no such config file \(from NATFLEET_CONFIG\)"
    ):
        load_config()


@pytest.mark.parametrize(
    "text, message",
    [
        ("[ssh]\nparalel = 3\n", "unknown key ssh.paralel"),
        ("[discovery]\ntags = ['Role']\n", "discovery.tags: tag must be KEY=VALUE"),
        ("[discovery]\nmethods = ['dns']\n", "discovery.methods: 'dns' is not one of"),
        ("[discovery]\naddress = 'ipv6'\n", "discovery.address must be 'private' or 'public'"),
        ("[ssh]\nparallel = 'many'\n", "ssh.parallel must be int, not 'many'"),
        ("[ssh]\nparallel = 0\n", "ssh.parallel must be at least 1"),
        ("[discovery]\ngateways = 1\n", "discovery.gateways must be bool, not 1"),
        ("[oops\n", "not valid TOML"),
        ("ssh = 3\n", r"\[ssh\] must be a table"),
    ],
)
def test_errors_name_file_and_problem(tmp_path, text, message):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message) as info:
        load_config(str(path))
    assert str(info.value).startswith(f"{path}: ")


def test_prices_file_relative_to_config(tmp_path):
    (tmp_path / "my-prices.toml").write_text(
        'region = "eu-west-1"\n[nat_gateway]\nhourly = 0.048\nper_gb_processed = 0.048\n'
        '[instance_hourly]\n"t4g.nano" = 0.0046\n'
    )
    cfg_path = tmp_path / "config.toml"
    cfg_path.write_text('[prices]\nfile = "my-prices.toml"\n')
    prices = load_prices(load_config(str(cfg_path)))
    assert prices.region == "eu-west-1"
    assert prices.nat_gateway_hourly == 0.048
    assert prices.instance_hourly == {"t4g.nano": 0.0046}


def test_bad_price_is_an_error(tmp_path):
    path = tmp_path / "p.toml"
    path.write_text('[instance_hourly]\n"t3.micro" = "cheap"\n')
    with pytest.raises(ConfigError, match=r"instance_hourly.t3.micro must be a price"):
        parse_prices(_toml(path), path)


def test_parse_tag():
    assert parse_tag("Role=nat") == ("Role", "nat")
    assert parse_tag("Env=") == ("Env", "")
    assert parse_tag("Name=a=b") == ("Name", "a=b")
    with pytest.raises(UsageError, match="KEY=VALUE"):
        parse_tag("Role")


def test_iam_policy_reads_and_runs_only_what_natfleet_does():
    """Reading statements on "*"; running the agent only through SSM's shell document and
    Instance Connect, only on instances tagged as NAT boxes; S3 only for reading back."""
    policy = json.loads((REPO / "config" / "iam-policy.json").read_text())
    actions = {a for st in policy["Statement"] for a in st["Action"]}
    assert actions == {
        "ec2:DescribeInstances",
        "ec2:DescribeRouteTables",
        "ec2:DescribeNetworkInterfaces",
        "ec2:DescribeNatGateways",
        "ec2:DescribeRegions",
        "cloudwatch:GetMetricData",
        "ssm:SendCommand",
        "ssm:GetCommandInvocation",
        "s3:GetObject",
        "ec2-instance-connect:SendSSHPublicKey",
    }
    assert all(st["Effect"] == "Allow" for st in policy["Statement"])
    on_instances = [st for st in policy["Statement"] if "instance/" in str(st["Resource"])]
    assert {a for st in on_instances for a in st["Action"]} == {
        "ssm:SendCommand",
        "ec2-instance-connect:SendSSHPublicKey",
    }
    assert all("Condition" in st for st in on_instances)  # tagged NAT instances only
    document = [st for st in policy["Statement"] if "document/" in str(st["Resource"])]
    assert [st["Resource"] for st in document] == ["arn:aws:ssm:*::document/AWS-RunShellScript"]


def test_costs():
    prices = Prices()
    assert prices.gateway_cost(730, 100e9) == pytest.approx(730 * 0.045 + 100 * 0.045)
    assert prices.gateway_cost(1, None) == 0.045
    assert prices.instance_cost("t4g.nano", 730) == pytest.approx(730 * 0.0042)
    assert prices.instance_cost("x9.mega", 1) is None
    assert prices.instance_cost(None, 1) is None


@pytest.mark.parametrize("key", ["connect_timeout", "timeout"])
def test_ssh_timeouts_must_be_positive(key, tmp_path):
    from natfleet.config import load_config

    path = tmp_path / "natfleet.toml"
    path.write_text(f"[ssh]\n{key} = 0\n")
    with pytest.raises(ConfigError, match=f"ssh.{key} must be more than 0"):
        load_config(str(path))


def test_limits_from_the_config(tmp_path):
    from natfleet.config import load_config

    path = tmp_path / "natfleet.toml"
    path.write_text("[limits]\nsummary_kb = 8\nlisting_mb = 2\n")
    limits = load_config(str(path)).limits
    assert (limits.for_mode("summary"), limits.for_mode("list")) == (8 * 1024, 2 << 20)
    path.write_text("[limits]\nlisting_mb = 0\n")
    with pytest.raises(ConfigError, match="limits.listing_mb must be 1 to 1048576"):
        load_config(str(path))
