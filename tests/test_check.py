"""natfleet check without a lab: the agent's check facts and every finding from fixtures
(tests/data/check, see its README), the boundary, two reads, the exit code and the output
formats; the AWS findings in in-process moto."""

from __future__ import annotations

import csv
import dataclasses
import io
import json
from pathlib import Path

import pytest

from natfleet import agent, agent_check, api
from natfleet.answer import AnswerError, check_answer
from natfleet.check.box import box_findings
from natfleet.check.cloud import aws_findings
from natfleet.check.findings import CATALOGUE, SEVERITIES, finding
from natfleet.check.report import CheckReport, Subject, build_report
from natfleet.check.thresholds import CheckConfig, parse_check
from natfleet.config import parse_config
from natfleet.errors import ConfigError, ExitCode
from natfleet.models import HostError, HostResult, Target

DATA = Path(__file__).parent / "data" / "check"
CASES = sorted(p.name for p in DATA.iterdir() if (p / "expected.json").is_file())


def box_files(case: str) -> dict[str, str]:
    """base/ with the case's files over it, as DumpSources files (commands as ``$ argv``)."""
    files: dict[str, str] = {}
    for folder in (DATA / "base", DATA / case):
        for path in sorted(folder.rglob("*")):
            rel = path.relative_to(folder).as_posix()
            if not path.is_file() or rel in ("expected.json", "README.md"):
                continue
            key = "$ " + rel[len("commands/") :] if rel.startswith("commands/") else "/" + rel
            text = path.read_text()
            if text == "@absent":
                files.pop(key, None)
            else:
                files[key] = text
    return files


def answer_of(case: str, files: dict[str, str] | None = None):
    raw = agent.handle({"mode": "check"}, agent.DumpSources(files or box_files(case)))
    assert raw["ok"], raw
    return check_answer(case, {"mode": "check"}, raw)


@pytest.mark.parametrize("case", CASES)
def test_each_fixture_gives_exactly_its_findings(case):
    expected = json.loads((DATA / case / "expected.json").read_text())
    found = box_findings(answer_of(case))
    assert {f.id: f.severity for f in found} == expected
    for f in found:
        assert f.id in CATALOGUE and f.severity in SEVERITIES and f.advice and f.message
        json.dumps(f.evidence)  # plain values only


def test_every_box_finding_id_has_a_fixture():
    """Each box finding of the catalogue is produced by some fixture (or an interval test)."""
    covered = set()
    for case in CASES:
        covered |= set(json.loads((DATA / case / "expected.json").read_text()))
    box_ids = {k for k, v in CATALOGUE.items() if v.where == "box"}
    assert box_ids <= covered


def test_agent_check_facts_of_the_base_box():
    check = answer_of("healthy").check
    assert (check.forwarding_v4, check.default_route_v4, check.interfaces) == (
        1,
        "ens5",
        ("ens5", "lo"),
    )
    assert check.tools == {"iptables": "ok", "ip6tables": "ok", "nft": "absent"}
    [rule] = check.nat_rules
    assert (rule.target, rule.out, rule.random_fully, rule.family) == (
        "MASQUERADE",
        "ens5",
        True,
        "ipv4",
    )
    assert check.rp_filter_of("ens5") == 2 and check.buckets == 262144 and check.acct == 1
    # two TCP ESTABLISHED flows, remaining 7400 and 7438 of 7440 s: idle 40 s and 2 s
    assert (check.idle.established, check.idle.idle, check.idle.max_idle) == (2, 0, None)


def test_idle_flows_are_counted_in_the_summary_walk():
    files = box_files("tcp-established-timeout")  # established timeout 432,000 s
    check = answer_of("x", files).check
    assert (check.idle.established, check.idle.idle) == (2, 2)
    assert check.idle.max_idle == 432000 - 7400
    files["/proc/sys/net/netfilter/nf_conntrack_tcp_timeout_established"] = "7787\n"
    idle = answer_of("x", files).check.idle  # 7400 s left: idle 387 s; 7438 s left: 349 s
    assert (idle.idle, idle.max_idle) == (1, 387)


def test_idle_count_in_parallel_workers_matches_one_process(tmp_path):
    lines = "".join(
        f"ipv4 2 tcp 6 {1000 + i % 500} ESTABLISHED src=10.0.1.{i % 200} dst=203.0.113.5 "
        f"sport={1024 + i % 60000} dport=443 src=203.0.113.5 dst=198.51.100.1 sport=443 "
        f"dport={1024 + i % 60000} [ASSURED] use=1\n"
        for i in range(60000)
    )
    files = {**box_files("healthy"), "/proc/net/nf_conntrack": lines}
    one = agent.handle({"mode": "check", "jobs": 1}, agent.DumpSources(files))["check"]["idle"]
    four = agent.handle({"mode": "check", "jobs": 4}, agent.DumpSources(files))["check"]["idle"]
    # established 7440: a remaining timeout under 7090 is idle: all of them (1000..1499)
    assert one == four == {"after": 350, "established": 60000, "idle": 60000, "max_idle": 6440}


def test_nft_parser_leaves_iptables_nft_tables_out_and_reads_sets_and_negation():
    text = (DATA / "nft-iptables-compat" / "commands" / "nft list ruleset").read_text()
    assert agent_check.parse_nft_ruleset(text) == []
    [rule] = agent_check.parse_nft_ruleset(
        "table inet nat {\n chain post {\n  type nat hook postrouting priority 100;\n"
        '  oifname != "lo" snat to 198.51.100.7:1024-65535\n }\n}\n'
    )
    assert (rule["family"], rule["target"], rule["out"], rule["out_negated"]) == (
        "inet",
        "SNAT",
        "lo",
        True,
    )
    assert rule["to_ports"] == [1024, 65535]


def test_absent_tools_are_a_fact_and_check_mode_never_runs_commands_on_a_fixture_root():
    facts = agent_check.read_facts(agent.LocalSources(str(DATA / "base")), [])
    assert facts["tools"] == {"iptables": "failed", "ip6tables": "failed", "nft": "absent"}
    assert facts["default_route"]["ipv4"] == "ens5"


def test_check_request_is_validated_by_the_agent():
    assert api.check_request(top=3) == {"mode": "check", "top": 3}
    bad = agent.handle({"mode": "chek"}, agent.DumpSources())
    assert bad["error"]["message"].startswith("mode: must be list or summary or info or check")


@pytest.mark.parametrize(
    "path, value, field",
    [
        (("check", "nat_rules", 0, "target"), "ACCEPT", "check.nat_rules[0].target"),
        (("check", "nat_rules", 0, "out"), "eth0\x1b[2J", "check.nat_rules[0].out"),
        (("check", "forwarding", "ipv4"), -1, "check.forwarding.ipv4"),
        (("check", "tools", "nft"), "maybe", "check.tools.nft"),
        (("check", "idle", "idle"), 1.5, "check.idle.idle"),
        (("check", "interfaces"), ["x" * 16], "check.interfaces[]"),
    ],
)
def test_the_boundary_rejects_a_check_field_that_does_not_fit(path, value, field):
    raw = agent.handle({"mode": "check"}, agent.DumpSources(box_files("healthy")))
    place = raw
    for key in path[:-1]:
        place = place[key]
    place[path[-1]] = value
    with pytest.raises(AnswerError, match=field.replace("[", r"\[").replace("]", r"\]")):
        check_answer("box", {"mode": "check"}, raw)
    raw2 = agent.handle({"mode": "check"}, agent.DumpSources(box_files("healthy")))
    raw2["check"]["extra"] = 1
    with pytest.raises(AnswerError, match="check: expected an object of at most 9 keys"):
        check_answer("box", {"mode": "check"}, raw2)


def test_two_reads_turn_growing_counters_critical_with_a_rate():
    before = answer_of("conntrack-drops")
    files = box_files("conntrack-drops")
    grown = " ".join(["00000003"] + ["00000000"] * 8 + ["00000009", "00000001"] + ["00000000"] * 6)
    files["/proc/net/stat/nf_conntrack"] = files["/proc/net/stat/nf_conntrack"].rsplit("\n", 2)[0]
    files["/proc/net/stat/nf_conntrack"] += "\n" + grown + "\n"
    after = answer_of("x", files)
    [drops] = [
        f for f in box_findings(after, before=before.facts, seconds=30) if f.id == "conntrack-drops"
    ]
    assert drops.severity == "critical"
    assert drops.evidence["insert_failed"] == 12  # 3 + 9 on two CPUs
    assert drops.evidence["insert_failed_per_minute"] == 18.0  # +9 in 30 s
    same = [
        f
        for f in box_findings(before, before=before.facts, seconds=30)
        if f.id == "conntrack-drops"
    ]
    assert same[0].severity == "warning" and "none during the interval" in same[0].message


def test_ena_growth_between_reads_is_critical():
    first = answer_of("ena")
    files = box_files("ena")
    files["$ ethtool -S ens5"] = files["$ ethtool -S ens5"].replace("exceeded: 5", "exceeded: 65")
    later = answer_of("x", files)
    [ena] = [
        f
        for f in box_findings(later, before=first.facts, seconds=60)
        if f.id == "ena-allowance-exceeded"
    ]
    assert (ena.severity, ena.evidence["per_minute"]) == ("critical", 60.0)


def test_thresholds_come_from_the_check_section():
    loose = parse_config({"check": {"fill_warning_pct": 90, "fill_critical_pct": 99}}).check
    found = box_findings(answer_of("conntrack-fill-warning"), loose)  # 83.9 %
    assert [f.id for f in found] == []
    tight = CheckConfig(established_timeout_max=3600)
    assert "tcp-established-timeout" in {f.id for f in box_findings(answer_of("healthy"), tight)}
    for bad, message in (
        ({"fill_warnig_pct": 1}, "unknown key check.fill_warnig_pct"),
        ({"fill_warning_pct": "80"}, "check.fill_warning_pct must be a number"),
        ({"fill_warning_pct": 101}, "must be 0 to 100"),
        ({"port_range_min": 1.5}, "must be an integer"),
        ({"fill_warning_pct": 99, "fill_critical_pct": 90}, "must not be above"),
    ):
        with pytest.raises(ConfigError, match=message):
            parse_check(bad)


def test_example_config_has_every_threshold_with_its_default():
    import tomllib

    data = tomllib.loads((Path(__file__).parents[1] / "config" / "natfleet.toml").read_text())
    assert parse_check(data["check"]) == CheckConfig()
    assert set(data["check"]) == {f.name for f in dataclasses.fields(CheckConfig)}


# --- exit code and output -----------------------------------------------------------------


def _report(*cases: str, errors: int = 0) -> CheckReport:
    results = []
    for case in cases:
        results.append(HostResult(Target(case, host="198.19.252.9"), answer_of(case)))
    results += [HostError(Target(f"bad{i}"), "refused", "connect") for i in range(errors)]
    return build_report(results)


def test_exit_code_precedence():
    assert _report("healthy").exit_code("info") == ExitCode.OK
    assert _report("forwarding-off").exit_code() == ExitCode.FINDINGS == 4
    assert _report("rp-filter-strict").exit_code() == ExitCode.OK
    assert _report("rp-filter-strict").exit_code("warning") == ExitCode.FINDINGS
    assert _report("conntrack-acct-off").exit_code("warning") == ExitCode.OK
    assert _report("conntrack-acct-off").exit_code("info") == ExitCode.FINDINGS
    assert _report("forwarding-off").exit_code("never") == ExitCode.OK
    assert _report("forwarding-off", errors=1).exit_code() == ExitCode.PARTIAL
    assert build_report([HostError(Target("a"), "x", "auth")]).exit_code() == ExitCode.ERROR
    assert len({int(code) for code in ExitCode}) == len(ExitCode)


def run_cli(argv, capsys):
    from natfleet import cli
    from natfleet.commands import check

    parser = cli._Parser(prog="natfleet")
    sub = parser.add_subparsers(dest="command", parser_class=cli._Parser)
    check.register(sub)
    args = parser.parse_args(argv)
    code = args.func(args)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_cli_formats_and_exit_code(monkeypatch, capsys, tmp_path):
    inputs = []
    for case in ("forwarding-off", "healthy", "port-pressure-critical"):
        path = tmp_path / case
        path.write_text("")
        inputs += ["--input", str(path)]
    monkeypatch.setattr(agent, "DumpSources", _fixture_sources(agent.DumpSources), raising=True)
    monkeypatch.setenv("COLUMNS", "120")
    code, out, _err = run_cli(["check", *inputs], capsys)
    assert code == 4
    lines = out.splitlines()
    assert all(len(line) <= 120 for line in lines)
    assert lines[0].split() == ["BOX", "SEVERITY", "FINDING", "DETAIL"]
    assert lines[1].split()[:3] == ["port-pressure-critical", "critical", "port-pressure"]
    assert lines[4].split()[:3] == ["forwarding-off", "critical", "forwarding-off"]
    assert "healthy" in out and "no finding" in out and "what to do:" in out
    code, out, _err = run_cli(["check", *inputs, "--format", "json"], capsys)
    doc = json.loads(out)
    assert (doc["natfleet"], doc["command"], doc["errors"]) == (1, "check", [])
    assert [r["id"] for r in doc["rows"]][:2] == ["port-pressure", "port-range-small"]
    assert set(doc["rows"][0]) == {
        "target",
        "subject",
        "id",
        "severity",
        "message",
        "evidence",
        "advice",
    }
    assert doc["rows"][0]["evidence"]["pct"] == 95.31  # 61 of 64 ports
    assert {s["target"]["name"].rsplit("/", 1)[-1]: s["worst"] for s in doc["subjects"]}[
        "healthy"
    ] is None
    code, out, _err = run_cli(["check", *inputs, "--format", "jsonl"], capsys)
    assert [json.loads(line)["id"] for line in out.splitlines()] == [r["id"] for r in doc["rows"]]
    code, out, _err = run_cli(["check", *inputs, "--format", "csv", "--fail-on", "never"], capsys)
    assert code == 0
    rows = list(csv.DictReader(io.StringIO(out)))
    assert list(rows[0])[:6] == ["box", "name", "instance_id", "subject", "severity", "id"]
    assert "pct=95.31" in rows[0]["evidence"] and rows[0]["advice"]


def _fixture_sources(real):
    def sources(files=None, table_file=None):
        name = Path(str(table_file)).name if table_file else ""
        return real(box_files(name)) if name in CASES else real(files, table_file)

    return sources


def test_cli_list_names_every_finding(capsys):
    code, out, _err = run_cli(["check", "--list", "--format", "json"], capsys)
    assert code == 0
    assert {r["id"] for r in json.loads(out)["rows"]} == set(CATALOGUE)


def test_report_orders_worst_subject_first():
    report = CheckReport(
        [
            Subject(Target("b"), "box", [finding("conntrack-acct-off", "x")]),
            Subject(Target("a"), "box", [finding("rp-filter-strict", "x")]),
        ]
    )
    assert report.records()[0]["target"]["name"] == "b"  # as given: build_report sorts
    built = build_report(
        [
            HostResult(Target("z"), answer_of("forwarding-off")),
            HostResult(Target("y"), answer_of("healthy")),
        ]
    )
    assert [s.target.name for s in built.subjects] == ["z", "y"]


# --- AWS (in-process moto) ----------------------------------------------------------------


def test_aws_findings_from_discovery_and_gateway_metrics(session):
    from natfleet import cloudwatch
    from natfleet.lab import faults

    boxes = [faults.fault_box(i) for i in range(1, len(faults.FAULTS) + 1)]
    by_name = {b.name: f for b, f in zip(boxes, faults.FAULTS)}
    ids, gateway = faults.seed_aws(None, boxes, by_name)
    ec2 = session.client("ec2")
    vpc = ec2.describe_vpcs()["Vpcs"][0]["VpcId"]
    subnet = ec2.describe_subnets(Filters=[{"Name": "vpc-id", "Values": [vpc]}])["Subnets"][0]
    spare = ec2.run_instances(
        ImageId="ami-760aaa0f", MinCount=1, MaxCount=1, SubnetId=subnet["SubnetId"],
        TagSpecifications=[{"ResourceType": "instance", "Tags": [{"Key": "Role", "Value": "nat"}]}],
    )["Instances"][0]["InstanceId"]  # fmt: skip
    devices = api.discover({None: session}, ["us-east-1"])
    window = cloudwatch.Window.from_options("2h")
    rows = api.gateway_metrics({None: session}, devices, window)
    found = {k: {f.id: f.severity for f in v} for k, v in aws_findings(devices, rows).items()}
    assert found[ids["nffault7"]] == {"source-dest-check-on": "critical"}
    assert found[ids["nffault-stopped"]] == {"route-to-stopped-instance": "critical"}
    assert found[ids["nffault-gone"]] == {"route-to-missing-target": "critical"}
    assert found[spare] == {"source-dest-check-on": "critical", "instance-not-routed": "warning"}
    assert found[gateway] == {
        "natgw-carrying-traffic": "warning",
        "natgw-port-allocation-errors": "critical",
        "natgw-packets-dropped": "warning",
    }
    for name in ("nffault1", "nffault2", "nffault5"):
        assert ids[name] not in found
    only_tags = aws_findings(devices, rows, methods=("tag",))
    assert "source-dest-check-on" not in {f.id for f in only_tags.get(ids["nffault7"], [])}
    busy = [dict(rows[0], peak_active_connections=50_000.0)]
    peak = aws_findings(devices, busy)[gateway]
    assert "natgw-connections-peak" in {f.id for f in peak}
