"""natfleet.cloudwatch: time parsing, batching, pagination, and sums checked by hand (moto)."""

from __future__ import annotations

import datetime as dt

import pytest
from botocore.stub import ANY, Stubber

from natfleet import aws, cloudwatch
from natfleet.cloudwatch import (
    align,
    choose_period,
    drop_rate,
    fetch,
    gateway_metrics,
    gateway_queries,
    gateway_summary,
    instance_metrics,
    instance_queries,
    parse_period,
    parse_since,
    parse_time,
)
from natfleet.errors import UsageError
from natfleet.models import Device

UTC = dt.timezone.utc
NOW = dt.datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
REGION = "us-east-1"


@pytest.fixture
def base() -> dt.datetime:
    """A whole hour two hours ago: the first seeded point, aligned to every period used."""
    now = dt.datetime.now(UTC)
    return now.replace(minute=0, second=0, microsecond=0) - dt.timedelta(hours=2)


def _put(session, namespace, dimension, resource, metric, start, values):
    """One point a minute from ``start``."""
    cw = session.client("cloudwatch", region_name=REGION)
    cw.put_metric_data(
        Namespace=namespace,
        MetricData=[
            {
                "MetricName": metric,
                "Dimensions": [{"Name": dimension, "Value": resource}],
                "Timestamp": start + dt.timedelta(minutes=i),
                "Value": float(v),
            }
            for i, v in enumerate(values)
        ],
    )


# --- time -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, expected",
    [
        ("3h", dt.datetime(2024, 5, 1, 9, 0, tzinfo=UTC)),
        ("2d", dt.datetime(2024, 4, 29, 12, 0, tzinfo=UTC)),
        ("30m", dt.datetime(2024, 5, 1, 11, 30, tzinfo=UTC)),
        ("90s", dt.datetime(2024, 5, 1, 11, 58, 30, tzinfo=UTC)),
        ("1w", dt.datetime(2024, 4, 24, 12, 0, tzinfo=UTC)),
        ("2024-05-01T10:15:00Z", dt.datetime(2024, 5, 1, 10, 15, tzinfo=UTC)),
        ("2024-05-01T12:15:00+02:00", dt.datetime(2024, 5, 1, 10, 15, tzinfo=UTC)),
        ("2024-05-01 10:15", dt.datetime(2024, 5, 1, 10, 15, tzinfo=UTC)),
    ],
)
def test_parse_since(text, expected):
    assert parse_since(text, now=NOW) == expected


def test_parse_time_now_and_errors():
    assert parse_time(None, now=NOW) == NOW
    assert parse_time("now", now=NOW) == NOW
    with pytest.raises(UsageError, match=r"duration ago \(30m, 3h, 2d, 1w\) or ISO 8601"):
        parse_time("yesterday")


def test_parse_period():
    assert parse_period(None) is None
    assert parse_period("300") == 300
    assert parse_period("5m") == 300
    assert parse_period("1h") == 3600
    for bad in ("90", "0", "-60", "5x", "30s"):
        with pytest.raises(UsageError, match="multiple of 60"):
            parse_period(bad)


def test_choose_period_keeps_points_under_1440():
    h = dt.timedelta(hours=1)
    assert choose_period(NOW - 3 * h, NOW, now=NOW) == 60
    assert choose_period(NOW - 24 * h, NOW, now=NOW) == 60  # exactly 1440 points
    assert choose_period(NOW - 25 * h, NOW, now=NOW) == 300
    assert choose_period(NOW - 30 * 24 * h, NOW, now=NOW) == 3600
    # 20 days ago: 1-minute data is gone after 15 days, even for a 1-hour window
    assert choose_period(NOW - 20 * 24 * h, NOW - 20 * 24 * h + h, now=NOW) == 300
    assert choose_period(NOW - 90 * 24 * h, NOW - 90 * 24 * h + h, now=NOW) == 3600
    assert choose_period(NOW - 5000 * 24 * h, NOW, now=NOW) == 4 * 86400


def test_align():
    start = dt.datetime(2024, 5, 1, 10, 7, 30, tzinfo=UTC)
    end = dt.datetime(2024, 5, 1, 10, 58, tzinfo=UTC)
    assert align(start, end, 300) == (
        dt.datetime(2024, 5, 1, 10, 5, tzinfo=UTC),
        dt.datetime(2024, 5, 1, 11, 0, tzinfo=UTC),
    )
    assert align(NOW, NOW, 60) == (NOW, NOW + dt.timedelta(minutes=1))


# --- queries ----------------------------------------------------------------------------


def test_queries_have_the_right_statistics_and_namespaces():
    stats = {q.metric: q.statistic for q in gateway_queries(["nat-1"])}
    assert stats["ActiveConnectionCount"] == "Maximum"
    assert {s for m, s in stats.items() if m != "ActiveConnectionCount"} == {"Sum"}
    assert len(stats) == 14
    assert {q.namespace for q in gateway_queries(["nat-1"])} == {"AWS/NATGateway"}
    ec2 = instance_queries(["i-t", "i-c"], {"i-t": "t4g.nano", "i-c": "c7gn.medium"})
    assert [(q.resource_id, q.metric, q.statistic) for q in ec2 if q.metric.startswith("CPU")] == [
        ("i-t", "CPUUtilization", "Average"),
        ("i-t", "CPUCreditBalance", "Average"),
        ("i-c", "CPUUtilization", "Average"),
    ]
    assert ec2[0].label == "AWS/EC2 NetworkIn Sum i-t"


# --- against moto -----------------------------------------------------------------------


def test_gateway_sums_maxima_rates_by_hand(session, base):
    gw = "nat-0aaa"
    ns, dim = "AWS/NATGateway", "NatGatewayId"
    # ten one-minute points; period 300 makes two buckets of five
    active = [5, 9, 3, 7, 2, 11, 4, 4, 6, 1]  # bucket maxima 9 and 11
    attempts = [10] * 10  # 100
    established = [9] * 10  # 90
    drops = [0, 0, 1, 0, 0, 0, 2, 0, 0, 1]  # 4
    in_src = [100] * 10  # 1000 packets
    in_dst = [300] * 10  # 3000 packets
    out_dst = [1500] * 10  # 15000 bytes
    for metric, values in [
        ("ActiveConnectionCount", active),
        ("ConnectionAttemptCount", attempts),
        ("ConnectionEstablishedCount", established),
        ("PacketsDropCount", drops),
        ("PacketsInFromSource", in_src),
        ("PacketsInFromDestination", in_dst),
        ("BytesOutToDestination", out_dst),
        ("ErrorPortAllocation", [0] * 10),  # seeded zeros: 0, not "no data"
    ]:
        _put(session, ns, dim, gw, metric, base, values)
    start, end = base, base + dt.timedelta(minutes=10)
    series = gateway_metrics(session, REGION, [gw], start, end, period=300)
    by_metric = {s.metric: s for s in series}
    assert by_metric["ActiveConnectionCount"].values == [9.0, 11.0]
    assert by_metric["ActiveConnectionCount"].timestamps[0] == base
    assert by_metric["ConnectionAttemptCount"].values == [50.0, 50.0]
    assert by_metric["BytesInFromSource"].values == []  # never seeded: no data
    assert not by_metric["BytesInFromSource"].has_data
    assert all(s.namespace == ns and s.period == 300 for s in series)

    (row,) = gateway_summary(series, start, end)
    assert row["nat_gateway_id"] == gw
    assert row["seconds"] == 600
    assert row["peak_active_connections"] == 11.0
    assert row["connection_attempts"] == 100.0
    assert row["connections_established"] == 90.0
    assert row["packets_dropped"] == 4.0
    assert row["drop_rate"] == pytest.approx(4 / (1000 + 3000))
    assert row["bytes_to_destination"] == 15000.0
    assert row["bytes_per_second_out"] == pytest.approx(15000 / 600)
    assert row["error_port_allocation"] == 0.0  # zero, seeded
    assert row["idle_timeouts"] is None  # no data, never 0
    assert row["bytes_from_destination"] is None
    assert row["bytes_per_second_in"] is None
    assert row["active_connections"] == [9.0, 11.0]


def test_unaligned_window_is_aligned(session, base):
    """A --since that falls mid-period still gives whole, aligned buckets (moto would not)."""
    values = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]
    _put(session, "AWS/NATGateway", "NatGatewayId", "nat-0b", "ActiveConnectionCount", base, values)
    start = base + dt.timedelta(minutes=2, seconds=30)
    (active, *_) = gateway_metrics(
        session, REGION, ["nat-0b"], start, base + dt.timedelta(minutes=9), 300
    )
    assert active.timestamps == [base, base + dt.timedelta(minutes=5)]
    assert active.values == [5.0, 10.0]


def test_instance_metrics(session, base):
    dim = "InstanceId"
    _put(session, "AWS/EC2", dim, "i-0nat", "NetworkIn", base, [1000, 2000, 3000])
    _put(session, "AWS/EC2", dim, "i-0nat", "NetworkOut", base, [10, 20, 30])
    _put(session, "AWS/EC2", dim, "i-0nat", "CPUUtilization", base, [2.0, 4.0, 9.0])
    end = base + dt.timedelta(minutes=3)
    types = {"i-0nat": "c6gn.medium"}
    series = instance_metrics(session, REGION, ["i-0nat"], base, end, 60, instance_types=types)
    got = {s.metric: s.values for s in series}
    assert "CPUCreditBalance" not in got  # not a burstable type
    assert got["NetworkIn"] == [1000.0, 2000.0, 3000.0]
    assert cloudwatch.series_sum(series[0]) == 6000.0
    assert got["NetworkOut"] == [10.0, 20.0, 30.0]
    assert got["CPUUtilization"] == [2.0, 4.0, 9.0]
    assert got["NetworkPacketsIn"] == []  # no data
    assert all(s.namespace == "AWS/EC2" for s in series)
    (row,) = cloudwatch.instance_summary(series, base, end)
    assert row["instance_id"] == "i-0nat"
    assert row["seconds"] == 180
    assert row["bytes_in"] == 6000.0 and row["bytes_per_second_in"] == 6000 / 180
    assert row["bytes_out"] == 60.0
    assert row["packets_in"] is None  # no data
    assert row["peak_cpu_percent"] == 9.0
    assert row["min_cpu_credit_balance"] is None


def test_more_than_500_queries_are_batched(session, base, monkeypatch):
    gateways = [f"nat-{n:04d}" for n in range(40)]  # 40 x 14 = 560 queries
    for n, gw in enumerate(gateways):
        _put(session, "AWS/NATGateway", "NatGatewayId", gw, "ActiveConnectionCount", base, [n])
    calls = []
    real = aws.paginate

    def spy(client, operation, **kwargs):
        calls.append(len(kwargs["MetricDataQueries"]))
        yield from real(client, operation, **kwargs)

    monkeypatch.setattr(aws, "paginate", spy)
    series = gateway_metrics(session, REGION, gateways, base, base + dt.timedelta(minutes=1), 60)
    assert calls == [500, 60]
    active = {s.resource_id: s.values for s in series if s.metric == "ActiveConnectionCount"}
    assert active["nat-0000"] == [0.0]
    assert active["nat-0039"] == [39.0]  # second batch maps back to the right gateway


def test_next_token_pages_are_joined_and_sorted():
    session = aws.static_session("testing", "testing", REGION)
    cw = aws.client(session, "cloudwatch")
    t = [dt.datetime(2024, 5, 1, 10, m, tzinfo=UTC) for m in range(4)]
    queries = instance_queries(["i-1"], {"i-1": "c7gn.medium"})[:2]
    with Stubber(cw) as stub:
        stub.add_response(
            "get_metric_data",
            {
                "MetricDataResults": [
                    {"Id": "q0", "Timestamps": [t[2], t[3]], "Values": [3.0, 4.0]},
                    {"Id": "q1", "Timestamps": [], "Values": []},
                ],
                "NextToken": "page2",
            },
            {
                "MetricDataQueries": ANY,
                "StartTime": t[0],
                "EndTime": t[0] + dt.timedelta(minutes=4),
                "ScanBy": "TimestampAscending",
            },
        )
        stub.add_response(
            "get_metric_data",
            {
                "MetricDataResults": [
                    {"Id": "q0", "Timestamps": [t[0], t[1]], "Values": [1.0, 2.0]},
                    {"Id": "q1", "Timestamps": [t[1]], "Values": [7.0]},
                ]
            },
            {
                "MetricDataQueries": ANY,
                "StartTime": t[0],
                "EndTime": t[0] + dt.timedelta(minutes=4),
                "ScanBy": "TimestampAscending",
                "NextToken": "page2",
            },
        )
        series = fetch(cw, queries, t[0], t[3] + dt.timedelta(seconds=30), 60)
    assert (series[0].metric, series[0].timestamps, series[0].values) == (
        "NetworkIn",
        t,
        [1.0, 2.0, 3.0, 4.0],
    )
    assert (series[1].metric, series[1].values) == ("NetworkOut", [7.0])


def test_request_names_namespace_metric_and_statistic():
    """moto ignores the namespace when Dimensions are given, so check what is asked for."""
    session = aws.static_session("testing", "testing", REGION)
    cw = aws.client(session, "cloudwatch")
    seen = []
    event = "provide-client-params.monitoring.GetMetricData"
    cw.meta.events.register(event, lambda params, **kw: seen.extend(params["MetricDataQueries"]))
    with Stubber(cw) as stub:
        stub.add_response("get_metric_data", {"MetricDataResults": []})
        fetch(cw, gateway_queries(["nat-1"])[:1], NOW - dt.timedelta(hours=1), NOW, 60)
    assert seen == [
        {
            "Id": "q0",
            "Label": "AWS/NATGateway ActiveConnectionCount Maximum nat-1",
            "MetricStat": {
                "Metric": {
                    "Namespace": "AWS/NATGateway",
                    "MetricName": "ActiveConnectionCount",
                    "Dimensions": [{"Name": "NatGatewayId", "Value": "nat-1"}],
                },
                "Period": 60,
                "Stat": "Maximum",
            },
            "ReturnData": True,
        }
    ]


def test_drop_rate_and_no_data():
    assert drop_rate(5, 900, 100) == 0.005
    assert drop_rate(0, 900, 100) == 0.0
    assert drop_rate(None, 900, 100) is None
    assert drop_rate(5, None, None) is None
    assert drop_rate(5, 0, 0) is None
    assert cloudwatch.series_sum(None) is None
    assert cloudwatch.per_second(None, 60) is None


# --- the library face: window, gateway selection, gateway rows -------------------------


def test_window_from_options_and_json(base):
    until = base + dt.timedelta(hours=1)
    window = cloudwatch.Window.from_options(base.isoformat(), until.isoformat())
    assert (window.start, window.end) == (base, until)
    assert window.period == choose_period(base, until) and window.seconds == 3600
    text = window.to_json()
    assert text["start"] == base.strftime("%Y-%m-%dT%H:%M:%SZ") and text["end"].endswith("Z")
    with pytest.raises(UsageError):
        cloudwatch.Window.from_options("3h", period="90")


@pytest.mark.parametrize(
    "since, until, message",
    [
        ("1h", "2h", r"ends before it starts: --until 2h is 2024-05-01T10:00:00Z, not after"),
        ("2024-05-01T11:00Z", "2024-05-01T11:00Z", "ends before it starts"),  # empty
        ("2024-05-01T10:00Z", "2024-05-01T09:59Z", "ends before it starts"),
        ("2024-05-02T00:00Z", None, r"lies in the future: --since 2024-05-02T00:00Z is 2024-05-02"),
        ("0m", None, "lies in the future"),  # starts now: nothing to fetch
    ],
)
def test_a_window_that_ends_before_it_starts_or_lies_ahead_is_a_usage_error(since, until, message):
    with pytest.raises(UsageError, match=message):
        cloudwatch.Window.from_options(since, until, now=NOW)


def test_window_times_are_relative_to_one_now_and_end_by_now():
    window = cloudwatch.Window.from_options("3h", "1h", now=NOW + dt.timedelta(microseconds=7))
    assert (window.start, window.end) == (NOW - dt.timedelta(hours=3), NOW - dt.timedelta(hours=1))
    later = cloudwatch.Window.from_options("1h", "2024-05-01T13:00:00Z", now=NOW)
    assert later.end == NOW and later.seconds == 3600  # nothing after now to fetch


def test_fetch_progress_counts_batches_pages_and_points(session, base, monkeypatch):
    gateways = [f"nat-{n:04d}" for n in range(40)]  # 40 x 14 = 560 queries: two batches
    for n, gw in enumerate(gateways):
        _put(session, "AWS/NATGateway", "NatGatewayId", gw, "ActiveConnectionCount", base, [n, n])
    lines: list[str] = []
    window = cloudwatch.Window(base, base + dt.timedelta(minutes=2), 60)
    gws = [Device("gateway", gw, REGION) for gw in gateways]
    cloudwatch.gateway_rows({None: session}, gws, window, show=lines.append)
    assert lines[0] == "CloudWatch: 0/2 batches"  # said before the first call returns
    assert lines[-1] == "CloudWatch: 2/2 batches, 2 pages, 80 points"
    assert "CloudWatch: 1/2 batches, 1 page, " in lines[2]
    assert cloudwatch.batch_count(0) == 0 and cloudwatch.batch_count(1000) == 2


def test_select_gateways_keeps_instances_and_named_gateways():
    devices = [
        Device("instance", "i-1", REGION),
        Device("gateway", "nat-1", REGION),
        Device("gateway", "nat-2", REGION),
    ]
    assert [d.id for d in cloudwatch.select_gateways(devices, ["nat-2"])] == ["i-1", "nat-2"]
    assert cloudwatch.select_gateways(devices, None) == devices
    assert cloudwatch.select_gateways(devices, []) == devices


def test_gateway_rows_take_plain_arguments(session, base):
    _put(session, "AWS/NATGateway", "NatGatewayId", "nat-a", "ActiveConnectionCount", base, [3, 9])
    _put(session, "AWS/NATGateway", "NatGatewayId", "nat-a", "PacketsDropCount", base, [1, 1])
    window = cloudwatch.Window(base, base + dt.timedelta(hours=1), 60)
    gateways = [
        Device("gateway", "nat-a", REGION, name="gw-a", vpc_id="vpc-1"),
        Device("instance", "i-1", REGION),  # not a gateway: no row
        Device("gateway", "nat-b", REGION, name="gw-b"),
    ]
    rows = cloudwatch.gateway_rows({None: session}, gateways, window)
    assert [r["nat_gateway_id"] for r in rows] == ["nat-a", "nat-b"]
    assert all(tuple(r) == cloudwatch.GATEWAY_ROW_KEYS for r in rows)
    a, b = rows
    assert (a["name"], a["vpc_id"], a["region"], a["period"]) == ("gw-a", "vpc-1", REGION, 60)
    assert (a["start"], a["end"]) == (window.start, window.end)
    assert a["peak_active_connections"] == 9.0 and a["packets_dropped"] == 2.0
    assert a["active_connections"] == [3.0, 9.0]
    assert b["peak_active_connections"] is None and b["packets_dropped"] is None  # no data
