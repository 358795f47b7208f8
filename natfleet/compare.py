"""NAT instances and NAT gateways side by side, in the same columns (logic only: no printing).

A row per device from three sources: CloudWatch (``AWS/NATGateway``, ``AWS/EC2`` and a
CloudWatch agent's connection count), the agent's live summary of each NAT instance
(conntrack now), and the price list (estimates). Missing data stays None ("no data"), never 0;
a column that means nothing for a kind is in :data:`NOT_APPLICABLE`.

Example:
    >>> window = Window.from_options("3h")
    >>> report = compare(sessions, devices, results, load_prices(), window)
    >>> row = report.rows[0]
    >>> row["kind"], row["conns_now"], row["port_errors"]
    ('instance', 4, 18)
    >>> report.to_json()["window"]["period"]
    60
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

import boto3

from natfleet import aws, cloudwatch
from natfleet.aggregate import INCIDENT
from natfleet.answer import Summary
from natfleet.cloudwatch import FetchProgress, MetricQuery, Show, Window
from natfleet.config import Prices
from natfleet.discovery import DEAD_STATES
from natfleet.errors import NatfleetError
from natfleet.models import Device, HostError, HostResult, MetricSeries
from natfleet.output import iso_time, safe

Outcome = Union[HostResult, HostError]
Metrics = Mapping[str, Mapping[str, MetricSeries]]  # resource id -> metric name -> series

HOURS_PER_MONTH = 730
MONTH_SECONDS = 30 * 86400  # a window's processed bytes are scaled to 30 days
GATEWAY_CONNECTIONS_PER_ADDRESS = 55_000  # per destination (IP, port, protocol) and address
# A NAT instance's connection count in CloudWatch, where a CloudWatch agent publishes it:
# fck-nat's documented agent config (netstat tcp_established, renamed; dimension InstanceId).
CWAGENT_NAMESPACE = "fck-nat"
CWAGENT_CONNECTIONS = "ConnectionEstablishedCount"
AGENT_REQUEST = {"mode": "summary", "top": 1}
# Every row has these keys (JSON and CSV), instances and gateways alike.
ROW_KEYS = (
    "kind",
    "id",
    "name",
    "label",
    "region",
    "type",
    "conns_now",
    "conns_peak",
    "bytes_out",
    "bytes_in",
    "packets_out",
    "packets_in",
    "drops",
    "port_errors",
    "counters",
    "ena_exceeded",
    "table_fill_pct",
    "port_pressure_pct",
    "port_pressure_bound",
    "gb_month",
    "monthly_cost",
    "currency",
    "cost_note",
    "error",
    "conntrack",
    "ena",
)  # port_pressure[0] is all compare needs
NOT_APPLICABLE = {
    "gateway": frozenset({"table_fill_pct", "ena_exceeded"}),
    "instance": frozenset({"gb_month"}),
}
# The series --plot draws, per kind: (panel, metric).
PLOT_SERIES = {
    "gateway": (
        ("connections", "ActiveConnectionCount"),
        ("bytes_out", "BytesOutToDestination"),
        ("bytes_in", "BytesInFromDestination"),
        ("drops", "PacketsDropCount"),
        ("port_errors", "ErrorPortAllocation"),
    ),
    "instance": (
        ("connections", CWAGENT_CONNECTIONS),
        ("bytes_out", "NetworkOut"),
        ("bytes_in", "NetworkIn"),
    ),
}
# (panel, title, y axis label, values per second): one subplot each, in this order.
PLOT_PANELS = (
    (
        "connections",
        "connections: gateway ActiveConnectionCount (max per period), instance fck-nat "
        "ConnectionEstablishedCount;\nlarge marker at the end: the agent's TCP SNAT "
        "ESTABLISHED now",
        "connections",
        False,
    ),
    (
        "bytes_out",
        "bytes out: gateway BytesOutToDestination, instance NetworkOut (whole ENI)",
        "bytes/s",
        True,
    ),
    (
        "bytes_in",
        "bytes in: gateway BytesInFromDestination, instance NetworkIn (whole ENI)",
        "bytes/s",
        True,
    ),
    ("drops", "gateway PacketsDropCount (sum per period)", "packets per period", False),
    ("port_errors", "gateway ErrorPortAllocation (sum per period)", "errors per period", False),
)
PLOT_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")
PLOT_LINESTYLES = ("-", "--", "-.", ":")
PLOT_LOG_SPAN = 100  # a panel whose values span more than this factor gets a log scale
PLOT_HINT = "--plot needs matplotlib: pip install 'natfleet[plot]'"


# --- CloudWatch ---------------------------------------------------------------------------


def metric_queries(devices: Iterable[Device]) -> list[MetricQuery]:
    """Every gateway metric, the EC2 metrics and the CloudWatch agent's connection count.

    Example:
        >>> [q.metric for q in metric_queries([Device("instance", "i-1", "us-east-1")])][-1]
        'ConnectionEstablishedCount'
    """
    devices = list(devices)
    gateways = [d.id for d in devices if d.kind == "gateway"]
    types = {d.id: d.instance_type for d in devices if d.kind == "instance"}
    agent = [
        MetricQuery(CWAGENT_NAMESPACE, CWAGENT_CONNECTIONS, "Maximum", "InstanceId", iid)
        for iid in types
    ]
    return cloudwatch.gateway_queries(gateways) + cloudwatch.instance_queries(types, types) + agent


def fetch_metrics(
    sessions: Mapping[Optional[str], boto3.Session],
    devices: Iterable[Device],
    window: Window,
    show: Optional[Show] = None,
) -> dict[str, dict[str, MetricSeries]]:
    """``{device id: {metric: series}}`` for every device, one batch per (profile, region);
    ``show`` gets a line of progress as the fetch goes."""
    measured = [d for d in devices if d.kind in ("instance", "gateway")]
    groups = {
        key: metric_queries(members)
        for key, members in cloudwatch.by_profile_region(measured).items()
    }
    progress = FetchProgress.for_groups((len(q) for q in groups.values()), show)
    out: dict[str, dict[str, MetricSeries]] = {}
    for (profile, region), queries in groups.items():
        cw = aws.client(sessions[profile], "cloudwatch", region)
        series = cloudwatch.fetch(cw, queries, window.start, window.end, window.period, progress)
        out.update(cloudwatch.by_resource(series))
    return out


# --- the comparison ----------------------------------------------------------------------


@dataclass
class Comparison:
    """What ``natfleet compare`` shows: a row per device (keys :data:`ROW_KEYS`), the
    window, the prices used, and the CloudWatch series (for :func:`write_plot`)."""

    window: Window
    prices: Prices
    rows: list[dict[str, Any]]
    metrics: dict[str, dict[str, MetricSeries]] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """``{"window", "prices", "rows"}`` (docs/json.md)."""
        return {
            "window": self.window.to_json(),
            "prices": prices_json(self.prices),
            "rows": self.rows,
        }


def compare(
    sessions: Mapping[Optional[str], boto3.Session],
    devices: Sequence[Device],
    results: Sequence[Outcome],
    prices: Prices,
    window: Window,
    show: Optional[Show] = None,
) -> Comparison:
    """NAT instances and gateways side by side: the CloudWatch series of ``devices`` over
    ``window`` (``sessions`` keyed by profile, None the default chain), the agents'
    summaries in ``results`` (read with :data:`AGENT_REQUEST`; ``[]`` when nothing was
    read), and ``prices``; ``show`` gets a line of progress during the CloudWatch fetch.

    Example:
        >>> compare({None: session}, devices, [], Prices(), Window.from_options("1d")).rows[0]["id"]
        'nat-0abc'
    """
    metrics = fetch_metrics(sessions, devices, window, show)
    rows = compare_rows(devices, metrics, results, prices, window)
    return Comparison(window, prices, rows, metrics)


# --- rows ---------------------------------------------------------------------------------


def compare_rows(
    devices: Sequence[Device],
    metrics: Metrics,
    results: Sequence[Outcome],
    prices: Prices,
    window: Window,
) -> list[dict[str, Any]]:
    """Instances (AWS discovery order), then boxes read but not found in AWS, then gateways.

    Example:
        >>> [r["kind"] for r in compare_rows(devices, metrics, results, Prices(), window)]
        ['instance', 'instance', 'gateway']
    """
    instances = [d for d in devices if d.kind == "instance" and d.state not in DEAD_STATES]
    matched, extra = match_results(instances, results)
    rows = [
        instance_row(d, metrics.get(d.id, {}), matched.get(d.id), prices, window) for d in instances
    ]
    rows += [host_row(result, prices) for result in extra]
    rows += [
        gateway_row(d, metrics.get(d.id, {}), prices, window)
        for d in devices
        if d.kind == "gateway"
    ]
    return rows


def match_results(
    instances: Sequence[Device], results: Sequence[Outcome]
) -> tuple[dict[str, Outcome], list[Outcome]]:
    """Each result to its instance, by instance id, else by the address SSH used; the
    results of boxes not found in AWS (``--host``, ``--local``) come back apart.

    Example:
        >>> matched, extra = match_results([Device("instance", "i-1", "r", private_ip="10.0.0.5")],
        ...                                [HostResult(Target("nat-a", host="10.0.0.5"), {})])
        >>> list(matched), extra
        (['i-1'], [])
    """
    by_key: dict[str, str] = {}
    for d in instances:
        for key in (d.public_ip, d.private_ip, d.id):
            if key:
                by_key[key] = d.id
    matched: dict[str, Outcome] = {}
    extra: list[Outcome] = []
    for result in results:
        target = result.target
        device_id = by_key.get(target.instance_id or "") or by_key.get(target.host)
        if device_id and device_id not in matched:
            matched[device_id] = result
        else:
            extra.append(result)
    return matched, extra


def instance_row(
    device: Device,
    series: Mapping[str, MetricSeries],
    result: Optional[Outcome],
    prices: Prices,
    window: Window,
) -> dict[str, Any]:
    """One NAT instance: CloudWatch over the window, conntrack now, hourly cost by type.

    Example:
        >>> instance_row(Device("instance", "i-1", "us-east-1", instance_type="t4g.nano"),
        ...              {}, None, Prices(), window)["monthly_cost"]
        3.066
    """
    (cw,) = cloudwatch.instance_summary(_with_data(series, device.id), window.start, window.end)
    row = _base(device.kind, device.id, device.name, device.region, device.instance_type)
    row.update(
        conns_peak=cloudwatch.series_max(series.get(CWAGENT_CONNECTIONS)),
        bytes_out=cw["bytes_out"],
        bytes_in=cw["bytes_in"],
        packets_out=cw["packets_out"],
        packets_in=cw["packets_in"],
        **agent_columns(result),
        **instance_cost(prices, device.instance_type),
    )
    if result is None:
        row["error"] = "not read" + (f" (instance {device.state})" if device.state else "")
    return row


def host_row(result: Outcome, prices: Prices) -> dict[str, Any]:
    """A box read over SSH (or locally) that AWS discovery did not find: no CloudWatch."""
    target = result.target
    key = target.instance_id or target.host or target.path or target.name
    row = _base("instance", key, target.name, target.region or "", None)
    row.update(agent_columns(result), **instance_cost(prices, None))
    return row


def gateway_row(
    device: Device, series: Mapping[str, MetricSeries], prices: Prices, window: Window
) -> dict[str, Any]:
    """One NAT gateway: CloudWatch over the window, the 55,000 bound, hours + GB processed.

    Example:
        >>> gateway_row(Device("gateway", "nat-1", "us-east-1"), {}, Prices(), window)["cost_note"]
        'no data'
    """
    (cw,) = cloudwatch.gateway_summary(_with_data(series, device.id), window.start, window.end)
    active = series.get("ActiveConnectionCount")
    peak = cw["peak_active_connections"]
    processed = cw["bytes_processed"]
    row = _base(device.kind, device.id, device.name, device.region, "nat-gateway")
    row.update(
        conns_now=active.values[-1] if active is not None and active.has_data else None,
        conns_peak=peak,
        bytes_out=cw["bytes_to_destination"],
        bytes_in=cw["bytes_from_destination"],
        packets_out=cw["packets_to_destination"],
        packets_in=cw["packets_from_destination"],
        drops=cw["packets_dropped"],
        port_errors=cw["error_port_allocation"],
        counters="window",
        port_pressure_pct=gateway_port_bound(peak, gateway_address_count(device)),
        port_pressure_bound=True,
        **gateway_cost(prices, processed, window.seconds),
    )
    return row


def agent_columns(result: Optional[Outcome]) -> dict[str, Any]:
    """The live columns of a NAT instance from its checked agent summary (None: no answer).

    ``drops`` is conntrack drop + early_drop and ``port_errors`` insert_failed, both since
    boot; ``ena_exceeded`` sums the ENA ``*_allowance_exceeded`` counters.

    Example:
        >>> agent_columns(HostResult(target, check_answer("a", AGENT_REQUEST, handle(...))))
        {'counters': 'since boot', 'conns_now': 4, 'drops': 5.0, 'port_errors': 18, ...}
    """
    scope = {"counters": "since boot"}
    if isinstance(result, HostError):
        return {**scope, "error": f"{result.kind}: {result.message}"}
    if result is None:
        return scope
    facts, summary = result.answer.facts, result.answer.summary
    stats = facts.stats or {}
    return {
        **scope,
        "conns_now": summary.tcp_snat_established if summary is not None else None,
        "drops": cloudwatch.add_known(stats.get("drop"), stats.get("early_drop")),
        "port_errors": stats.get("insert_failed"),
        "ena_exceeded": ena_exceeded(facts.ena),
        "table_fill_pct": summary.fill_pct if summary is not None else None,
        "port_pressure_pct": instance_port_pressure(summary),
        "conntrack": {k: stats.get(k) for k in INCIDENT} if stats else None,
        "ena": {iface: dict(counters) for iface, counters in facts.ena.items()} or None,
    }


def ena_exceeded(ena: Optional[Mapping[str, Mapping[str, int]]]) -> Optional[int]:
    """Sum of every ``*_allowance_exceeded`` counter over the ENA interfaces; None without.

    Example:
        >>> ena_exceeded({"eth0": {"pps_allowance_exceeded": 2,
        ...                        "conntrack_allowance_available": 900}})
        2
    """
    values = [
        v
        for counters in (ena or {}).values()
        for k, v in counters.items()
        if k.endswith("_exceeded")
    ]
    return sum(values) if values else None


def instance_port_pressure(summary: Optional[Summary]) -> Optional[float]:
    """The worst (NAT address, destination) share of the port range, in %; 0.0 when the
    range is known and nothing is translated, None when unknown (or no summary).

    Example:
        >>> instance_port_pressure(summary)   # worst: 2 ports of 28,232
        0.01
    """
    if summary is None:
        return None
    if summary.port_pressure:
        return summary.port_pressure[0].pct
    return 0.0 if summary.port_range_size else None


def gateway_address_count(device: Device) -> int:
    """IPv4 addresses the gateway translates to: its Elastic IPs (each entry of a public
    gateway also lists its private IP), else its private IPs; at least 1.

    Example:
        >>> gateway_address_count(Device("gateway", "nat-1", "r", public_ip="198.51.100.200",
        ...                              addresses=["198.51.100.200", "10.0.0.9"]))
        1
    """
    count = len(device.addresses)
    return max(1, count // 2 if device.public_ip else count)


def gateway_port_bound(peak: Optional[float], addresses: int) -> Optional[float]:
    """Peak ActiveConnectionCount / (55,000 x addresses) in %: an UPPER bound on the use of
    the per-destination limit (CloudWatch has no per-destination count).

    Example:
        >>> gateway_port_bound(11_000, 2)
        10.0
    """
    if peak is None:
        return None
    return 100.0 * peak / (GATEWAY_CONNECTIONS_PER_ADDRESS * addresses)


def instance_cost(prices: Prices, instance_type: Optional[str]) -> dict[str, Any]:
    """``{"monthly_cost", "cost_note", ...}``: hourly price x 730; 'no price' for a type the
    price list does not have (never 0).

    Example:
        >>> instance_cost(Prices(), "t4g.nano")["monthly_cost"]
        3.066
    """
    cost = prices.instance_cost(instance_type, HOURS_PER_MONTH)
    return {
        "gb_month": None,
        "monthly_cost": cost,
        "currency": prices.currency,
        "cost_note": "" if cost is not None else "no price",
    }


def gateway_cost(prices: Prices, processed: Optional[float], seconds: float) -> dict[str, Any]:
    """Gateway-hours x 730 plus GB processed, the window's bytes scaled to 30 days;
    'no data' (not the hourly part alone) when CloudWatch has no bytes.

    Example:
        >>> gateway_cost(Prices(), 1.2e9, 3600)["monthly_cost"]   # 864 GB a month
        71.73
    """
    if processed is None or seconds <= 0:
        return {
            "gb_month": None,
            "monthly_cost": None,
            "currency": prices.currency,
            "cost_note": "no data",
        }
    month_bytes = processed * MONTH_SECONDS / seconds
    return {
        "gb_month": month_bytes / 1e9,
        "monthly_cost": prices.gateway_cost(HOURS_PER_MONTH, month_bytes),
        "currency": prices.currency,
        "cost_note": "",
    }


def prices_json(prices: Prices) -> dict[str, Any]:
    """Where the prices came from, for the output (``file`` None: built-in defaults)."""
    return {
        "file": str(prices.path) if prices.path else None,
        "region": prices.region,
        "currency": prices.currency,
        "estimate": prices.estimate,
        "hours_per_month": HOURS_PER_MONTH,
        "nat_gateway_hourly": prices.nat_gateway_hourly,
        "nat_gateway_per_gb": prices.nat_gateway_per_gb,
    }


def _base(
    kind: str, device_id: str, name: str, region: str, device_type: Optional[str]
) -> dict[str, Any]:
    """A row with every key of :data:`ROW_KEYS`, unknown values None."""
    row: dict[str, Any] = dict.fromkeys(ROW_KEYS)
    label = f"{name} ({device_id})" if name and name != device_id else device_id
    row.update(kind=kind, id=device_id, name=name, label=label, region=region, type=device_type)
    row.update(port_pressure_bound=False, error="")
    return row


def _top(ax: Any) -> float:
    """The largest value drawn on ``ax`` (0 when nothing is)."""
    return max((float(v) for line in ax.get_lines() for v in line.get_ydata()), default=0.0)


def _wide_span(ax: Any) -> bool:
    """Whether the positive values drawn on ``ax`` span more than :data:`PLOT_LOG_SPAN`."""
    values = [v for line in ax.get_lines() for v in line.get_ydata() if v > 0]
    return bool(values) and max(values) / min(values) > PLOT_LOG_SPAN


def _with_data(series: Mapping[str, MetricSeries], resource_id: str) -> list[MetricSeries]:
    """The device's series, or one empty series so that the summaries still give a row."""
    return list(series.values()) or [MetricSeries(resource_id, "", "")]


# --- plot ---------------------------------------------------------------------------------


def _plot_label(text: str) -> str:
    """A legend label: escaped, and ``$`` kept from starting matplotlib's mathtext."""
    return safe(text).replace("$", r"\$")


def plot_style(index: int, color: str) -> dict[str, Any]:
    """The line style of the ``index``-th device: its color, a marker and a dash pattern
    of its own, so identical series still tell apart.

    Example:
        >>> plot_style(1, "C1")["marker"], plot_style(1, "C1")["linestyle"]
        ('s', '--')
    """
    return {
        "color": color,
        "marker": PLOT_MARKERS[index % len(PLOT_MARKERS)],
        "linestyle": PLOT_LINESTYLES[index % len(PLOT_LINESTYLES)],
        "markevery": (0.025 * (index % 4), 0.1),  # markers of equal series side by side
        "markersize": 5,
    }


def _short_label(row: Mapping[str, Any]) -> str:
    return str(row.get("name") or row["id"])


def pyplot() -> Any:
    """matplotlib's pyplot on the file-only Agg backend; NatfleetError when not installed."""
    try:
        import matplotlib
    except ImportError:
        raise NatfleetError(PLOT_HINT) from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def write_plot(path: str, rows: Sequence[dict[str, Any]], metrics: Metrics, window: Window) -> None:
    """Draw :func:`plot_figure` into ``path`` (PNG).

    Example:
        >>> write_plot("compare.png", rows, metrics, window)
    """
    plt = pyplot()
    fig = plot_figure(rows, metrics, window)
    try:
        fig.savefig(Path(path))
    except OSError as exc:
        raise NatfleetError(f"cannot write the plot {path}: {exc.strerror or exc}") from exc
    finally:
        plt.close(fig)


def plot_figure(rows: Sequence[dict[str, Any]], metrics: Metrics, window: Window) -> Any:
    """The compared series of every row over the window, as a matplotlib figure: one
    subplot per panel of :data:`PLOT_PANELS` (drops and port errors apart), times in UTC,
    a color, marker and dash pattern per device (the same in every panel), bytes as bytes
    per second, a log scale where gateways and instances differ by orders of magnitude.
    An instance's connection count over time is the CloudWatch agent's series (fck-nat);
    the agent's count now is a large hollow marker at the window's end.

    Example:
        >>> [ax.get_ylabel() for ax in plot_figure(rows, metrics, window).axes][-1]
        'errors per period'
    """
    plt = pyplot()
    from matplotlib import dates, ticker

    fig, axes = plt.subplots(len(PLOT_PANELS), 1, sharex=True, figsize=(14, 15))
    panel = {name: ax for (name, *_), ax in zip(PLOT_PANELS, axes)}
    per_second = {name: rate for name, _, _, rate in PLOT_PANELS}
    for index, row in enumerate(rows):
        style = plot_style(index, f"C{index % 10}")
        series = metrics.get(row["id"], {})
        for name, metric in PLOT_SERIES[row["kind"]]:
            s = series.get(metric)
            if s is None or not s.has_data:
                continue
            scale = 1.0 / (s.period or window.period) if per_second[name] else 1.0
            values = [v * scale for v in s.values]
            label = _plot_label(f"{_short_label(row)} {metric}")
            panel[name].plot(s.timestamps, values, label=label, drawstyle="steps-post", **style)
        if row["kind"] == "instance" and row.get("conns_now") is not None:
            label = _plot_label(f"{_short_label(row)} TCP SNAT ESTABLISHED now (agent)")
            panel["connections"].plot(
                [window.end],
                [row["conns_now"]],
                linestyle="none",
                marker=style["marker"],
                markersize=11,
                markerfacecolor="none",
                markeredgewidth=2,
                color=style["color"],
                label=label,
                clip_on=False,
            )
    for (_, title, unit, rate), ax in zip(PLOT_PANELS, axes):
        ax.set_title(title, fontsize=9, loc="left")
        ax.grid(True, alpha=0.3)
        log = _wide_span(ax)
        if log:
            ax.set_yscale("symlog", linthresh=1)
        top = _top(ax)
        ax.set_ylim(0, top * 3 if log else top * 1.1 or 1)
        ax.set_ylabel(f"{unit} (log)" if log else unit)
        if rate:
            ax.yaxis.set_major_formatter(ticker.EngFormatter(unit="B/s", sep=""))
        elif not log:
            ax.yaxis.set_major_locator(ticker.MaxNLocator(integer=True))
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
        else:
            ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes)
    utc = dt.timezone.utc
    axes[-1].set_xlim(window.start, window.end)
    axes[-1].xaxis.set_major_formatter(dates.DateFormatter("%Y-%m-%d %H:%M", tz=utc))
    axes[-1].set_xlabel(
        f"time (UTC), {iso_time(window.start)} to {iso_time(window.end)}, "
        f"{window.period} s per point"
    )
    fig.autofmt_xdate()
    fig.tight_layout()
    return fig
