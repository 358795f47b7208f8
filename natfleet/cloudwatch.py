"""NAT gateway (``AWS/NATGateway``) and NAT instance (``AWS/EC2``) metrics from CloudWatch.

Everything goes through ``GetMetricData``: up to 500 queries a call, pages joined through
``NextToken``, timestamps ascending. The window is aligned to whole periods (CloudWatch does
this itself; moto does not, so alignment is done here). A metric without data is an empty
:class:`MetricSeries` ("no data"), never zeros; summaries then say None.

Example:
    >>> start, end = parse_since("3h"), parse_time(None)
    >>> series = gateway_metrics(session, "us-east-1", ["nat-0abc"], start, end)
    >>> gateway_summary(series, start, end)[0]["peak_active_connections"]
    1234.0
    >>> rows = gateway_rows({None: session}, gateways, Window.from_options("3h"))  # the table
"""

from __future__ import annotations

import datetime as dt
import logging
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Callable, Optional

import boto3

from natfleet import aws
from natfleet.errors import UsageError
from natfleet.models import Device, MetricSeries
from natfleet.output import iso_time

log = logging.getLogger(__name__)

NATGW_NAMESPACE = "AWS/NATGateway"
EC2_NAMESPACE = "AWS/EC2"
# (metric, statistic): see /work/shared/docs/aws-nat.md.
NATGW_METRICS: tuple[tuple[str, str], ...] = (
    ("ActiveConnectionCount", "Maximum"),
    ("ConnectionAttemptCount", "Sum"),
    ("ConnectionEstablishedCount", "Sum"),
    ("ErrorPortAllocation", "Sum"),
    ("IdleTimeoutCount", "Sum"),
    ("PacketsDropCount", "Sum"),
    ("BytesInFromSource", "Sum"),
    ("BytesOutToDestination", "Sum"),
    ("BytesInFromDestination", "Sum"),
    ("BytesOutToSource", "Sum"),
    ("PacketsInFromSource", "Sum"),
    ("PacketsOutToDestination", "Sum"),
    ("PacketsInFromDestination", "Sum"),
    ("PacketsOutToSource", "Sum"),
)
EC2_METRICS: tuple[tuple[str, str], ...] = (
    ("NetworkIn", "Sum"),
    ("NetworkOut", "Sum"),
    ("NetworkPacketsIn", "Sum"),
    ("NetworkPacketsOut", "Sum"),
    ("CPUUtilization", "Average"),
    ("CPUCreditBalance", "Average"),  # burstable (t*) types only
)
MAX_QUERIES = 500  # GetMetricData limit
MAX_POINTS = 1440  # points per series we aim for when choosing a period
PERIODS = (60, 300, 900, 3600, 10800, 21600, 86400)

# The keys of a gateway_rows() row, in order (CSV leaves out the series).
GATEWAY_ROW_KEYS = (
    "name",
    "region",
    "vpc_id",
    "start",
    "end",
    "period",
    "nat_gateway_id",
    "seconds",
    "peak_active_connections",
    "connection_attempts",
    "connections_established",
    "error_port_allocation",
    "idle_timeouts",
    "packets_dropped",
    "drop_rate",
    "bytes_to_destination",
    "bytes_from_destination",
    "packets_to_destination",
    "packets_from_destination",
    "bytes_per_second_out",
    "bytes_per_second_in",
    "bytes_processed",
    "active_connections",
)

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$", re.IGNORECASE)


Show = Callable[[str], None]  # shows one line of progress (a terminal's status line)


def batch_count(queries: int) -> int:
    """GetMetricData calls (batches of at most 500 queries) for ``queries`` queries.

    Example:
        >>> batch_count(14), batch_count(500), batch_count(501)
        (1, 1, 2)
    """
    return -(-queries // MAX_QUERIES)


class FetchProgress:
    """What a CloudWatch fetch has done so far, told to ``show`` as one line of text at the
    start, after every page and after every batch.

    Example:
        >>> progress = FetchProgress(2, print)
        CloudWatch: 0/2 batches
        >>> progress.page(1440)
        CloudWatch: 0/2 batches, 1 page, 1,440 points
        >>> progress.batch_done()
        CloudWatch: 1/2 batches, 1 page, 1,440 points
    """

    def __init__(self, batches: int, show: Optional[Show]) -> None:
        self.batches, self.show = batches, show
        self.done = self.pages = self.points = 0
        self._tell()

    @classmethod
    def for_groups(cls, sizes: Iterable[int], show: Optional[Show]) -> FetchProgress:
        """Progress over groups of ``sizes`` queries (one fetch per group)."""
        return cls(sum(batch_count(n) for n in sizes), show)

    def page(self, points: int) -> None:
        self.pages += 1
        self.points += points
        self._tell()

    def batch_done(self) -> None:
        self.done += 1
        self._tell()

    def text(self) -> str:
        line = f"CloudWatch: {self.done}/{self.batches} batches"
        if self.pages:
            line += f", {self.pages} page{'s' if self.pages != 1 else ''}, {self.points:,} points"
        return line

    def _tell(self) -> None:
        if self.show is not None:
            self.show(self.text())


@dataclass(frozen=True)
class MetricQuery:
    """One series to fetch: ``namespace``/``metric``/``statistic`` of one resource.

    Example:
        >>> MetricQuery("AWS/EC2", "NetworkIn", "Sum", "InstanceId", "i-0abc").label
        'AWS/EC2 NetworkIn Sum i-0abc'
    """

    namespace: str
    metric: str
    statistic: str
    dimension: str
    resource_id: str

    @property
    def label(self) -> str:
        return f"{self.namespace} {self.metric} {self.statistic} {self.resource_id}"


@dataclass(frozen=True)
class Window:
    """A CloudWatch window: ``start``/``end`` (UTC) and ``period`` seconds per point.

    Example:
        >>> w = Window.from_options("2024-05-01T10:00:00Z", "2024-05-01T11:00:00Z", "60")
        >>> w.seconds, w.period, w.to_json()["start"]
        (3600.0, 60, '2024-05-01T10:00:00Z')
    """

    start: dt.datetime
    end: dt.datetime
    period: int

    @classmethod
    def from_options(
        cls,
        since: str = "3h",
        until: Optional[str] = None,
        period: Optional[str] = None,
        now: Optional[dt.datetime] = None,
    ) -> Window:
        """From ``--since --until --period`` text (see :func:`parse_time`,
        :func:`parse_period`; the period chosen by :func:`choose_period` when None), both
        times relative to the same ``now``. Times are cut to whole seconds, as JSON shows
        them; an end after ``now`` is ``now`` (CloudWatch has nothing later).

        Raises UsageError for a window that starts in the future or ends before it starts:

            >>> Window.from_options("1h", "2h")
            Traceback (most recent call last):
            natfleet.errors.UsageError: the window ends before it starts: --until ... is ...
        """
        now = (now or dt.datetime.now(dt.timezone.utc)).replace(microsecond=0)
        start = parse_since(since, now).replace(microsecond=0)
        end = parse_time(until, now).replace(microsecond=0)
        check_window(start, end, now, since, until)
        end = min(end, now)
        return cls(start, end, parse_period(period) or choose_period(start, end, now))

    @property
    def seconds(self) -> float:
        """Length of the window aligned to whole periods (what CloudWatch sums over)."""
        return window_seconds(self.start, self.end, self.period)

    def to_json(self) -> dict[str, Any]:
        return {
            "start": iso_time(self.start),
            "end": iso_time(self.end),
            "period": self.period,
            "seconds": self.seconds,
        }


def gateway_queries(gateway_ids: Iterable[str]) -> list[MetricQuery]:
    """Every NAT gateway metric, with its right statistic, for each gateway."""
    return [
        MetricQuery(NATGW_NAMESPACE, metric, stat, "NatGatewayId", gw)
        for gw in gateway_ids
        for metric, stat in NATGW_METRICS
    ]


def instance_queries(
    instance_ids: Iterable[str], instance_types: Optional[Mapping[str, Optional[str]]] = None
) -> list[MetricQuery]:
    """EC2 network and CPU metrics per instance; CPUCreditBalance only for ``t*`` types
    (or when the type is unknown).

    Example:
        >>> [q.metric for q in instance_queries(["i-1"], {"i-1": "c7gn.medium"})][-1]
        'CPUUtilization'
    """
    types = instance_types or {}
    out = []
    for iid in instance_ids:
        itype = types.get(iid)
        for metric, stat in EC2_METRICS:
            if metric == "CPUCreditBalance" and itype and not itype.startswith("t"):
                continue
            out.append(MetricQuery(EC2_NAMESPACE, metric, stat, "InstanceId", iid))
    return out


def parse_time(text: Optional[str], now: Optional[dt.datetime] = None) -> dt.datetime:
    """A UTC time from ``3h``/``2d``/``30m``/``90s``/``1w`` ago, ISO 8601, or None (now).

    Naive ISO times are UTC.

    Example:
        >>> parse_time("2h", now=dt.datetime(2024, 5, 1, 12, tzinfo=dt.timezone.utc))
        datetime.datetime(2024, 5, 1, 10, 0, tzinfo=datetime.timezone.utc)
        >>> parse_time("2024-05-01T10:00:00Z")
        datetime.datetime(2024, 5, 1, 10, 0, tzinfo=datetime.timezone.utc)
    """
    now = now or dt.datetime.now(dt.timezone.utc)
    if text is None or text.strip().lower() == "now":
        return now
    match = _DURATION.match(text)
    if match:
        return now - dt.timedelta(seconds=float(match[1]) * _UNITS[match[2].lower()])
    iso = text.strip()
    if iso.endswith(("Z", "z")):
        iso = iso[:-1] + "+00:00"
    try:
        when = dt.datetime.fromisoformat(iso)
    except ValueError:
        raise UsageError(
            f"time must be a duration ago (30m, 3h, 2d, 1w) or ISO 8601 "
            f"(2024-05-01T10:00:00Z), not {text!r}"
        ) from None
    if when.tzinfo is None:
        return when.replace(tzinfo=dt.timezone.utc)
    return when.astimezone(dt.timezone.utc)


def check_window(
    start: dt.datetime,
    end: dt.datetime,
    now: dt.datetime,
    since: str = "",
    until: Optional[str] = None,
) -> None:
    """UsageError unless ``start`` is before ``now`` and before ``end`` (the option texts
    ``since`` and ``until`` are named in the message).

    Example:
        >>> check_window(NOW, NOW - dt.timedelta(hours=1), NOW, "2024-05-01T12:00Z", "1h")
        Traceback (most recent call last):
        natfleet.errors.UsageError: the window ends before it starts: --until 1h is ...
    """
    if start >= now:
        raise UsageError(
            f"the window lies in the future: --since {since} is {iso_time(start)}, "
            f"after now ({iso_time(now)}); CloudWatch has no data there"
        )
    if end <= start:
        shown = until if until is not None else "now"
        raise UsageError(
            f"the window ends before it starts: --until {shown} is {iso_time(end)}, "
            f"not after --since {since} ({iso_time(start)})"
        )


def parse_since(text: str, now: Optional[dt.datetime] = None) -> dt.datetime:
    """``--since``: see :func:`parse_time` (``parse_since("3h")`` is three hours ago)."""
    return parse_time(text, now)


def parse_period(text: Optional[str]) -> Optional[int]:
    """``--period`` in seconds: ``300``, ``5m``, ``1h``; a multiple of 60. None: choose.

    Example:
        >>> parse_period("5m")
        300
    """
    if text is None:
        return None
    match = _DURATION.match(text)
    seconds = (
        float(match[1]) * _UNITS[match[2].lower()]
        if match
        else float(text)
        if text.strip().isdigit()
        else -1
    )
    if seconds <= 0 or seconds % 60:
        raise UsageError(f"period must be a multiple of 60 seconds (60, 5m, 1h), not {text!r}")
    return int(seconds)


def choose_period(start: dt.datetime, end: dt.datetime, now: Optional[dt.datetime] = None) -> int:
    """The smallest standard period giving at most 1440 points that CloudWatch still keeps
    at that start (1-minute data for 15 days, 5-minute for 63 days, then hourly).

    Example:
        >>> choose_period(parse_time("3h"), parse_time(None))
        60
        >>> choose_period(parse_time("2d"), parse_time(None))
        300
    """
    now = now or dt.datetime.now(dt.timezone.utc)
    age = (now - start).total_seconds()
    floor = 60 if age <= 15 * 86400 else 300 if age <= 63 * 86400 else 3600
    window = max((end - start).total_seconds(), 1)
    for period in PERIODS:
        if period >= floor and window / period <= MAX_POINTS:
            return period
    return int(math.ceil(window / MAX_POINTS / 86400)) * 86400


def align(start: dt.datetime, end: dt.datetime, period: int) -> tuple[dt.datetime, dt.datetime]:
    """``start`` down and ``end`` up to whole periods since the epoch (UTC).

    Example:
        >>> align(datetime(2024,5,1,10,7,30,tzinfo=utc), datetime(2024,5,1,10,58,tzinfo=utc), 300)
        (datetime(2024,5,1,10,5,tzinfo=utc), datetime(2024,5,1,11,0,tzinfo=utc))
    """
    s = int(start.timestamp()) // period * period
    e = -(-int(math.ceil(end.timestamp())) // period) * period
    utc = dt.timezone.utc
    return dt.datetime.fromtimestamp(s, utc), dt.datetime.fromtimestamp(max(e, s + period), utc)


def fetch(
    cloudwatch: Any,
    queries: Sequence[MetricQuery],
    start: dt.datetime,
    end: dt.datetime,
    period: int,
    progress: Optional[FetchProgress] = None,
) -> list[MetricSeries]:
    """One :class:`MetricSeries` per query, in query order: batches of <= 500 queries,
    every ``NextToken`` page, window aligned to ``period``; each page and batch told to
    ``progress``.

    Example:
        >>> fetch(cw, gateway_queries(["nat-0abc"]), start, end, 60)[0].metric
        'ActiveConnectionCount'
    """
    start, end = align(start, end, period)
    series = [
        MetricSeries(q.resource_id, q.metric, q.statistic, namespace=q.namespace, period=period)
        for q in queries
    ]
    for offset in range(0, len(queries), MAX_QUERIES):
        batch = queries[offset : offset + MAX_QUERIES]
        request = [_query(f"q{offset + i}", q, period) for i, q in enumerate(batch)]
        for page in aws.paginate(
            cloudwatch,
            "get_metric_data",
            MetricDataQueries=request,
            StartTime=start,
            EndTime=end,
            ScanBy="TimestampAscending",
        ):
            points = 0
            for result in page.get("MetricDataResults", []):
                target = series[int(result["Id"][1:])]
                target.timestamps.extend(result.get("Timestamps", []))
                target.values.extend(float(v) for v in result.get("Values", []))
                points += len(result.get("Values", []))
                if result.get("StatusCode") in ("InternalError", "Forbidden"):
                    messages = "; ".join(m.get("Value", "") for m in result.get("Messages", []))
                    log.warning(
                        "CloudWatch gave %s for %s %s (%s): its figures may be partial",
                        result["StatusCode"],
                        target.resource_id,
                        target.metric,
                        messages or "no detail",
                    )
            if progress is not None:
                progress.page(points)
        if progress is not None:
            progress.batch_done()
    for s in series:
        if s.timestamps:
            pairs = sorted(zip(s.timestamps, s.values), key=lambda p: p[0])
            s.timestamps[:] = [t for t, _ in pairs]
            s.values[:] = [v for _, v in pairs]
    return series


def gateway_metrics(
    session: boto3.Session,
    region: str,
    gateway_ids: Sequence[str],
    start: dt.datetime,
    end: dt.datetime,
    period: Optional[int] = None,
    progress: Optional[FetchProgress] = None,
) -> list[MetricSeries]:
    """Every ``AWS/NATGateway`` metric of ``gateway_ids`` in ``region`` (see :func:`fetch`)."""
    cw = aws.client(session, "cloudwatch", region)
    queries = gateway_queries(gateway_ids)
    return fetch(cw, queries, start, end, period or choose_period(start, end), progress)


def instance_metrics(
    session: boto3.Session,
    region: str,
    instance_ids: Sequence[str],
    start: dt.datetime,
    end: dt.datetime,
    period: Optional[int] = None,
    instance_types: Optional[Mapping[str, Optional[str]]] = None,
) -> list[MetricSeries]:
    """``AWS/EC2`` network and CPU metrics of NAT instances (see :func:`instance_queries`)."""
    cw = aws.client(session, "cloudwatch", region)
    queries = instance_queries(instance_ids, instance_types)
    return fetch(cw, queries, start, end, period or choose_period(start, end))


def select_gateways(devices: Iterable[Device], ids: Optional[Iterable[str]] = None) -> list[Device]:
    """``devices`` without the NAT gateways whose id is not in ``ids`` (every one when
    ``ids`` is empty or None); instances are kept.

    Example:
        >>> [d.id for d in select_gateways([Device("gateway", "nat-1", "r"),
        ...                                 Device("gateway", "nat-2", "r")], ["nat-2"])]
        ['nat-2']
    """
    wanted = set(ids or ())
    return [d for d in devices if d.kind != "gateway" or not wanted or d.id in wanted]


def gateway_rows(
    sessions: Mapping[Optional[str], boto3.Session],
    gateways: Iterable[Device],
    window: Window,
    show: Optional[Show] = None,
) -> list[dict[str, Any]]:
    """One row per NAT gateway (keys :data:`GATEWAY_ROW_KEYS`): :func:`gateway_summary`
    with its name, region, VPC and the window; one GetMetricData batch per (profile,
    region), ``sessions`` keyed by profile (None: the default chain). Devices that are not
    gateways are skipped. ``show`` gets a line of progress (:class:`FetchProgress`) as the
    fetch goes.

    Example:
        >>> gateway_rows({None: session}, [Device("gateway", "nat-0abc", "us-east-1")],
        ...              Window.from_options("3h"))[0]["peak_active_connections"]
        1234.0
    """
    members = [d for d in gateways if d.kind == "gateway"]
    groups = by_profile_region(members)
    progress = FetchProgress.for_groups(
        (len(group) * len(NATGW_METRICS) for group in groups.values()), show
    )
    rows = []
    for (profile, region), group in groups.items():
        series = gateway_metrics(
            sessions[profile],
            region,
            [g.id for g in group],
            window.start,
            window.end,
            window.period,
            progress,
        )
        by_id = {g.id: g for g in group}
        for row in gateway_summary(series, window.start, window.end):
            gw = by_id[row["nat_gateway_id"]]
            place = {"name": gw.name, "region": region, "vpc_id": gw.vpc_id}
            when = {"start": window.start, "end": window.end, "period": window.period}
            rows.append({**place, **when, **row})
    return rows


# --- summaries --------------------------------------------------------------------------


def series_sum(series: Optional[MetricSeries]) -> Optional[float]:
    """Sum of the points; None when there is no data (not 0)."""
    return math.fsum(series.values) if series is not None and series.has_data else None


def series_max(series: Optional[MetricSeries]) -> Optional[float]:
    """Largest point; None when there is no data."""
    return max(series.values) if series is not None and series.has_data else None


def per_second(total: Optional[float], seconds: float) -> Optional[float]:
    """``total`` spread over ``seconds``; None for no data."""
    return None if total is None or seconds <= 0 else total / seconds


def drop_rate(
    dropped: Optional[float], in_from_source: Optional[float], in_from_dest: Optional[float]
) -> Optional[float]:
    """PacketsDropCount / (PacketsInFromSource + PacketsInFromDestination); None if unknown.

    Example:
        >>> drop_rate(5, 900, 100)
        0.005
    """
    if dropped is None or (in_from_source is None and in_from_dest is None):
        return None
    packets = (in_from_source or 0.0) + (in_from_dest or 0.0)
    return dropped / packets if packets else None


def by_resource(series: Iterable[MetricSeries]) -> dict[str, dict[str, MetricSeries]]:
    """``{resource_id: {metric: series}}``, resources in first-seen order."""
    out: dict[str, dict[str, MetricSeries]] = {}
    for s in series:
        out.setdefault(s.resource_id, {})[s.metric] = s
    return out


def by_profile_region(devices: Iterable[Any]) -> dict[tuple[Optional[str], str], list[Any]]:
    """Devices grouped by (profile, region): one CloudWatch client and batch per group.

    >>> from natfleet.models import Device
    >>> list(by_profile_region([Device("gateway", "nat-1", "us-east-1")]))
    [(None, 'us-east-1')]
    """
    groups: dict[tuple[Optional[str], str], list[Any]] = {}
    for device in devices:
        groups.setdefault((device.profile, device.region), []).append(device)
    return groups


def window_seconds(start: dt.datetime, end: dt.datetime, period: int) -> float:
    """The length of the window the series covers, once aligned to its period.

    >>> window_seconds(dt.datetime(2024, 5, 1, 10, 0, 30), dt.datetime(2024, 5, 1, 11), 60)
    3600.0
    """
    a_start, a_end = align(start, end, period) if period else (start, end)
    return (a_end - a_start).total_seconds()


def gateway_summary(
    series: Iterable[MetricSeries], start: dt.datetime, end: dt.datetime
) -> list[dict[str, Any]]:
    """One dict per gateway: peak connections, sums, per-second rates, drop rate, and the
    ActiveConnectionCount series (for a sparkline). Values are None where there was no data.

    Example:
        >>> gateway_summary(series, start, end)[0]["drop_rate"]
        0.0004
    """
    rows = []
    for gw, metrics in by_resource(series).items():
        total = {m: series_sum(metrics.get(m)) for m, _ in NATGW_METRICS}
        active = metrics.get("ActiveConnectionCount")
        seconds = window_seconds(start, end, active.period if active is not None else 0)
        rows.append(
            {
                "nat_gateway_id": gw,
                "seconds": seconds,
                "peak_active_connections": series_max(active),
                "connection_attempts": total["ConnectionAttemptCount"],
                "connections_established": total["ConnectionEstablishedCount"],
                "error_port_allocation": total["ErrorPortAllocation"],
                "idle_timeouts": total["IdleTimeoutCount"],
                "packets_dropped": total["PacketsDropCount"],
                "drop_rate": drop_rate(
                    total["PacketsDropCount"],
                    total["PacketsInFromSource"],
                    total["PacketsInFromDestination"],
                ),
                "bytes_to_destination": total["BytesOutToDestination"],
                "bytes_from_destination": total["BytesInFromDestination"],
                "packets_to_destination": total["PacketsOutToDestination"],
                "packets_from_destination": total["PacketsInFromDestination"],
                "bytes_per_second_out": per_second(total["BytesOutToDestination"], seconds),
                "bytes_per_second_in": per_second(total["BytesInFromDestination"], seconds),
                "bytes_processed": add_known(
                    total["BytesInFromSource"], total["BytesInFromDestination"]
                ),
                "active_connections": list(active.values) if active is not None else [],
            }
        )
    return rows


def instance_summary(
    series: Iterable[MetricSeries], start: dt.datetime, end: dt.datetime
) -> list[dict[str, Any]]:
    """One dict per NAT instance: bytes and packets each way (sums and per second), peak CPU
    and lowest CPU credit balance; None where there was no data.

    Example:
        >>> instance_summary(series, start, end)[0]["bytes_in"]
        6000.0
    """
    rows = []
    for iid, metrics in by_resource(series).items():
        total = {m: series_sum(metrics.get(m)) for m, _ in EC2_METRICS}
        seconds = window_seconds(start, end, next(iter(metrics.values())).period)
        credits = metrics.get("CPUCreditBalance")
        rows.append(
            {
                "instance_id": iid,
                "seconds": seconds,
                "bytes_in": total["NetworkIn"],
                "bytes_out": total["NetworkOut"],
                "packets_in": total["NetworkPacketsIn"],
                "packets_out": total["NetworkPacketsOut"],
                "bytes_per_second_in": per_second(total["NetworkIn"], seconds),
                "bytes_per_second_out": per_second(total["NetworkOut"], seconds),
                "peak_cpu_percent": series_max(metrics.get("CPUUtilization")),
                "min_cpu_credit_balance": (
                    min(credits.values) if credits is not None and credits.has_data else None
                ),
            }
        )
    return rows


def add_known(*values: Optional[float]) -> Optional[float]:
    """The sum of the values that are known; None when none is (no data is not 0).

    >>> add_known(1.0, None, 2.5), add_known(None, None)
    (3.5, None)
    """
    known = [v for v in values if v is not None]
    return math.fsum(known) if known else None


def _query(query_id: str, q: MetricQuery, period: int) -> dict[str, Any]:
    return {
        "Id": query_id,
        "Label": q.label,
        "MetricStat": {
            "Metric": {
                "Namespace": q.namespace,
                "MetricName": q.metric,
                "Dimensions": [{"Name": q.dimension, "Value": q.resource_id}],
            },
            "Period": period,
            "Stat": q.statistic,
        },
        "ReturnData": True,
    }
